"""pulse_ext.allocator: freed memory stays in the process while a CPU search runs, and only then.

Each scenario runs in a fresh interpreter (the allocator's state is process-wide) and reads the resident
memory (/proc/self/statm) around a 256 MiB buffer: glibc serves it with its own mapping by default, so
freeing it gives the memory back at once; kept, the freed memory stays resident until the last
``freed_memory_kept`` block ends (malloc_trim).
"""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/statm"),
                                reason="the allocator settings are glibc's, read through Linux's /proc")

PRELUDE = textwrap.dedent("""
    import os
    import torch
    from pulse_ext.allocator import freed_memory_kept, tune_glibc_malloc

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def freed_buffer_stays():
        # allocate and touch 256 MiB, free it: is it still resident? (Kept from an earlier call, it is
        # reused and resident all along.)
        buffer = torch.ones(64 * 2 ** 20)
        peak = rss_mib()
        del buffer
        return peak - rss_mib() < 56

    def report(*flags):
        print(" ".join("kept" if f else "returned" for f in flags))
""")


def scenario(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, env=environment)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_freed_memory_stays_only_inside_the_block():
    out = scenario("""
        outside_before = freed_buffer_stays()
        with freed_memory_kept():
            inside = freed_buffer_stays()
            held = rss_mib()
        after_exit = rss_mib()
        outside_after = freed_buffer_stays()
        report(outside_before, inside, held - after_exit > 200, outside_after)
    """)
    # glibc defaults before; kept inside; given back on leaving; glibc's limits restored afterwards
    assert out == "returned kept kept returned"


def test_a_block_for_another_device_changes_nothing():
    out = scenario("""
        with freed_memory_kept("cuda:0"):
            inside = freed_buffer_stays()
        report(inside)
    """)
    assert out == "returned"


def test_nested_blocks_give_memory_back_only_when_the_last_ends():
    out = scenario("""
        with freed_memory_kept():
            with freed_memory_kept():
                freed_buffer_stays()
            inner_left = freed_buffer_stays()
            held = rss_mib()
        report(inner_left, held - rss_mib() > 200)
    """)
    assert out == "kept kept"


def test_process_wide_tuning_is_never_undone_by_a_block():
    out = scenario("""
        assert tune_glibc_malloc()
        with freed_memory_kept():
            freed_buffer_stays()
        report(freed_buffer_stays())
    """)
    assert out == "kept"


def test_the_users_own_malloc_settings_win():
    # glibc's default trim threshold, set by the user: freed memory goes back even inside the block
    out = scenario("""
        with freed_memory_kept():
            inside = freed_buffer_stays()
        report(inside, tune_glibc_malloc())
    """, MALLOC_TRIM_THRESHOLD_="131072")
    assert out == "returned returned"


def test_a_cpu_search_keeps_memory_while_it_runs_and_restores_glibc_after():
    out = scenario("""
        from pulse_ext.pulse import PULSE
        from pulse_ext.stylegan2 import Generator

        torch.manual_seed(0)
        G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                      mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=16))
        seen = []
        searcher = PULSE(G, steps=3, eps=0.0, stats_samples=256)
        searcher.search(torch.rand(1, 3, 4, 4), restarts=2, callback=lambda p: seen.append(freed_buffer_stays()))
        report(all(seen) and len(seen) >= 3, freed_buffer_stays())
    """)
    assert out == "kept returned"

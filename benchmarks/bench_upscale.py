"""What a caller of ``pulse_ext.upscale()`` waits for: one face, R restarts, as the library runs it now
and with its CPU memory and batching policies undone (the library before 2026-12-07), side by side.

    python benchmarks/bench_upscale.py [--size 1024] [--restarts 8] [--steps 5] [--threads 2]

Each variant runs in a fresh process (allocator settings are per process) on a random-weight
generator of bench_e2e's shapes (config-f widths at 256 / 1024 px), the README's example 16x16 face,
eps 0 (every restart runs every step), the same seed:
- ``now``: ``upscale()`` as shipped: freed memory kept while the search runs (pulse_ext.allocator) and
  restarts searched in batches of at most ``cpu_efficient_rows`` (pulse_ext.pulse.batching);
- ``before``: glibc's default allocator limits (as a user who set MALLOC_TRIM_THRESHOLD_ to glibc's
  default) and no speed cap on the batch size (the memory cap alone, as before).
Reported: search seconds (upscale()'s own timing, latent-statistics fit excluded), seconds per restart-step,
peak RSS, the best L2 (the same search either way: a restart depends only on its seed). Writes
benchmarks/results/upscale-<size>-cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from common import run_worker, write_results  # noqa: E402

EXAMPLE = os.path.join(HERE, "..", "examples", "astronaut16.png")
VARIANTS = ("before", "now")


def run_variant(variant: str, size: int, restarts: int, steps: int, threads: int) -> dict:
    """In this process: build the generator, then time one upscale() (after a 1-step warm-up)."""
    import warnings

    from bench_e2e import build_generator
    from pulse_ext.allocator import GLIBC_DEFAULT_TRIM_THRESHOLD
    from pulse_ext.pulse import batching
    from pulse_ext.upscale import upscale

    torch.set_num_threads(threads)
    if variant == "before":
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(GLIBC_DEFAULT_TRIM_THRESHOLD)  # freed_memory_kept: a no-op
        batching.CPU_EFFICIENT_BATCH_BYTES = 2 ** 62  # the memory cap alone decides the batches
    G = build_generator(size, torch.device("cpu"))
    options = dict(generator=G, restarts=restarts, steps=steps, eps=0.0, seed=1, stats_samples=10_000,
                   return_result=True, realism_check="off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upscale(EXAMPLE, **dict(options, restarts=1, steps=1))  # warm-up: filter caches, statistics fit
        result = upscale(EXAMPLE, **options)
    timings = result.search.timings
    search_s = timings["search_s"]
    return dict(variant=variant, size=size, R=restarts, steps=steps, threads=threads, search_s=search_s,
                s_per_restart_step=search_s / (restarts * steps), top_level_parts=timings.get("splits", 1),
                peak_rss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                best_l2=float(result.l2[0]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_variant(args.worker, args.size, args.restarts, args.steps, args.threads)))
        return None
    rows = []
    for variant in VARIANTS:
        rows.append(run_worker(__file__, ["--worker", variant, "--size", str(args.size), "--restarts",
                                          str(args.restarts), "--steps", str(args.steps), "--threads",
                                          str(args.threads)], variant))
        print(rows[-1], flush=True)
    before = rows[0]["search_s"]
    for row in rows:
        row["speedup_vs_before"] = before / row["search_s"]
    notes = (f"`python benchmarks/bench_upscale.py --size {args.size} --restarts {args.restarts} --steps {args.steps} "
             f"--threads {args.threads}`: upscale() of examples/astronaut16.png on a random-weight {args.size}-px "
             f"generator, eps 0, each variant in a fresh process after a 1-step warm-up. before = glibc's default "
             f"allocator limits and batches capped by memory alone; now = as shipped (memory kept while searching, "
             f"batches of at most cpu_efficient_rows restarts).")
    path = write_results(f"upscale-{args.size}", torch.device("cpu"), rows,
                         ["variant", "size", "R", "steps", "top_level_parts", "search_s", "s_per_restart_step",
                          "speedup_vs_before", "peak_rss_MB", "best_l2", "threads"], notes=notes)
    print("wrote", path)
    return rows


if __name__ == "__main__":
    main()

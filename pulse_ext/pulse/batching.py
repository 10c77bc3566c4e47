"""Searching more restarts than fit in memory: a cap from the memory a search row needs, and splitting.

A search row is one restart of one input. ``search_split`` runs a search in parts of at most
``max_rows`` rows (and on an out-of-memory error halves the part and retries), then merges the parts:
valid because a restart's trajectory depends only on its seed, not on what else is in the batch.

The cap: on CUDA, ``probe_row_bytes`` measures the peak memory of 1- and 3-row searches; on the CPU,
where a process that asks for too much is killed by the kernel's out-of-memory killer rather than
given an error it could catch, ``cpu_row_bytes`` estimates it from the generator's layer shapes, and
``rows_that_fit`` divides the memory available now (CUDA: free device memory; CPU: MemAvailable).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch


def _oom_types():
    types = [torch.cuda.OutOfMemoryError]
    if hasattr(torch, "OutOfMemoryError"):
        types.append(torch.OutOfMemoryError)
    return tuple(types)


OOM_ERRORS = _oom_types()


def merge_results(parts, dim):
    """Concatenate ``SearchResult``s split along inputs (dim 0) or restarts (dim 1)."""
    from pulse_ext.pulse.search import SearchResult

    cat = {key: torch.cat([getattr(p, key) for p in parts], dim)
           for key in ("images", "latents", "l2", "l1", "loss", "converged", "converged_step")}
    if dim == 0:
        seeds = [row for p in parts for row in p.seeds]
    else:
        seeds = [sum((p.seeds[b] for p in parts), []) for b in range(len(parts[0].seeds))]
    seconds = sum(p.seconds for p in parts)
    steps_run = max(p.steps_run for p in parts)
    return SearchResult(**cat, seeds=seeds, steps_run=steps_run, seconds=seconds,
                        stats_seconds=sum(p.stats_seconds for p in parts),
                        timings={"search_s": seconds, "seconds_per_step": seconds / max(steps_run, 1),
                                 "splits": len(parts)})


class _Split(Exception):
    pass


def search_split(search: Callable, targets: torch.Tensor, seeds: List[List[int]], max_rows: Optional[int] = None,
                 on_split: Optional[Callable[[str], None]] = None, report_cap_splits: bool = True,
                 quota=None, max_steps: Optional[int] = None):
    """``search(targets [B, C, h, w], seeds [B][R])`` with batches of at most ``max_rows`` = B * R rows, and
    on out-of-memory halved (restarts first, then inputs) and retried; the parts are merged back.
    ``on_split`` hears every split (only the out-of-memory ones when not ``report_cap_splits``).

    Valid because a restart's trajectory depends only on its seed (not on what else is in the batch).
    quota: the searcher's ``ConvergedQuota`` (``enough_converged``), or None. With one, ``search`` is called
    as ``search(targets, seeds, max_steps)``: a later part along the restarts runs no longer than the
    earlier parts' stop points (the rule has stopped those inputs by then), and the merged result gets the
    rule (``ConvergedQuota.apply``), so the ranked candidates are those of an unsplit search.
    """
    num_inputs, num_restarts = len(seeds), len(seeds[0])

    def again(t, s, cap=max_steps):
        return search_split(search, t, s, max_rows, on_split=on_split, report_cap_splits=report_cap_splits,
                            quota=quota, max_steps=cap)

    try:
        if max_rows is not None and num_inputs * num_restarts > max_rows and num_inputs * num_restarts > 1:
            raise _Split(f"{num_inputs}x{num_restarts} rows > cap {max_rows}")
        return search(targets, seeds) if quota is None else search(targets, seeds, max_steps)
    except (_Split,) + OOM_ERRORS as exc:
        if num_inputs * num_restarts == 1:
            raise
        if not isinstance(exc, _Split):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            reason = "out of memory"
        else:
            reason = str(exc)
        report = on_split if on_split is not None and (report_cap_splits or not isinstance(exc, _Split)) else None
        if num_restarts > 1:
            half = num_restarts // 2
            parts = [[row[:half] for row in seeds], [row[half:] for row in seeds]]
            if report:
                report(f"{reason}: splitting {num_restarts} restarts into {half} + {num_restarts - half}")
            if quota is None:
                return merge_results([again(targets, part) for part in parts], 1)
            first = again(targets, parts[0])
            points = quota.stop_points(first.converged_step)
            cap = max_steps
            if all(p is not None for p in points):
                cap = max(points) if cap is None else min(cap, max(points))
            return quota.apply(merge_results([first, again(targets, parts[1], cap)], 1))
        half = num_inputs // 2
        if report:
            report(f"{reason}: splitting {num_inputs} inputs into {half} + {num_inputs - half}")
        return merge_results([again(targets[:half], seeds[:half]), again(targets[half:], seeds[half:])], 0)


def probe_row_bytes(searcher, shape, device) -> Optional[int]:
    """CUDA bytes one search row (one restart of one input) needs: the peak memory of 2-step searches with 1
    and 3 rows, differenced (so the generator's weights and fixed buffers cancel). None off CUDA."""
    from pulse_ext.pulse.search import PULSE

    device = torch.device(device)
    if device.type != "cuda":
        return None
    probe = PULSE(searcher.generator, loss=searcher.loss, eps=0.0, steps=2, noise_type=searcher.noise_type,
                  downscale=searcher.downscale, tile_latent=searcher.tile_latent, latent_stats=searcher.latent_stats(),
                  drop_converged=False)
    target = torch.full((1, *shape), 0.5, device=device)
    peaks = []
    for rows in (1, 3):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        probe.search(target, seeds=[list(range(rows))])
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    return max(int((peaks[1] - peaks[0]) / 2), 1)


def activation_bytes(generator) -> int:
    """Bytes of one sample's synthesis-layer outputs (out_channels x resolution^2 per modulated conv
    layer, in the generator's dtype): what a search row's memory scales with."""
    from pulse_ext.stylegan2.networks import SynthesisLayer

    elements = sum(m.out_channels * m.resolution ** 2 for m in generator.synthesis.modules()
                   if isinstance(m, SynthesisLayer))
    return elements * next(generator.parameters()).element_size()


# CPU bytes per search row over activation_bytes, measured with bench_e2e (peak RSS growth per restart,
# fused path, glibc malloc): 4.0x at 64 px R = 32, 3.4x at R = 64, 3.0x for config-f 1024 px R = 1; the
# plain-PyTorch reference path: 9.5x at 64 px R = 32, 5.6x at 1024 px. With margin:
CPU_ROW_FACTOR = {"fused": 5.0, "reference": 10.0}


def cpu_row_bytes(generator, impl: str = "fused") -> int:
    """Estimated CPU bytes one search row needs (see CPU_ROW_FACTOR); impl: "fused" or "reference"."""
    return int(CPU_ROW_FACTOR["reference" if impl == "reference" else "fused"] * activation_bytes(generator))


# CPU: a batch of restarts larger than this many activation bytes runs slower per restart, so bigger
# batches are searched in parts (the same results). Measured with bench_e2e (fused path, 2 threads, glibc
# memory kept, 2026-12-07, AMD EPYC VM; benchmarks/results/e2e-restarts-cpu.md): config-f 1024 px (501 MiB
# per row) 1.09 / 1.05 / 0.61 restart-steps/s at R = 1 / 2 / 4 (roofline-1024-cpu.md: 1.00 / 0.90 / 0.83 s
# per restart-step at R = 1 / 4 / 8; the Intel Xeon VM, 2026-12-05: 0.80 at R = 1, 0.66 at R = 8); 256 px
# (117 MiB) flat from R = 1 to 8 (2.6-2.8); the 64-px default (1.8 MiB) gains up to R = 32 and beyond.
CPU_EFFICIENT_BATCH_BYTES = 1 << 30


def cpu_efficient_rows(generator) -> int:
    """Most rows a CPU search step runs at full speed per restart (CPU_EFFICIENT_BATCH_BYTES), at least 1."""
    return max(1, CPU_EFFICIENT_BATCH_BYTES // activation_bytes(generator))


def speed_capped_rows(max_rows: Optional[int], generator, device) -> Optional[int]:
    """``max_rows`` (a memory cap, or None) lowered on the CPU to ``cpu_efficient_rows``; as is elsewhere."""
    if torch.device(device).type != "cpu":
        return max_rows
    efficient = cpu_efficient_rows(generator)
    return efficient if max_rows is None else min(max_rows, efficient)


def available_cpu_bytes() -> Optional[int]:
    """Memory the kernel could give this process now without swapping (Linux MemAvailable); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rows_that_fit(row_bytes: Optional[int], device, fraction: float = 0.8) -> Optional[int]:
    """How many search rows fit in ``fraction`` of the memory available now (CUDA: free device memory;
    CPU: MemAvailable). None: no cap (no estimate, or the available memory is unknown)."""
    if row_bytes is None:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    elif device.type == "cpu":
        free = available_cpu_bytes()
        if free is None:
            return None
    else:
        return None
    return max(int(free * fraction // row_bytes), 1)


def row_bytes_for(searcher, shape, device) -> Optional[int]:
    """Bytes one search row of ``searcher`` needs on ``device``: measured on CUDA, estimated on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return probe_row_bytes(searcher, shape, device)
    if device.type == "cpu":
        impl = getattr(searcher, "impl", None) or "fused"
        return cpu_row_bytes(searcher.generator, impl)
    return None


def search_in_parts(searcher, target: torch.Tensor, seeds: List[List[int]], device,
                    on_split: Optional[Callable[[str], None]] = None, **search_kwargs):
    """``searcher.search(target, seeds=seeds, **search_kwargs)``, in parts when the rows do not fit the
    memory available (CPU: estimated before starting; CUDA: on an out-of-memory error), and on the CPU in
    parts of at most ``cpu_efficient_rows`` rows, beyond which a step gets slower per restart (config-f
    1024 px: 2 rows). ``on_split`` receives one line per decision to split for memory (the speed cap is
    silent: it changes nothing but the time)."""
    device = torch.device(device)
    rows = len(seeds) * len(seeds[0])
    max_rows = None
    if device.type == "cpu":
        row_bytes = row_bytes_for(searcher, tuple(target.shape[1:]), device)
        max_rows = rows_that_fit(row_bytes, device)
        if max_rows is not None and rows > max_rows and on_split is not None:
            on_split(f"{rows} restarts need about {rows * row_bytes / 2 ** 30:.1f} GiB ({row_bytes / 2 ** 20:.0f} MiB "
                     f"each) and {max_rows} fit the memory available now: searching them in batches")
        max_rows = speed_capped_rows(max_rows, searcher.generator, device)
    return searcher_split(searcher, target, seeds, max_rows, on_split=on_split, report_cap_splits=False,
                          **search_kwargs)


def searcher_split(searcher, targets: torch.Tensor, seeds: List[List[int]], max_rows: Optional[int],
                   on_split: Optional[Callable[[str], None]] = None, report_cap_splits: bool = True, **search_kwargs):
    """``search_split`` of ``searcher.search(targets, seeds=..., **search_kwargs)`` (a ``PULSE``), with its
    ``enough_converged`` rule applied across the parts."""
    # (search_split passes the step cap only with a quota; without one every part runs all the steps)
    return search_split(lambda t, s, cap=None: searcher.search(t, seeds=s, max_steps=cap, **search_kwargs), targets,
                        seeds, max_rows, on_split=on_split, report_cap_splits=report_cap_splits,
                        quota=searcher.quota())

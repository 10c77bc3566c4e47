"""Where a PULSE step's time goes: torch.profiler over a short fused search, ops by self time.

    python benchmarks/profile_step.py [--size 64] [--restarts 32] [--steps 10] [--threads 2]

Same set-up as bench_e2e.py's fused path (random-weight generator of that size, a random 16x16 target,
eps 0 so no restart stops early), one warm-up search first (filter caches, allocator). Writes the table
and the measured seconds per step to benchmarks/results/profile-step-<device>.md (or --out). The profiler adds a
little overhead per op call: read shares, not absolute times.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from bench_e2e import build_generator, target_size  # noqa: E402
from common import RESULTS_DIR, machine_info  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, help="generator resolution (64: the default generator's shape)")
    parser.add_argument("--restarts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--rows", type=int, default=25, help="ops listed")
    parser.add_argument("--by-shape", action="store_true",
                        help="one row per (op, input shapes): which layer of the generator the time is spent in")
    parser.add_argument("--out", default=None, help="markdown file (default: benchmarks/results/profile-step-<device>.md)")
    args = parser.parse_args(argv)
    from pulse_ext.pulse import PULSE
    from pulse_ext.pulse.latent import LatentStats

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G = build_generator(args.size, device, None)
    stats = LatentStats(torch.zeros(G.w_dim), torch.ones(G.w_dim))
    ts = target_size(args.size)
    target = torch.rand(1, 3, ts, ts, generator=torch.Generator().manual_seed(2))
    PULSE(G, steps=5, eps=0.0, latent_stats=stats).search(target, restarts=args.restarts, seed=0)  # warm-up
    searcher = PULSE(G, steps=args.steps, eps=0.0, latent_stats=stats)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=args.by_shape) as prof:
        start = time.perf_counter()
        searcher.search(target, restarts=args.restarts, seed=0)
        seconds = time.perf_counter() - start
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages(group_by_input_shape=args.by_shape).table(
        sort_by=sort_key, row_limit=args.rows, max_name_column_width=50, max_shapes_column_width=100)
    info = machine_info(device)
    text = (f"# PULSE step profile on {device.type}\n\n"
            f"Machine: {', '.join(f'{k}={v}' for k, v in info.items())}\n\n"
            f"`python benchmarks/profile_step.py --size {args.size} --restarts {args.restarts} --steps {args.steps}"
            f"{f' --threads {args.threads}' if args.threads else ''}{' --by-shape' if args.by_shape else ''}`: {seconds / args.steps:.4f} s per step "
            f"(profiled).\n\n```\n{table}\n```\n")
    path = args.out or os.path.join(RESULTS_DIR, f"profile-step-{device.type}.md")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print("wrote", path)


if __name__ == "__main__":
    main()

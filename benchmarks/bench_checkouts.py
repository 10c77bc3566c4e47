"""The PULSE step of two or more checkouts of this project, side by side in one run.

    python benchmarks/bench_checkouts.py --checkout before=/tmp/old --checkout after=. \
        [--sizes 64,1024] [--restarts 1,8,32] [--steps 20] [--rounds 3] [--threads 2] [--tag NAME]

Why: a change to the kernels or the generator is kept only if the search step gets faster, and this VM's
timings drift by 10-20 % over minutes, so the checkouts are timed in alternation, round by round, each
configuration in a fresh process that imports ``pulse_ext`` from that checkout (``PYTHONPATH``; each
checkout needs its extension built in place: ``python setup.py build_ext --inplace``). The step is what
``PULSE.search`` runs (eps = 0, nothing leaves the batch), on the random-weight generator of
``bench_e2e.py`` (``build_generator``; 64 = the default generator's shape, 1024 = config-f), after a
warm-up search; a process reports its best of three timed searches, and the table its median over the
rounds. The best L2 of the last search is reported too: a speed change must leave it unchanged (up to
rounding). Results go to ``benchmarks/results/checkouts[-TAG]-<device>.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import statistics

from common import run_json_process, write_results  # noqa: E402

CHILD = r"""
import json, os, sys, time, torch
import pulse_ext
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(pulse_ext.__file__))), "benchmarks"))
from bench_e2e import build_generator, target_size
from pulse_ext.pulse import PULSE
from pulse_ext.pulse.latent import LatentStats
size, restarts, steps, threads = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
G = build_generator(size, torch.device("cpu"), None)
stats = LatentStats(torch.zeros(G.w_dim), torch.ones(G.w_dim))
ts = target_size(size)
target = torch.rand(1, 3, ts, ts, generator=torch.Generator().manual_seed(2))
PULSE(G, steps=2, eps=0.0, latent_stats=stats).search(target, restarts=restarts, seed=0)
best = float("inf")
for _ in range(3):
    result = PULSE(G, steps=steps, eps=0.0, latent_stats=stats).search(target, restarts=restarts, seed=0)
    best = min(best, result.seconds / result.steps_run)
print(json.dumps({"s_per_step": best, "best_l2": float(result.l2.min()), "pulse_ext": pulse_ext.__file__}))
"""


def run_child(path: str, size: int, restarts: int, steps: int, threads: int) -> dict:
    # cwd as well as PYTHONPATH: `python -c` puts the working directory first on sys.path.
    record = run_json_process(["-c", CHILD, str(size), str(restarts), str(steps), str(threads)],
                              f"bench_checkouts {path}", cwd=os.path.abspath(path),
                              env_updates={"PYTHONPATH": os.path.abspath(path)})
    expected = os.path.join(os.path.abspath(path), "pulse_ext")
    if not os.path.abspath(record["pulse_ext"]).startswith(expected):
        raise SystemExit(f"bench_checkouts: {path} imported pulse_ext from {record['pulse_ext']}, not from "
                         f"{expected} (an installed copy shadows it?)")
    return record


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", required=True, metavar="NAME=PATH",
                        help="a checkout with its extension built in place; give two or more (the first is the baseline)")
    parser.add_argument("--sizes", default="64")
    parser.add_argument("--restarts", default="1,8,32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    checkouts = []
    for item in args.checkout:
        name, sep, path = item.partition("=")
        if not sep or not name or not os.path.isdir(os.path.join(path, "pulse_ext")):
            parser.error(f"--checkout must be NAME=PATH with PATH a checkout of this project, got {item!r}")
        checkouts.append((name, path))
    if len(checkouts) < 2:
        parser.error("give at least two --checkout")
    configs = [(int(s), int(r)) for s in args.sizes.split(",") for r in args.restarts.split(",")]
    runs = {}
    for round_index in range(args.rounds):
        for size, restarts in configs:
            for name, path in checkouts:
                steps = args.steps if size < 256 else max(2, args.steps // 4)
                record = run_child(path, size, restarts, steps, args.threads)
                runs.setdefault((size, restarts, name), []).append(record)
                print(f"round {round_index + 1}: {size} px R={restarts} {name}: {record['s_per_step'] * 1e3:.2f} ms/step, "
                      f"best L2 {record['best_l2']:.6f}", flush=True)
    base = checkouts[0][0]
    rows = []
    for size, restarts in configs:
        base_s = statistics.median(r["s_per_step"] for r in runs[size, restarts, base])
        for name, _ in checkouts:
            times = [r["s_per_step"] for r in runs[size, restarts, name]]
            rows.append(dict(size=size, restarts=restarts, checkout=name, s_per_step=statistics.median(times),
                             s_per_step_all=times, restart_steps_per_s=restarts / statistics.median(times),
                             speedup_vs_first=base_s / statistics.median(times),
                             best_l2=runs[size, restarts, name][-1]["best_l2"]))
    import torch
    command = "python benchmarks/bench_checkouts.py " + " ".join(f"--checkout {c}" for c in args.checkout) + (
        f" --sizes {args.sizes} --restarts {args.restarts} --steps {args.steps} --rounds {args.rounds}"
        f" --threads {args.threads}" + (f" --tag {args.tag}" if args.tag else ""))
    notes = (f"`{command}`: median over the rounds of each process's best of three searches; speed-up against "
             f"the first checkout ({base}).")
    path = write_results(f"checkouts{'-' + args.tag if args.tag else ''}", torch.device("cpu"), rows,
                         ["size", "restarts", "checkout", "s_per_step", "restart_steps_per_s", "speedup_vs_first",
                          "best_l2"], notes=notes, extra={"command": command})
    print(open(path).read())
    print("wrote", path)
    return rows


if __name__ == "__main__":
    main()

"""Steps and seconds to a face: stopping at the first converged restart against running all of them.

    python benchmarks/bench_convergence.py [--generator default] [--utkface 32] [--reachable 16]
        [--celeba-per-framing 12] [--framings tight,ffhq] [--threads 1] [--tag NAME]

``upscale()`` (8 restarts, 200 steps, eps 2e-3, one output) on each input, one input at a time as a user
runs it, in two variants side by side, the same seeds:

- ``all``: every restart runs until it converges or the steps end (``enough_converged=None``; the
  behaviour before ``enough_converged``);
- ``first``: the search stops at the first host read (every 5 steps) that sees a converged restart
  (``enough_converged=1``, upscale()'s default for one output).

Inputs: generator-made targets (``conftest.reachable_targets``: PULSE can match them exactly), held-out
UTKFace faces (``data/utkface64/faces.npz``, balanced over race x gender as python/evaluate_generator.py)
and, with dlib, held-out CelebA identities (ids >= 120) cut in the framings of python/evaluate_framing.py;
all area-downscaled to 16x16. Per input and variant: steps run, search seconds, whether eps was met, the
returned image's L2, loss and dlib realism score (issue #15's "realistic": >= 0.5), and the step at which
the first restart converged. Step counts do not depend on the machine's load; seconds do (the two
variants alternate input by input, so they share it). Writes benchmarks/results/convergence[-TAG]-cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from common import write_results  # noqa: E402

VARIANTS = {"all": None, "first": 1}
COLUMNS = ["inputs", "variant", "n", "eps_met", "median_steps", "mean_steps", "median_first_converged_step",
           "mean_seconds", "speedup_vs_all", "mean_l2", "mean_loss", "realistic", "mean_realism", "same_output"]


def load_inputs(args, G, log):
    """{set name: float [N, 3, 16, 16] in [0, 1]}."""
    import torch.nn.functional as F

    from conftest import reachable_targets

    sets = {}
    factor = G.img_resolution // 16
    if args.reachable:
        sets["reachable"] = reachable_targets(G, args.reachable, seed=5, factor=factor)
    if args.utkface:
        from evaluate_generator import balanced_selection

        data = np.load(os.path.join(args.data, "faces.npz"))
        selection = balanced_selection(data["heldout_labels"], args.utkface, 0)
        faces = torch.from_numpy(data["heldout"][selection]).permute(0, 3, 1, 2).float() / 255
        faces = F.interpolate(faces, size=G.img_resolution, mode="bicubic", antialias=True).clamp(0, 1) \
            if faces.shape[-1] != G.img_resolution else faces
        sets["utkface"] = F.avg_pool2d(faces, factor)
    if args.celeba_per_framing:
        from pulse_ext.realism import realism_unavailable_reason

        reason = realism_unavailable_reason()
        if reason:
            log(f"CelebA framings skipped: {reason}")
        else:
            from evaluate_framing import heldout_faces

            crops, _ = heldout_faces(args.celeba, 120, args.celeba_per_framing, G.img_resolution, 0, log)
            for name in args.framings.split(","):
                faces = torch.from_numpy(crops[name]).permute(0, 3, 1, 2).float() / 255
                sets[f"celeba-{name}"] = F.avg_pool2d(faces, factor)
    return sets


def summarise(set_name, variant, records, base_records):
    n = len(records)
    steps = [r["steps_run"] for r in records]
    firsts = [r["first_converged_step"] for r in records if r["first_converged_step"] >= 0]
    seconds = [r["search_s"] for r in records]
    scores = [r["realism"] for r in records if r["realism"] is not None]
    base_seconds = statistics.mean(r["search_s"] for r in base_records)
    return {
        "inputs": set_name, "variant": variant, "n": n,
        "eps_met": f"{sum(r['met'] for r in records)}/{n}",
        "median_steps": statistics.median(steps), "mean_steps": round(statistics.mean(steps), 1),
        "median_first_converged_step": statistics.median(firsts) if firsts else None,
        "mean_seconds": round(statistics.mean(seconds), 3),
        "speedup_vs_all": round(base_seconds / statistics.mean(seconds), 2),
        "mean_l2": float(f"{statistics.mean(r['l2'] for r in records):.3g}"),
        "mean_loss": float(f"{statistics.mean(r['loss'] for r in records):.4g}"),
        "realistic": f"{sum(s >= 0.5 for s in scores)}/{len(scores)}" if scores else "n/a (no dlib)",
        "mean_realism": round(statistics.mean(scores), 3) if scores else None,
        "same_output": f"{sum(r['restart'] == b['restart'] for r, b in zip(records, base_records))}/{n}",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="default")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "data", "utkface64"),
                    help="python/prepare_faces.py output (its faces.npz held-out split)")
    ap.add_argument("--celeba", default=os.path.join(HERE, "..", "..", "shared", "data", "celeba-ids000-149.tar"))
    ap.add_argument("--reachable", type=int, default=16, help="generator-made targets")
    ap.add_argument("--utkface", type=int, default=32, help="held-out UTKFace faces (0 skips)")
    ap.add_argument("--celeba-per-framing", type=int, default=12, help="held-out CelebA identities (0 skips)")
    ap.add_argument("--framings", default="tight,ffhq")
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="default: upscale()'s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    from pulse_ext.checkpoints import load_generator
    from pulse_ext.realism import realism_scores, realism_unavailable_reason
    from pulse_ext.upscale import DEFAULT_STEPS, upscale

    torch.set_num_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS
    G = load_generator(args.generator).eval()
    sets = load_inputs(args, G, log)
    if not sets:
        log("error: no inputs (all of --reachable, --utkface, --celeba-per-framing are 0)")
        return 2
    with_dlib = realism_unavailable_reason() is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 2 steps do not converge
        upscale(sets[next(iter(sets))][0], generator=G, steps=2, seed=0, realism_check="off")  # warm-up
    device = torch.device("cpu")
    records = {name: {v: [] for v in VARIANTS} for name in sets}
    rows = []
    name_tag = "convergence" + (f"-{args.tag}" if args.tag else "")
    command = "python benchmarks/bench_convergence.py " + " ".join(argv if argv is not None else sys.argv[1:])
    notes = (f"`{command}`. upscale() with {args.restarts} restarts, {steps} steps, eps 2e-3, one output, one input "
             f"at a time, {args.threads} thread(s). all: every restart runs until it converges or the steps end; "
             f"first: enough_converged=1 (the search stops at the first read, every 5 steps, that sees a converged "
             f"restart; upscale()'s default). same_output: the returned restart is the same one. realistic: dlib "
             f"HOG score of the output's 200-px resize >= 0.5. Steps do not depend on load; seconds do (variants "
             f"alternate input by input).")
    for set_name, targets in sets.items():
        for i in range(len(targets)):
            for variant, enough in VARIANTS.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # misses are counted instead
                    result = upscale(targets[i], generator=G, restarts=args.restarts, steps=steps, seed=1000 + i,
                                     realism_check="off", return_result=True, enough_converged=enough)
                conv_steps = [s for s in result.search.converged_step[0].tolist() if s >= 0]
                records[set_name][variant].append({
                    "index": i, "steps_run": result.steps_run, "search_s": result.timings["search_s"],
                    "met": bool(result.converged[0]), "l2": result.l2[0],
                    "loss": float(result.search.loss[0, result.best_index]), "restart": result.best_index,
                    "first_converged_step": min(conv_steps) if conv_steps else -1,
                    "realism": realism_scores([result.tensors[0]])[0] if with_dlib else None})
            log(f"{set_name} {i + 1}/{len(targets)}: " + ", ".join(
                f"{v} {records[set_name][v][-1]['steps_run']} steps {records[set_name][v][-1]['search_s']:.1f} s"
                for v in VARIANTS))
        for variant in VARIANTS:
            rows.append(summarise(set_name, variant, records[set_name][variant], records[set_name]["all"]))
        write_results(name_tag, device, rows, COLUMNS, notes, extra={"records": records, "complete": False})
    path = write_results(name_tag, device, rows, COLUMNS, notes, extra={"records": records, "complete": True})
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

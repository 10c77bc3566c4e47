"""Calibrate the framing search's box score on TRAINING identities (never the held-out evaluation set).

    python python/calibrate_framing_search.py [--generator default] [--per-framing 12]

The framing search (pulse_ext.pulse.framing.box_score) scores a box by its probe L2 times
(input area / box area) ** exponent. This script runs the probe on CelebA faces of ids below
--heldout-from (those the framing-mixture training run sees; evaluate_framing.py holds out the rest),
cut tight (the generator's own frame: the right box is the whole input) and FFHQ-style (the
generator's frame is the centred 0.64 box), records every box's L2, and for a grid of exponents
reports how often the chosen box is the whole input and how often it has the right size, per framing.
(A first score, L2 inside plus a weight x the variance a flat background leaves outside, separated
the framings worse for every weight: tight 58 % / FFHQ 83 % right at best, 0.1; see docs/pulse.md.)
Writes benchmarks/results/framing/calibration-<generator>.json.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import face_metrics as fm  # noqa: E402
from evaluate_framing import heldout_faces  # noqa: E402

# The box side that frames the generator's face, per framing of a 16x16 input.
RIGHT_SIDE = {"tight": 16, "ffhq": 10}
EXPONENTS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 1.0, 1.1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="default")
    ap.add_argument("--celeba", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                     "celeba-ids000-149.tar"))
    ap.add_argument("--heldout-from", type=int, default=120)
    ap.add_argument("--per-framing", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/framing")
    args = ap.parse_args(argv)
    import torch

    from pulse_ext.checkpoints import load_generator
    from pulse_ext.pulse import PULSE
    from pulse_ext.pulse.framing import DEFAULT_PROBE_RESTARTS, DEFAULT_PROBE_STEPS, candidate_boxes, probe_boxes
    from pulse_ext.pulse.latent import restart_seed

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    G = load_generator(args.generator).eval()
    R = G.img_resolution
    # ids 0..: the first --per-framing identities, all below --heldout-from (training identities).
    faces, names = heldout_faces(args.celeba, 0, args.per_framing, R, args.seed, log)
    ids = [int(n.split("/")[1].removeprefix("celeb_")) for n in names]
    if max(ids) >= args.heldout_from:
        raise SystemExit(f"identity {max(ids)} is held out; use fewer faces")
    short = PULSE(G, steps=DEFAULT_PROBE_STEPS)
    records = {}
    t0 = time.perf_counter()
    for framing in RIGHT_SIDE:
        small = fm.area_downscale(faces[framing], R // 16)
        records[framing] = []
        for i in range(len(small)):
            x = torch.from_numpy(small[i]).permute(2, 0, 1).float().unsqueeze(0) / 255
            boxes = candidate_boxes(16, 16)
            _, probe = probe_boxes(lambda t, s: short.search(t, seeds=s), x, boxes,
                                   lambda b: [restart_seed(args.seed + i, 1 + b, r) for r in range(DEFAULT_PROBE_RESTARTS)])
            records[framing].append(probe)
            log(f"{framing} {i + 1}/{len(small)}: {time.perf_counter() - t0:.0f} s")

    def choose(probe, exponent):
        return min(probe, key=lambda r: (r["l2"] * (256 / r["side"] ** 2) ** exponent, -r["side"]))["side"]

    table = {}
    for exponent in EXPONENTS:
        row = {}
        for f in RIGHT_SIDE:
            sides = [choose(p, exponent) for p in records[f]]
            row[f] = {"right_size": float(np.mean([s == RIGHT_SIDE[f] for s in sides])),
                      "whole_input": float(np.mean([s == 16 for s in sides])), "sides": sides}
        table[str(exponent)] = row
        log(f"exponent {exponent}: " + ", ".join(f"{f} right size {v['right_size']:.0%} whole input "
                                                   f"{v['whole_input']:.0%}" for f, v in row.items()))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"calibration-{os.path.basename(str(args.generator)).replace('.', '_')}.json"),
              "w") as f:
        json.dump({"generator": args.generator, "photos": names, "right_side": RIGHT_SIDE, "by_exponent": table,
                   "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""FD-dlib / KID of a framing-mixture generator against held-out faces of the mixture it was trained on.

A generator trained by ``train_generator.py --framing-data`` draws UTKFace-tight crops and, for a
``--framed-fraction`` of its samples, CelebA photos cut at a random framing. Its samples are therefore
*meant* to differ from UTKFace's held-out faces, so ``evaluate_generator.py``'s FD against those faces
measures the change of distribution, not the quality. This script compares like with like: the
generator's samples against a held-out sample of its own training distribution, made the way the
trainer makes it --

* real (held-out): UTKFace held-out faces and, for the framed fraction, crops of CelebA identities never
  trained on (``prepare_framing.py --heldout``), cut by the trainer's own ``FramingSampler``;
* floor: the same recipe from the training side (UTKFace train faces, training-identity photos), so the
  floor is the FD between two real samples of the mixture at this N.

    python python/evaluate_mixture_fd.py --generator PATH --out DIR

Prints a markdown summary and writes DIR/metrics.json. Same FD / KID / embedding recipe as
evaluate_generator.py (python/face_metrics.py); docs/evaluation.md explains how to read it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import face_metrics as fm  # noqa: E402
from evaluate_generator import generate, sha256_file  # noqa: E402


def mixture_sample(utk_faces: np.ndarray, photos_dir: str, n: int, framed_fraction: float, resolution: int,
                   seed: int) -> np.ndarray:
    """n uint8 [n, R, R, 3] faces: ``round(n * framed_fraction)`` random framings of the photos in
    photos_dir (the trainer's FramingSampler with its default ranges), the rest a seeded subset of
    utk_faces; in that order (FD and KID do not depend on it)."""
    import torch
    from train_generator import FramingSampler, load_framing_photos

    n_framed = int(round(n * framed_fraction))
    if n - n_framed > len(utk_faces):
        raise SystemExit(f"asked for {n - n_framed} UTKFace faces, the split has {len(utk_faces)}")
    photos, landmarks = load_framing_photos(photos_dir)
    rng = np.random.default_rng(seed)
    tight = utk_faces[np.sort(rng.permutation(len(utk_faces))[:n - n_framed])]
    sampler = FramingSampler(torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8), batch=1, xflip=False,
                             seed=seed, photos=photos, landmarks=landmarks)
    framed = []
    for start in range(0, n_framed, 100):  # bounded memory: grid_sample at 2x resolution on float photos
        crops = sampler.framed(min(100, n_framed - start), resolution)
        framed.append(crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    framed = np.concatenate(framed) if framed else np.zeros((0, resolution, resolution, 3), np.uint8)
    return np.concatenate([framed, tight])


def markdown_summary(m: dict) -> str:
    f = m["fd"]
    return "\n".join([
        f"**FD-dlib / KID against the framing mixture at N = {f['n']}** (`{m['snapshot']['generator']}`, sha256 "
        f"`{m['snapshot']['sha256'][:12]}`; real: {f['n_framed']} random framings of held-out CelebA identities + "
        f"{f['n'] - f['n_framed']} UTKFace held-out faces; floor: the same recipe from the training side; KID = "
        "unbiased cubic-kernel MMD², ×10³, on all rows; "
        f"`python python/evaluate_mixture_fd.py {m['command_args']}`, {m['seconds_total'] / 60:.1f} min):",
        "",
        "| set vs held-out mixture | FD-dlib | KID ×10³ | detection rate |",
        "|---|---|---|---|",
        f"| generator samples | {f['generator_fd']:.4f} | {f['generator_kid'] * 1e3:.3f} | {f['generator_detection']:.2f} |",
        f"| training-side mixture (floor) | {f['floor_fd']:.4f} | {f['floor_kid'] * 1e3:.3f} | {f['train_detection']:.2f} |",
        f"| (held-out mixture detection rate) | | | {f['heldout_detection']:.2f} |",
    ]) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="default", help="checkpoint path, or 'default' (the shipped one)")
    ap.add_argument("--data", default="data/utkface64", help="folder with faces.npz (python/prepare_faces.py)")
    ap.add_argument("--framing-train", default="data/celeba-framing", help="prepare_framing.py output (training ids)")
    ap.add_argument("--framing-heldout", default="data/celeba-framing-heldout",
                    help="prepare_framing.py --heldout output (held-out ids)")
    ap.add_argument("--framed-fraction", type=float, default=0.5,
                    help="share of framed crops, as the training run's --framing-fraction (default %(default)s)")
    ap.add_argument("--n", type=int, default=1000, help="N of each set (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="folder for metrics.json")
    args = ap.parse_args(argv)
    if not 0 <= args.framed_fraction <= 1:
        ap.error(f"--framed-fraction must be in [0, 1], got {args.framed_fraction}")
    for flag, folder in (("--framing-train", args.framing_train), ("--framing-heldout", args.framing_heldout)):
        if not os.path.isfile(os.path.join(folder, "photos.npz")):
            ap.error(f"{flag}: no photos.npz in {folder} (make it with python/prepare_framing.py)")
    reason = fm.dlib_missing_reason()
    if reason:
        ap.error(f"needs dlib: {reason}")

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from pulse_ext.checkpoints import load_generator, resolve_checkpoint_path

    path = resolve_checkpoint_path(args.generator)
    G = load_generator(args.generator).eval()
    data = np.load(os.path.join(args.data, "faces.npz"))
    resolution = int(data["heldout"].shape[1])
    if G.img_resolution != resolution:
        raise SystemExit(f"the generator draws {G.img_resolution} px, the faces in {args.data} are {resolution} px")
    real = mixture_sample(data["heldout"], args.framing_heldout, args.n, args.framed_fraction, resolution, args.seed)
    train = mixture_sample(data["train"], args.framing_train, args.n, args.framed_fraction, resolution, args.seed + 1)
    fake = generate(G, args.n, args.seed + 1, "random")  # evaluate_generator.py's samples at the same seed

    embedder = fm.DlibEmbedder()
    cache = os.path.join(args.data, "embedding-cache")
    f_real, d_real = embedder.embed(real, "dlib held-out mixture", cache)
    f_train, d_train = embedder.embed(train, "dlib training-side mixture", cache)
    f_fake, d_fake = embedder.embed(fake, "dlib samples")
    n = args.n
    metrics = {
        "snapshot": {"generator": args.generator if args.generator == "default" else os.path.basename(str(path)),
                     "path": str(path), "sha256": sha256_file(path)},
        "command_args": " ".join(argv if argv is not None else sys.argv[1:]),
        "fd": {"n": n, "n_framed": int(round(n * args.framed_fraction)),
               "generator_fd": fm.fd(f_fake, f_real), "floor_fd": fm.fd(f_train, f_real),
               "generator_kid": fm.kid(f_fake, f_real, subset_size=n)[0],
               "floor_kid": fm.kid(f_train, f_real, subset_size=n)[0],
               "generator_detection": float(d_fake.mean()), "heldout_detection": float(d_real.mean()),
               "train_detection": float(d_train.mean())},
    }
    os.makedirs(args.out, exist_ok=True)
    grid = fm.make_grid(np.concatenate([real[:32], real[-32:]]), 8)
    fm.save_png(grid, os.path.join(args.out, "mixture-heldout.png"))
    metrics["seconds_total"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    print(markdown_summary(metrics))
    return metrics


if __name__ == "__main__":
    main()

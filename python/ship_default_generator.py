"""Copy a training export into the package as the embedded default generator, with its provenance.

    python python/ship_default_generator.py --run /work/checkpoints/default64

Reads RUN/latest-G_ema.safetensors and the newest RUN/ckpt-*.pt, checks that the export loads as a
generator and renders finite images, fits PULSE's mapping statistics, then writes
pulse_ext/weights/default.safetensors (weights + those statistics) and pulse_ext/weights/default.json
(kimg trained, training minutes, sha256, date) atomically.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import os

import torch

from pulse_ext.checkpoints import load_generator, save_generator
from pulse_ext.pulse.latent import fit_latent_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(ROOT, "pulse_ext", "weights")


def training_summary(run_dir: str) -> dict:
    """kimg reached and minutes of training (cumulative over resumed runs) from the newest ckpt-*.pt,
    the checkpoint written together with latest-G_ema.safetensors."""
    checkpoints = sorted(glob.glob(os.path.join(run_dir, "ckpt-*.pt")))
    if not checkpoints:
        raise SystemExit(f"no ckpt-*.pt in {run_dir}: cannot tell how long the exported generator trained")
    # Our own training checkpoint (it holds numpy RNG state, which weights_only refuses).
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    return {"kimg": round(state["nimg"] / 1000, 3), "training_minutes": round(state["train_seconds"] / 60, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training output folder (holds latest-G_ema.safetensors, ckpt-*.pt)")
    parser.add_argument("--hardware", default="2-core x86_64 CPU (1 thread, bf16 autocast)",
                        help="what the training ran on, for the record")
    args = parser.parse_args(argv)
    export = os.path.join(args.run, "latest-G_ema.safetensors")
    G = load_generator(export)
    with torch.no_grad():
        img = G(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), noise_mode="const")
    if not torch.isfinite(img).all():
        raise SystemExit(f"{export} renders non-finite images; not shipping it")
    fit_latent_stats(G)  # stored in the file: upscale() with the default generator skips this fit
    os.makedirs(WEIGHTS, exist_ok=True)
    dst = os.path.join(WEIGHTS, "default.safetensors")
    save_generator(G, dst)
    with open(dst, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    info = {
        "file": "default.safetensors",
        "sha256": sha256,
        "shipped": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "resolution": G.img_resolution,
        "z_dim": G.z_dim,
        "w_dim": G.w_dim,
        "num_ws": G.num_ws,
        "parameters": sum(p.numel() for p in G.parameters()),
        "hardware": args.hardware,
        **training_summary(args.run),
    }
    tmp = os.path.join(WEIGHTS, ".default.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(WEIGHTS, "default.json"))
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

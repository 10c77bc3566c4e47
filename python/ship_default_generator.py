"""Copy a training export into the package as the embedded default generator, with its provenance.

    python python/ship_default_generator.py --run /work/checkpoints/default64

Reads RUN/latest-G_ema.safetensors and RUN/log.jsonl, checks that the export loads as a generator and
renders finite images, then writes pulse_ext/weights/default.safetensors and
pulse_ext/weights/default.json (kimg trained, wall-clock spent, sha256, date) atomically.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import tempfile

import torch

from pulse_ext.checkpoints import load_generator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(ROOT, "pulse_ext", "weights")


def training_summary(log_path: str) -> dict:
    """kimg reached and minutes of training, summed over the (resumed) runs in a log.jsonl."""
    kimg, minutes, run_minutes = 0.0, 0.0, 0.0
    with open(log_path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if "kimg" in rec:
                kimg = max(kimg, float(rec["kimg"]))
            if "elapsed_min" in rec:
                elapsed = float(rec["elapsed_min"])
                if elapsed < run_minutes:  # the clock restarted: a resumed run
                    minutes += run_minutes
                run_minutes = elapsed
    return {"kimg": round(kimg, 3), "training_minutes": round(minutes + run_minutes, 1)}


def atomic_copy(src: str, dst: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".tmp-")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; installed package data must be world-readable
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training output folder (holds latest-G_ema.safetensors, log.jsonl)")
    parser.add_argument("--hardware", default="2-core x86_64 CPU (1 thread, bf16 autocast)",
                        help="what the training ran on, for the record")
    args = parser.parse_args(argv)
    export = os.path.join(args.run, "latest-G_ema.safetensors")
    G = load_generator(export)
    with torch.no_grad():
        img = G(torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(0)), noise_mode="const")
    if not torch.isfinite(img).all():
        raise SystemExit(f"{export} renders non-finite images; not shipping it")
    os.makedirs(WEIGHTS, exist_ok=True)
    dst = os.path.join(WEIGHTS, "default.safetensors")
    atomic_copy(export, dst)
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
        **training_summary(os.path.join(args.run, "log.jsonl")),
    }
    tmp = os.path.join(WEIGHTS, ".default.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(WEIGHTS, "default.json"))
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

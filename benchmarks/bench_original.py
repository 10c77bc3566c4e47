"""Our search against the original PULSE's own loop, per restart-step at 1024 px, in one run.

    python benchmarks/bench_original.py --original PATH [--steps 3] [--threads 2] [--restarts 8]

PATH is the user's checkout of the original code (github.com/adamian98/pulse: PULSE.py, stylegan.py,
loss.py, bicubic.py, SphericalOptimizer.py, gaussian_fit.pt). It is never vendored or copied: this
script imports it from PATH at run time, in its own process, with the CUDA-only calls it makes sent to
the CPU (``.cuda()`` becomes a no-op, ``device='cuda'`` becomes the CPU, its bicubic filter's
``torch.cuda.FloatTensor`` becomes ``torch.FloatTensor``; its drive.py imports requests, stubbed when missing,
since the download is never called) and random StyleGAN1 weights (its weights
are a download; the step's cost does not depend on them). Its loop runs every step (it has no early
stopping); timed: ``steps`` steps of one 16x16 input at batch 1 after a 1-step warm-up, its defaults
otherwise (100*L2+0.05*GEOCROSS, adam 0.4, linear1cycledrop, 5 trainable noise layers).

Ours, each in its own process: ``PULSE.search`` on a config-f 1024 px generator (random weights) at
R = 1, and ``upscale()`` with its defaults at R = restarts (as a user calls it: batching and precision as
shipped), eps 0 so every restart runs every step. Both sides get glibc malloc tuned (the original
through ``pulse_ext.allocator.tune_glibc_malloc`` at process start, ours as the search does it).
Writes benchmarks/results/original-1024-<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ORIGINAL_FILES = ("PULSE.py", "stylegan.py", "loss.py", "bicubic.py", "SphericalOptimizer.py", "gaussian_fit.pt")


def check_original(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    missing = [name for name in ORIGINAL_FILES if not os.path.exists(os.path.join(path, name))]
    if missing:
        raise SystemExit(f"bench_original: --original {path}: not a checkout of adamian98/pulse "
                         f"(missing {', '.join(missing)})")
    return path


def _send_cuda_to_cpu(torch) -> None:
    """The original calls .cuda() and device='cuda' throughout: make both mean the CPU in this process."""
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    original_type = torch.Tensor.type

    def tensor_type(self, dtype=None, *args, **kwargs):
        if isinstance(dtype, str):
            dtype = dtype.replace("torch.cuda.", "torch.")
        return original_type(self, dtype, *args, **kwargs) if dtype is not None else original_type(self)

    torch.Tensor.type = tensor_type
    for name in ("randn", "zeros", "ones", "empty", "full", "tensor", "arange", "rand"):
        factory = getattr(torch, name)

        def on_cpu(*args, _factory=factory, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return _factory(*args, **kwargs)

        setattr(torch, name, on_cpu)


def time_original(path: str, steps: int, threads: int) -> dict:
    import torch

    from pulse_ext.allocator import tune_glibc_malloc

    tuned = tune_glibc_malloc()
    torch.set_num_threads(threads)
    _send_cuda_to_cpu(torch)
    sys.path.insert(0, path)
    os.chdir(path)  # it reads gaussian_fit.pt from the working directory
    try:  # its drive.py imports requests for the weight download, which is never called here
        import requests  # noqa: F401
    except ImportError:
        import types
        sys.modules["requests"] = types.ModuleType("requests")
    import PULSE as original  # noqa: N813 (the original's module name)

    model = original.PULSE.__new__(original.PULSE)
    torch.nn.Module.__init__(model)
    torch.manual_seed(0)
    model.synthesis = original.G_synthesis()  # random weights instead of the download
    model.synthesis.requires_grad_(False)
    model.verbose = False
    model.lrelu = torch.nn.LeakyReLU(negative_slope=0.2)
    model.gaussian_fit = torch.load("gaussian_fit.pt", map_location="cpu")
    ref_im = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    options = dict(seed=1, loss_str="100*L2+0.05*GEOCROSS", eps=2e-3, noise_type="trainable",
                   num_trainable_noise_layers=5, tile_latent=False, bad_noise_layers="17", opt_name="adam",
                   learning_rate=0.4, lr_schedule="linear1cycledrop", save_intermediate=False)
    list(model(ref_im, steps=1, **options))  # warm-up
    t0 = time.perf_counter()
    list(model(ref_im, steps=steps, **options))
    seconds = (time.perf_counter() - t0) / steps
    return dict(what="original PULSE loop (StyleGAN1 1024, batch 1)", R=1, s_per_restart_step=seconds,
                mallopt_ok=tuned)


def time_ours_search(steps: int, threads: int) -> dict:
    import torch

    from bench_e2e import build_generator
    from pulse_ext.pulse import PULSE
    from pulse_ext.pulse.latent import LatentStats

    torch.set_num_threads(threads)
    G = build_generator(1024, torch.device("cpu"))
    stats = LatentStats(torch.zeros(G.w_dim), torch.ones(G.w_dim))
    target = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    PULSE(G, steps=1, eps=0.0, latent_stats=stats).search(target, restarts=1, seed=0)  # warm-up
    result = PULSE(G, steps=steps, eps=0.0, latent_stats=stats).search(target, restarts=1, seed=0)
    return dict(what="pulse_ext PULSE.search (config-f 1024, fused)", R=1,
                s_per_restart_step=result.timings["search_s"] / steps)


def time_ours_upscale(steps: int, threads: int, restarts: int) -> dict:
    from bench_upscale import run_variant

    row = run_variant("now", 1024, restarts, steps, threads)
    return dict(what=f"pulse_ext upscale() defaults (config-f 1024, {restarts} restarts)", R=restarts,
                s_per_restart_step=row["s_per_restart_step"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="path of a checkout of github.com/adamian98/pulse")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--restarts", type=int, default=8, help="R of the upscale() row")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = check_original(args.original)
    if args.worker:
        row = {"original": lambda: time_original(path, args.steps, args.threads),
               "search": lambda: time_ours_search(args.steps, args.threads),
               "upscale": lambda: time_ours_upscale(args.steps, args.threads, args.restarts)}[args.worker]()
        print(json.dumps(row))
        return None
    import torch

    from common import run_worker, write_results

    rows = []
    for worker in ("original", "search", "upscale"):
        rows.append(run_worker(__file__, ["--worker", worker, "--original", path, "--steps", str(args.steps),
                                          "--threads", str(args.threads), "--restarts", str(args.restarts)], worker))
        print(rows[-1], flush=True)
    original = rows[0]["s_per_restart_step"]
    for row in rows:
        row["share_of_original"] = row["s_per_restart_step"] / original
        row["speedup_vs_original"] = original / row["s_per_restart_step"]
    notes = (f"`python benchmarks/bench_original.py --original PATH --steps {args.steps} --threads {args.threads} "
             f"--restarts {args.restarts}`: each row in its own process, glibc malloc tuned on both sides, random "
             f"weights, a random 16x16 target, every step run. The original's StyleGAN1 and our config-f "
             f"StyleGAN2 are different networks at the same 1024 px (FLOPs: benchmarks/flops.py for ours).")
    path_md = write_results("original-1024", torch.device("cpu"), rows,
                            ["what", "R", "s_per_restart_step", "share_of_original", "speedup_vs_original"],
                            notes=notes)
    print("wrote", path_md)
    return rows


if __name__ == "__main__":
    main()

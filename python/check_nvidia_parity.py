#!/usr/bin/env python
"""Compare pulse_ext's StyleGAN2 generator with NVIDIA's own stylegan2-ada-pytorch Generator.

    python python/check_nvidia_parity.py --nvidia-repo /path/to/stylegan2-ada-pytorch [--device cpu]

For a few small configurations this builds NVIDIA's Generator with random weights (zero-initialised
biases, noise strengths and w_avg are randomised too, so every term is exercised), loads its
state_dict into ``pulse_ext.stylegan2.Generator`` with strict=True, and prints the max abs difference
of ws and images for noise_mode 'const', 'none' and 'random' (same seed), truncation psi 1 and 0.7,
with and without a cutoff, for each of our impls, against both of NVIDIA's modconv paths. NVIDIA's code is imported from the given checkout at
run time; this repository contains none of it. On CPU NVIDIA's custom ops use their reference paths.

Exit status 1 when any difference exceeds --tolerance.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pulse_ext import _extension  # noqa: E402
from pulse_ext.stylegan2 import Generator  # noqa: E402

CONFIGS = {
    # name: Generator kwargs
    "64px cb2048 cmax128 z=w=256 map8": dict(
        z_dim=256, c_dim=0, w_dim=256, img_resolution=64, img_channels=3,
        mapping_kwargs=dict(num_layers=8), synthesis_kwargs=dict(channel_base=2048, channel_max=128)),
    "256px cb1024 cmax64 z=w=64 map4 clamp": dict(
        z_dim=64, c_dim=0, w_dim=64, img_resolution=256, img_channels=3,
        mapping_kwargs=dict(num_layers=4),
        synthesis_kwargs=dict(channel_base=1024, channel_max=64, conv_clamp=0.5, num_fp16_res=0)),
    "32px conditional c=5 z=48 w=40 map3": dict(
        z_dim=48, c_dim=5, w_dim=40, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=3, embed_features=24, layer_features=56),
        synthesis_kwargs=dict(channel_base=512, channel_max=32)),
    "32px architecture=orig 1 channel": dict(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=1,
        mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture="orig")),
    "32px architecture=resnet clamp": dict(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture="resnet", conv_clamp=2.0)),
}


def import_nvidia_generator(repo: str):
    repo = os.path.abspath(repo)
    if not os.path.isfile(os.path.join(repo, "training", "networks.py")):
        raise SystemExit(f"--nvidia-repo {repo!r} has no training/networks.py; pass a stylegan2-ada-pytorch checkout")
    sys.path.insert(0, repo)
    try:
        importlib.import_module("requests")
    except ImportError:
        # dnnlib.util imports requests only to download URLs, which this check never does.
        sys.modules["requests"] = types.ModuleType("requests")
    return importlib.import_module("training.networks").Generator


def randomise_zero_init(G_nv: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, t in list(G_nv.named_parameters()) + list(G_nv.named_buffers()):
            if name.endswith("noise_strength") or name.endswith(".bias") or name.endswith("w_avg"):
                t.copy_(0.5 * torch.randn(t.shape, generator=generator))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def compare(name: str, kwargs: dict, G_nv_cls, device: torch.device, impls, batch: int) -> float:
    torch.manual_seed(0)
    G_nv = G_nv_cls(**kwargs).eval().to(device)
    randomise_zero_init(G_nv, torch.Generator().manual_seed(1))
    G = Generator(**kwargs).eval().to(device)
    G.load_state_dict(G_nv.state_dict(), strict=True)

    z = torch.randn([batch, kwargs["z_dim"]], device=device, generator=None)
    c = None
    if kwargs["c_dim"]:
        c = torch.nn.functional.one_hot(torch.arange(batch) % kwargs["c_dim"], kwargs["c_dim"]).float().to(device)
    cutoff = max(1, G.num_ws // 2)
    worst = 0.0
    print(f"\n{name}: num_ws={G.num_ws}, batch={batch}, device={device}")
    with torch.no_grad():
        for psi, cut in ((1, None), (0.7, None), (0.7, cutoff)):
            ws_nv = G_nv.mapping(z, c, truncation_psi=psi, truncation_cutoff=cut)
            ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cut)
            err_ws = max_abs(ws, ws_nv)
            worst = max(worst, err_ws)
            for noise_mode in ("const", "none", "random"):
                torch.manual_seed(123)
                img_nv = G_nv.synthesis(ws_nv, noise_mode=noise_mode)
                # Eval mode runs NVIDIA's grouped "fused_modconv"; training runs the unfused form.
                torch.manual_seed(123)
                img_nv_unfused = G_nv.synthesis(ws_nv, noise_mode=noise_mode, fused_modconv=False)
                for impl in impls:
                    G.set_impl(impl)
                    torch.manual_seed(123)
                    img = G.synthesis(ws, noise_mode=noise_mode)
                    err = max_abs(img, img_nv)
                    err_unfused = max_abs(img, img_nv_unfused)
                    worst = max(worst, err, err_unfused)
                    print(f"  psi={psi:<3} cutoff={str(cut):<4} noise={noise_mode:<6} impl={impl:<9} "
                          f"ws err={err_ws:.2e}  img err={err:.2e} (vs unfused_modconv {err_unfused:.2e})  "
                          f"img range {img_nv.min().item():+.2f}..{img_nv.max().item():+.2f}")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvidia-repo", required=True, help="path to a stylegan2-ada-pytorch checkout")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help=f"subset of {list(CONFIGS)}")
    args = parser.parse_args()

    G_nv_cls = import_nvidia_generator(args.nvidia_repo)
    device = torch.device(args.device)
    impls = ["reference"] + (["fused"] if _extension.has_kernels_for(device) else [])
    worst = 0.0
    for name in args.configs:
        worst = max(worst, compare(name, CONFIGS[name], G_nv_cls, device, impls, args.batch))
    ok = worst < args.tolerance
    print(f"\nmax abs error over all comparisons: {worst:.3e} ({'OK' if ok else 'FAIL'}, tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

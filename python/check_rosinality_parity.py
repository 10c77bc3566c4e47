#!/usr/bin/env python
"""Check pulse_ext's rosinality loader against rosinality/stylegan2-pytorch's own Generator.

    python python/check_rosinality_parity.py --rosinality-repo /path/to/stylegan2-pytorch

For a few configurations this builds their ``model.Generator(size, style_dim, n_mlp,
channel_multiplier)`` on the CPU with random weights (the zero-initialised biases and noise weights
randomised too), saves it with ``torch.save`` the way their scripts do -- ``train.py``'s checkpoint
dict (g, d, g_ema, optimiser states, args, ada_aug_p; no average W) and ``convert_weight.py``'s
``{"g_ema", "latent_avg"}`` -- loads the file with ``pulse_ext.load_generator`` and prints the max
abs difference of the images:

- stored noise: theirs ``randomize_noise=False`` (their ``noises.noise_{i}`` buffers) = ours
  ``noise_mode="const"``;
- explicit noise: theirs ``noise=[...]`` = ours ``noise=[...]``, the same list (one tensor per layer,
  in the same order: the 4x4 conv, then the two convs of each block);
- truncation: theirs ``truncation=psi, truncation_latent=L`` = ours ``truncation_psi=psi`` (no
  cutoff) where L is the file's ``latent_avg`` or, for train.py files, the w_avg pulse_ext estimated
  (their ``mean_latent(4096)`` is printed for comparison; it is a random estimate too);
- one W per layer: theirs ``[ws], input_is_latent=True`` = ours ``G.synthesis(ws)``, with ws our
  mapping output under a truncation cutoff plus per-layer noise.

Their ``op`` package compiles CUDA extensions when imported; on a machine without a CUDA toolchain
that fails, so (unless --no-op-shim) a stand-in ``op`` module is installed in sys.modules first. It
is this script's own pure-PyTorch code for what their ops compute on the CPU (bias + leaky ReLU
x sqrt(2); upfirdn2d), plus their pure-Python ``op/conv2d_gradfix.py`` loaded from the checkout.
Nothing of theirs is copied into this repository. Exit status 1 when a difference exceeds --tolerance.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
import types

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pulse_ext.checkpoints import load_generator  # noqa: E402

# name: (size, style_dim, n_mlp, channel_multiplier, file layout)
CONFIGS = {
    "64px style_dim=512 n_mlp=8 cm=2 (config F at 64 px), convert_weight.py file": (64, 512, 8, 2, "convert"),
    "128px style_dim=128 n_mlp=4 cm=1, train.py checkpoint": (128, 128, 4, 1, "train"),
    "32px style_dim=64 n_mlp=2 cm=2, train.py checkpoint": (32, 64, 2, 2, "train"),
}


# ---- stand-in for their `op` package (our code) ------------------------------------------------------

def _fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    return F.leaky_relu(x, negative_slope) * scale


class _FusedLeakyReLU(torch.nn.Module):
    def __init__(self, channel, bias=True, negative_slope=0.2, scale=2 ** 0.5):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return _fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


def _upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Upsample by zero insertion, pad (negative = crop), convolve with the kernel (true convolution), downsample."""
    up_x, up_y = (up, up) if isinstance(up, int) else up
    down_x, down_y = (down, down) if isinstance(down, int) else down
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    if up_x > 1 or up_y > 1:
        z = x.new_zeros([n, c, h * up_y, w * up_x])
        z[:, :, ::up_y, ::up_x] = x
        x = z
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    k = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    return x[:, :, ::down_y, ::down_x]


def install_op_shim(repo: str) -> None:
    op = types.ModuleType("op")
    op.__path__ = []
    op.FusedLeakyReLU = _FusedLeakyReLU
    op.fused_leaky_relu = _fused_leaky_relu
    op.upfirdn2d = _upfirdn2d
    # Their conv2d_gradfix is plain Python (no extension); load it from the checkout.
    spec = importlib.util.spec_from_file_location("op.conv2d_gradfix", os.path.join(repo, "op", "conv2d_gradfix.py"))
    gradfix = importlib.util.module_from_spec(spec)
    sys.modules["op"] = op
    sys.modules["op.conv2d_gradfix"] = gradfix
    spec.loader.exec_module(gradfix)
    op.conv2d_gradfix = gradfix


def import_rosinality(repo: str, shim: bool):
    repo = os.path.abspath(repo)
    if not os.path.isfile(os.path.join(repo, "model.py")):
        raise SystemExit(f"--rosinality-repo {repo!r} has no model.py; pass a rosinality/stylegan2-pytorch checkout")
    sys.path.insert(0, repo)
    if shim:
        install_op_shim(repo)
    return importlib.import_module("model")


# ---- the check ----------------------------------------------------------------------------------------

def max_abs(a, b):
    return (a.double() - b.double()).abs().max().item()


def randomise(g, generator):
    """Their zero-/one-initialised terms (biases, noise weights) get random values."""
    with torch.no_grad():
        for name, t in g.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                t.copy_(0.5 * torch.randn(t.shape, generator=generator))


def write_checkpoint(model, size, style_dim, n_mlp, cm, layout, path):
    torch.manual_seed(0)
    generator = model.Generator(size, style_dim, n_mlp, channel_multiplier=cm)
    g_ema = model.Generator(size, style_dim, n_mlp, channel_multiplier=cm)
    g_ema.eval()
    g_ema.load_state_dict(generator.state_dict())  # train.py: accumulate(g_ema, generator, 0)
    randomise(g_ema, torch.Generator().manual_seed(1))
    if layout == "convert":  # convert_weight.py
        latent_avg = 0.5 * torch.randn([style_dim], generator=torch.Generator().manual_seed(2))
        torch.save({"g_ema": g_ema.state_dict(), "latent_avg": latent_avg}, path)
        return g_ema, latent_avg
    discriminator = model.Discriminator(size, channel_multiplier=cm)
    g_optim = torch.optim.Adam(generator.parameters(), lr=0.002 * 4 / 5, betas=(0.0, 0.99 ** (4 / 5)))
    d_optim = torch.optim.Adam(discriminator.parameters(), lr=0.002 * 16 / 17, betas=(0.0, 0.99 ** (16 / 17)))
    for module, optim in ((generator, g_optim), (discriminator, d_optim)):  # optimiser state as after a step
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
        optim.step()
    args = argparse.Namespace(path="/data/lmdb", arch="stylegan2", iter=800000, batch=16, n_sample=64, size=size,
                              r1=10, path_regularize=2, path_batch_shrink=2, d_reg_every=16, g_reg_every=4,
                              mixing=0.9, ckpt=None, lr=0.002, channel_multiplier=cm, wandb=False, local_rank=0,
                              augment=False, augment_p=0, ada_target=0.6, ada_length=500000, ada_every=256,
                              latent=style_dim, n_mlp=n_mlp, start_iter=0, distributed=False)
    torch.save({"g": generator.state_dict(), "d": discriminator.state_dict(), "g_ema": g_ema.state_dict(),
                "g_optim": g_optim.state_dict(), "d_optim": d_optim.state_dict(), "args": args,
                "ada_aug_p": 0.0}, path)
    return g_ema, None


def compare(model, name, spec, workdir, batch):
    size, style_dim, n_mlp, cm, layout = spec
    path = os.path.join(workdir, f"rosinality-{size}.pt")
    g, latent_avg = write_checkpoint(model, size, style_dim, n_mlp, cm, layout, path)
    G = load_generator(path)
    print(f"\n{name}: {os.path.getsize(path) / 2 ** 20:.1f} MiB file, loaded config {G.init_kwargs}")
    z = torch.randn([batch, style_dim], generator=torch.Generator().manual_seed(3))
    rows = []
    with torch.no_grad():
        w_avg = G.mapping.w_avg
        if latent_avg is None:
            torch.manual_seed(4)
            theirs_mean = g.mean_latent(4096)[0]
            print(f"  no latent_avg: our estimated w_avg vs their mean_latent(4096): max diff "
                  f"{max_abs(w_avg, theirs_mean):.2e} (|w_avg| max {w_avg.abs().max().item():.2f}; "
                  f"both are random estimates)")
            L = w_avg.clone()
        else:
            rows.append(("w_avg = latent_avg", max_abs(w_avg, latent_avg)))
            L = latent_avg
        for psi in (1, 0.7):
            img_theirs, _ = g([z], truncation=psi, truncation_latent=L[None], randomize_noise=False)
            img_ours = G(z, None, truncation_psi=psi, noise_mode="const")
            rows.append((f"psi={psi} stored noise (randomize_noise=False / noise_mode=const)",
                         max_abs(img_ours, img_theirs)))
        gen = torch.Generator().manual_seed(5)
        noise = [torch.randn([batch if i % 2 else 1, *s[1:]], generator=gen) for i, s in
                 enumerate([tuple(t.shape) for t in g.make_noise()])]
        img_theirs, _ = g([z], truncation=0.7, truncation_latent=L[None], noise=noise)
        img_ours = G(z, None, truncation_psi=0.7, noise=noise)
        rows.append(("psi=0.7 explicit noise list (noise=[...], [1 or N,1,r,r])", max_abs(img_ours, img_theirs)))
        cutoff = G.num_ws // 2
        ws = G.mapping(z, None, truncation_psi=0.7, truncation_cutoff=cutoff)
        ws = ws + 0.3 * torch.randn(ws.shape, generator=gen)  # a different W per layer
        img_theirs, _ = g([ws], input_is_latent=True, randomize_noise=False)
        img_ours = G.synthesis(ws, noise_mode="const")
        rows.append((f"one W per layer (input_is_latent; cutoff {cutoff} + jitter), stored noise",
                     max_abs(img_ours, img_theirs)))
        range_ = f"{img_theirs.min().item():+.2f}..{img_theirs.max().item():+.2f}"
    for label, err in rows:
        print(f"  {label:<72} max abs err {err:.2e}")
    print(f"  (image range {range_})")
    os.remove(path)
    return max(err for _, err in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rosinality-repo", required=True, help="path to a rosinality/stylegan2-pytorch checkout")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help=f"subset of {list(CONFIGS)}")
    parser.add_argument("--no-op-shim", action="store_true", help="import their compiled op package as it is")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = import_rosinality(args.rosinality_repo, shim=not args.no_op_shim)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="pulse_ext_rosinality_") as workdir:
        for name in args.configs:
            worst = max(worst, compare(model, name, CONFIGS[name], workdir, args.batch))
    ok = worst < args.tolerance
    print(f"\nmax abs error over all comparisons: {worst:.3e} ({'OK' if ok else 'FAIL'}, tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

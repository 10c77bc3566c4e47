#!/usr/bin/env python
"""Train pulse_ext's default StyleGAN2 face generator (64x64 UTKFace by default).

Recipe (docs/training.md has the why): our ``pulse_ext.stylegan2.Generator`` in its plain-PyTorch
"reference" implementation + a residual StyleGAN2 discriminator (python/training/discriminator.py),
non-saturating logistic loss, lazy R1 on D (every 16 steps), optional lazy path-length
regularisation on G (off by default: it doubles G's cost), style mixing 0.9, Adam(0.0025, (0, 0.99),
1e-8) with NVIDIA's lazy-regularisation lr/beta adjustment, G_ema (10 kimg half-life, 0.05 ramp-up),
x-flips, batch 32.

    python python/train_generator.py --data data/utkface64 --out /work/checkpoints/default64 \
        --threads 1 --bf16 --minutes 150 --resume

``--grow-from CKPT --resolution 2R`` starts a run at twice a checkpoint's resolution that keeps what it
learned (``grow_trainer``: new top blocks, G's new toRGB from zero, D faded in over ``--fade-kimg``).

Checkpoints (atomic, last 3 kept) every --ckpt-minutes and at exit (also on SIGTERM/SIGINT):
``ckpt-<kimg>.pt``, plus ``latest-G_ema.safetensors`` (pulse_ext format), ``samples-<kimg>.png``
(8x8 grid from fixed z, G_ema, const noise) and ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import random
import signal
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

from pulse_ext.stylegan2 import Generator  # noqa: E402
from training.discriminator import Discriminator  # noqa: E402

CKPT_FORMAT = "pulse_ext-train-ckpt-v1"
SAMPLE_SEED = 20240601
SAMPLE_GRID = 8

DEFAULT_CFG = dict(
    resolution=64, z_dim=256, w_dim=256, map_layers=8, map_lr_mult=0.01,
    channel_base=2048, channel_max=128, conv_clamp=None,
    d_channel_base=2048, d_channel_max=128, mbstd_group=4,
    batch=32, lr=0.0025, betas=(0.0, 0.99), eps=1e-8,
    r1_gamma=0.1, r1_interval=16, pl_weight=0.0, pl_interval=4, pl_batch_shrink=2, pl_decay=0.01,
    style_mixing=0.9, ema_kimg=10.0, ema_rampup=0.05, xflip=True,
)


# ----------------------------------------------------------------------------------------------
# Data

def load_train_images(path: str) -> torch.Tensor:
    """uint8 [N, 3, R, R] from a prepare_faces.py output (its faces.npz, or its --carry file) or an .npz/.npy."""
    if path.endswith(".npy"):
        arr = np.load(path)
    else:
        from prepare_faces import load_faces
        arr = load_faces(path, "train")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 4 or t.shape[-1] not in (1, 3):
        raise ValueError(f"expected [N, H, W, C] uint8 images, got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).contiguous()


class Sampler:
    """Random minibatches (with replacement) + x-flips from its own RNG, so resume is exact."""

    def __init__(self, images: torch.Tensor, batch: int, xflip: bool, seed: int):
        self.images = images
        self.batch = batch
        self.xflip = xflip
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, device, memory_format=torch.contiguous_format) -> torch.Tensor:
        idx = torch.randint(self.images.shape[0], (self.batch,), generator=self.gen)
        x = self.mix_in(self.images[idx.to(self.images.device)].float())
        if self.xflip:
            flip = torch.rand(self.batch, generator=self.gen) < 0.5
            x = torch.where(flip.to(x.device).reshape(-1, 1, 1, 1), x.flip(3), x)
        x = x.to(device, non_blocking=True).div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=memory_format)

    def mix_in(self, x: torch.Tensor) -> torch.Tensor:
        """Hook between drawing the batch (uint8-range float) and flipping it; draws nothing here."""
        return x


class FramingSampler(Sampler):
    """:class:`Sampler`'s minibatches, a ``framed_fraction`` of them replaced by crops cut from photos at
    a random framing: the crop square is the face's FFHQ square (from its 68 landmarks, as
    pulse_ext.align) scaled by s (log-uniform in ``scale_range``), its centre moved by up to ``max_shift``
    half-sides along its axes, rotated by up to ``max_rotation`` degrees — a continuous range from
    tighter than UTKFace to wider than the whole CelebA photo. Cut with one batched bilinear
    ``grid_sample`` at twice the resolution (reflection outside the photo) and a 2x2 mean, then x-flipped
    as the rest. Every draw comes from the one RNG ``gen``, so resume stays exact.

    photos: uint8 [P, 3, H, W]; landmarks: [P, 68, 2] pixel-index coordinates.
    """

    def __init__(self, images: torch.Tensor, batch: int, xflip: bool, seed: int, photos: torch.Tensor,
                 landmarks, framed_fraction: float = 0.5, scale_range=(0.6, 1.3), max_shift: float = 0.3,
                 max_rotation: float = 8.0):
        from pulse_ext.align import face_quad

        super().__init__(images, batch, xflip, seed)
        if not 0 <= framed_fraction <= 1:
            raise ValueError(f"framed_fraction must be in [0, 1], got {framed_fraction}")
        self.photos = photos
        quads = np.stack([face_quad(lm, "ffhq") for lm in np.asarray(landmarks, np.float64)])
        self.centre = torch.from_numpy(quads.mean(1))  # [P, 2]
        self.half_x = torch.from_numpy((quads[:, 2] + quads[:, 3]) / 2 - quads.mean(1))  # to the right edge
        self.half_y = torch.from_numpy((quads[:, 1] + quads[:, 2]) / 2 - quads.mean(1))  # to the bottom edge
        self.framed_fraction = float(framed_fraction)
        self.log_scale = (math.log(scale_range[0]), math.log(scale_range[1]))
        self.max_shift = float(max_shift)
        self.max_rotation = math.radians(max_rotation)

    def framed(self, count: int, resolution: int) -> torch.Tensor:
        """``count`` random framed crops, uint8-range float [count, 3, resolution, resolution]."""
        g = self.gen
        idx = torch.randint(self.photos.shape[0], (count,), generator=g)
        u = torch.rand(count, 4, generator=g, dtype=torch.float64)
        scale = torch.exp(self.log_scale[0] + (self.log_scale[1] - self.log_scale[0]) * u[:, 0])
        shift = (u[:, 1:3] * 2 - 1) * self.max_shift
        angle = (u[:, 3] * 2 - 1) * self.max_rotation
        hx, hy = self.half_x[idx], self.half_y[idx]
        centre = self.centre[idx] + shift[:, :1] * hx + shift[:, 1:] * hy
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]

        def turn(v):  # rotate [count, 2] vectors by angle, then scale
            return torch.stack([v[:, 0] * cos[:, 0] - v[:, 1] * sin[:, 0],
                                v[:, 0] * sin[:, 0] + v[:, 1] * cos[:, 0]], 1) * scale[:, None]

        hx, hy = turn(hx), turn(hy)
        h, w = self.photos.shape[-2:]
        size = torch.tensor([w, h], dtype=torch.float64)
        # output (u, v) in [-1, 1] -> pixel centre + u hx + v hy -> grid_sample's normalised coordinates
        theta = torch.stack([hx * 2 / size, hy * 2 / size, (centre + 0.5) * 2 / size - 1], 2).float()
        src = self.photos[idx.to(self.photos.device)].float()
        grid = torch.nn.functional.affine_grid(theta.to(src.device), [count, 3, 2 * resolution, 2 * resolution],
                                               align_corners=False)
        crops = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="reflection",
                                                align_corners=False)
        return torch.nn.functional.avg_pool2d(crops, 2)

    def mix_in(self, x: torch.Tensor) -> torch.Tensor:
        framed = torch.rand(x.shape[0], generator=self.gen) < self.framed_fraction
        n = int(framed.sum())
        if n:
            x[framed.to(x.device)] = self.framed(n, x.shape[-1]).to(x.device)
        return x


def load_framing_photos(folder: str):
    """photos uint8 [P, 3, H, W] and landmarks [P, 68, 2] from python/prepare_framing.py's OUT/photos.npz."""
    data = np.load(os.path.join(folder, "photos.npz"))
    photos = torch.from_numpy(np.ascontiguousarray(data["photos"])).permute(0, 3, 1, 2).contiguous()
    return photos, data["landmarks"]


# ----------------------------------------------------------------------------------------------
# Models

def build_models(cfg: dict, device, seed: int):
    torch.manual_seed(seed)
    G = Generator(z_dim=cfg["z_dim"], c_dim=0, w_dim=cfg["w_dim"], img_resolution=cfg["resolution"], img_channels=3,
                  mapping_kwargs=dict(num_layers=cfg["map_layers"], lr_multiplier=cfg["map_lr_mult"]),
                  synthesis_kwargs=dict(channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
                                        conv_clamp=cfg["conv_clamp"]))
    D = Discriminator(img_resolution=cfg["resolution"], img_channels=3, channel_base=cfg["d_channel_base"],
                      channel_max=cfg["d_channel_max"], conv_clamp=cfg["conv_clamp"],
                      mbstd_group_size=cfg["mbstd_group"], fade_in=bool(cfg.get("d_fade_in", False)))
    G.set_impl("reference")
    G = G.to(device).train()
    D = D.to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    return G, D, G_ema


def fade_alpha(cfg: dict, nimg: int) -> float:
    """Share of a grown D's new top block in its input (0 -> 1 over ``fade_kimg`` after ``grow_nimg``);
    1 for a D that was never grown."""
    if not cfg.get("d_fade_in"):
        return 1.0
    return min(max((nimg - cfg["grow_nimg"]) / (cfg["fade_kimg"] * 1000), 0.0), 1.0)


def make_optimizers(G, D, cfg: dict):
    opts = []
    for module, reg_interval in ((G, cfg["pl_interval"] if cfg["pl_weight"] > 0 else None),
                                 (D, cfg["r1_interval"] if cfg["r1_gamma"] > 0 else None)):
        lr, betas = cfg["lr"], tuple(cfg["betas"])
        if reg_interval:
            mb = reg_interval / (reg_interval + 1)  # NVIDIA's lazy-regularisation correction
            lr, betas = lr * mb, tuple(b ** mb for b in betas)
        opts.append(torch.optim.Adam(module.parameters(), lr=lr, betas=betas, eps=cfg["eps"]))
    return opts


def _sanitize_grads(module):
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


def _autocast_cast_hook(module, args):
    """Under autocast, feed the synthesis layers x and w in the autocast dtype: their affine (a linear)
    comes out of autocast in bf16, and the ops want x and styles in one dtype (the b4 const is fp32)."""
    x = args[0]
    for dev in ("cpu", "cuda"):
        if torch.is_autocast_enabled(dev) and x.device.type == dev:
            dt = torch.get_autocast_dtype(dev)
            return (x.to(dt), args[1].to(dt)) + tuple(args[2:])
    return None


def install_autocast_hooks(G):
    n = 0
    for m in G.synthesis.modules():
        if type(m).__name__ in ("SynthesisLayer", "ToRGBLayer"):
            m.register_forward_pre_hook(_autocast_cast_hook)
            n += 1
    return n


def _mapping(G, z, skip_update=False):
    return G.mapping(z, None, skip_w_avg_update=skip_update)


# ----------------------------------------------------------------------------------------------
# Trainer

class Trainer:
    def __init__(self, cfg: dict, device="cpu", seed: int = 0, bf16: bool = False, channels_last: bool = False,
                 images: Optional[torch.Tensor] = None, framing: Optional[dict] = None):
        self.cfg = dict(cfg)
        self.device = torch.device(device)
        self.seed = seed
        self.bf16 = bf16
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.G, self.D, self.G_ema = build_models(self.cfg, self.device, seed)
        if bf16:
            install_autocast_hooks(self.G)  # G_ema samples run in fp32 without autocast
        if channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
            self.G_ema.to(memory_format=torch.channels_last)
        self.optG, self.optD = make_optimizers(self.G, self.D, self.cfg)
        self.sampler = None
        if images is not None and framing:  # framing: FramingSampler's photos, landmarks and options
            self.sampler = FramingSampler(images, self.cfg["batch"], self.cfg["xflip"], seed + 1, **framing)
        elif images is not None:
            self.sampler = Sampler(images, self.cfg["batch"], self.cfg["xflip"], seed + 1)
        self.step = 0
        self.nimg = 0
        self.train_seconds = 0.0
        self.pl_mean = torch.zeros([], device=self.device)
        torch.manual_seed(seed + 2)
        random.seed(seed + 3)
        np.random.seed((seed + 4) % 2 ** 32)
        self.stats = {}

    # -- helpers --
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def run_G(self, z, skip_w_avg=False):
        """Mapping in fp32 (cheap, w_avg stays exact), synthesis under autocast. Style mixing as NVIDIA."""
        G = self.G
        ws = _mapping(G, z, skip_w_avg)
        p = self.cfg["style_mixing"]
        if p > 0:
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, (), device="cpu"))
            if float(torch.rand(())) >= p:
                cutoff = num_ws
            if cutoff < num_ws:
                ws2 = _mapping(G, torch.randn_like(z), True)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        with self.autocast():
            img = G.synthesis(ws, noise_mode="random")
        return img.float().contiguous(memory_format=self.memory_format), ws

    def run_D(self, img):
        with self.autocast():
            return self.D(img).float()

    def _stat(self, name, value):
        s = self.stats.setdefault(name, [0.0, 0])
        s[0] += float(value)
        s[1] += 1

    def pop_stats(self):
        out = {k: v[0] / max(v[1], 1) for k, v in self.stats.items()}
        self.stats = {}
        return out

    # -- one training iteration (NVIDIA phases Gmain, Greg, Dmain, Dreg) --
    def train_step(self):
        cfg, G, D = self.cfg, self.G, self.D
        B = cfg["batch"]
        real = self.sampler.next(self.device, self.memory_format)
        if D.fade_in:
            D.fade_alpha.fill_(fade_alpha(cfg, self.nimg))
            self._stat("fade_alpha", D.fade_alpha)

        # Gmain
        G.requires_grad_(True)
        D.requires_grad_(False)
        z = torch.randn([B, G.z_dim], device=self.device)
        img, _ = self.run_G(z)
        logits = self.run_D(img)
        loss_G = F.softplus(-logits).mean()
        self.optG.zero_grad(set_to_none=True)
        loss_G.backward()
        _sanitize_grads(G)
        self.optG.step()
        self._stat("loss_G", loss_G.detach())
        self._stat("score_fake", logits.detach().mean())

        # Greg: path length (optional)
        if cfg["pl_weight"] > 0 and self.step % cfg["pl_interval"] == 0:
            bs = max(B // cfg["pl_batch_shrink"], 1)
            z = torch.randn([bs, G.z_dim], device=self.device)
            ws = _mapping(G, z)
            ws.requires_grad_(True)  # NVIDIA differentiates wrt the mapped ws (style mixing included)
            with self.autocast():
                gimg = G.synthesis(ws, noise_mode="random").float()
            noise = torch.randn_like(gimg) / math.sqrt(gimg.shape[2] * gimg.shape[3])
            grads = torch.autograd.grad((gimg * noise).sum(), ws, create_graph=True)[0]
            lengths = grads.square().sum(2).mean(1).sqrt()
            pl_mean = self.pl_mean.lerp(lengths.mean().detach(), cfg["pl_decay"])
            self.pl_mean.copy_(pl_mean)
            loss_pl = (lengths - pl_mean).square().mean() * cfg["pl_weight"] * cfg["pl_interval"]
            self.optG.zero_grad(set_to_none=True)
            (loss_pl + gimg[:, 0, 0, 0].sum() * 0).backward()
            _sanitize_grads(G)
            self.optG.step()
            self._stat("loss_pl", loss_pl.detach() / cfg["pl_interval"])

        # Dmain
        G.requires_grad_(False)
        D.requires_grad_(True)
        z = torch.randn([B, G.z_dim], device=self.device)
        with torch.no_grad():
            img, _ = self.run_G(z)
        logits_fake = self.run_D(img)
        logits_real = self.run_D(real)
        loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        self.optD.zero_grad(set_to_none=True)
        loss_D.backward()
        _sanitize_grads(D)
        self.optD.step()
        self._stat("loss_D", loss_D.detach())
        self._stat("score_real", logits_real.detach().mean())

        # Dreg: lazy R1 on reals, fp32 (double backward), weighted by the interval
        if cfg["r1_gamma"] > 0 and self.step % cfg["r1_interval"] == 0:
            x = real.detach().requires_grad_(True)
            logits = self.D(x).float()
            (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
            r1 = grad.square().sum([1, 2, 3])
            loss_r1 = r1.mean() * (cfg["r1_gamma"] / 2) * cfg["r1_interval"]
            self.optD.zero_grad(set_to_none=True)
            (loss_r1 + logits.sum() * 0).backward()
            _sanitize_grads(D)
            self.optD.step()
            self._stat("r1_penalty", r1.detach().mean())
        D.requires_grad_(False)

        # G_ema
        self.nimg += B
        ema_nimg = cfg["ema_kimg"] * 1000
        if cfg["ema_rampup"]:
            ema_nimg = min(ema_nimg, self.nimg * cfg["ema_rampup"])
        beta = 0.5 ** (B / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        self.step += 1

    # -- state --
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
               "data": self.sampler.gen.get_state() if self.sampler else None}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CKPT_FORMAT, "cfg": self.cfg, "seed": self.seed,
            "G_kwargs": self.G.init_kwargs, "D_kwargs": self.D.init_kwargs,
            "G": _cpu_sd(self.G), "D": _cpu_sd(self.D), "G_ema": _cpu_sd(self.G_ema),
            "optG": self.optG.state_dict(), "optD": self.optD.state_dict(),
            "step": self.step, "nimg": self.nimg, "train_seconds": self.train_seconds,
            "pl_mean": self.pl_mean.cpu(), "rng": rng,
        }

    def load_state_dict(self, sd: dict, restore_rng: bool = True):
        self.G.load_state_dict(sd["G"])
        self.D.load_state_dict(sd["D"])
        self.G_ema.load_state_dict(sd["G_ema"])
        if sd.get("optG") is not None:
            self.optG.load_state_dict(sd["optG"])
            self.optD.load_state_dict(sd["optD"])
        self.step = int(sd["step"])
        self.nimg = int(sd["nimg"])
        self.train_seconds = float(sd.get("train_seconds", 0.0))
        if "pl_mean" in sd:
            self.pl_mean.copy_(sd["pl_mean"])
        rng = sd.get("rng")
        if restore_rng and rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            if rng.get("data") is not None and self.sampler is not None:
                self.sampler.gen.set_state(rng["data"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                try:
                    torch.cuda.set_rng_state_all(rng["cuda"])
                except Exception:  # noqa: BLE001 - different GPU count: fresh CUDA RNG is fine
                    pass


def check_grow_resolution(old_cfg: dict, resolution: int) -> None:
    """ValueError unless ``resolution`` is twice the resolution of the run configured by ``old_cfg``."""
    if resolution != 2 * old_cfg["resolution"]:
        raise ValueError(f"--resolution: growing doubles the resolution, so expected {2 * old_cfg['resolution']} "
                         f"for a {old_cfg['resolution']}-px checkpoint, got {resolution}")


def grow_trainer(old_sd: dict, resolution: int, fade_kimg: float, **trainer_kwargs) -> Trainer:
    """A Trainer at ``resolution`` = twice the checkpoint ``old_sd``'s, carrying everything it learned.

    G and G_ema: every old weight and buffer by name (the mapping is the same; num_ws grows by 2), and a
    new top block ``b<resolution>`` whose toRGB starts at zero, so the grown G draws exactly the old
    G's image, upsampled (the skip architecture adds each block's toRGB to the upsampled image below).
    D: a ``fade_in`` Discriminator (python/training/discriminator.py) whose old top fromrgb becomes
    ``fade_fromrgb``: at alpha 0 it is the old D on the 2x2-mean image; alpha ramps to 1 over
    ``fade_kimg``. Adam moments move with their parameters (fresh moments would make the first steps
    sign-sized for every old weight), the step and image counters continue, the data RNG starts anew.
    trainer_kwargs: Trainer's device, bf16, channels_last, images, framing.
    """
    old_cfg = dict(old_sd["cfg"])
    check_grow_resolution(old_cfg, resolution)
    if old_cfg.get("d_fade_in"):
        raise ValueError("the checkpoint is itself grown; resume it at its resolution before growing again")
    seed = int(old_sd.get("seed", 0))
    cfg = dict(old_cfg, resolution=resolution, d_fade_in=True, grow_nimg=int(old_sd["nimg"]),
               fade_kimg=float(fade_kimg))
    old_G, old_D, _ = build_models(old_cfg, "cpu", seed)  # the old parameter names and order (before Trainer seeds)
    trainer = Trainer(cfg, seed=seed, **trainer_kwargs)
    top = f"synthesis.b{resolution}."
    for module, key in ((trainer.G, "G"), (trainer.G_ema, "G_ema")):
        _load_grown(module, old_sd[key], {}, new_prefix=top, what=key)
        with torch.no_grad():
            module.get_submodule(top + "torgb").weight.zero_()
            module.get_submodule(top + "torgb").bias.zero_()
    rename_D = {f"b{old_cfg['resolution']}.fromrgb.{p}": f"fade_fromrgb.{p}" for p in ("weight", "bias")}
    _load_grown(trainer.D, old_sd["D"], rename_D, new_prefix=(f"b{resolution}.", "fade_alpha"), what="D")
    with torch.no_grad():
        trainer.D.fade_alpha.fill_(0.0)
    if old_sd.get("optG") is not None:
        _move_adam_state(old_sd["optG"], old_G, trainer.optG, trainer.G, {})
        _move_adam_state(old_sd["optD"], old_D, trainer.optD, trainer.D, rename_D)
    trainer.step = int(old_sd["step"])
    trainer.nimg = int(old_sd["nimg"])
    trainer.train_seconds = float(old_sd.get("train_seconds", 0.0))
    if "pl_mean" in old_sd:
        trainer.pl_mean.copy_(old_sd["pl_mean"])
    return trainer


def _load_grown(module: torch.nn.Module, old: dict, rename: dict, new_prefix, what: str):
    """Copy ``old`` (renamed) into ``module``; only entries starting with ``new_prefix`` (a str or a tuple
    of them) may be missing from ``old``."""
    sd = module.state_dict()
    moved = {}
    for k, v in old.items():
        k_new = rename.get(k, k)
        if k_new not in sd or sd[k_new].shape != v.shape:
            raise ValueError(f"{what}: checkpoint entry {k} {tuple(v.shape)} has no place in the grown model "
                             f"(found {tuple(sd[k_new].shape) if k_new in sd else 'nothing'} at {k_new})")
        moved[k_new] = v
    fresh = [k for k in sd if k not in moved and not k.startswith(new_prefix)]
    if fresh:
        raise ValueError(f"{what}: the grown model has entries outside {new_prefix}* that the checkpoint lacks: {fresh}")
    sd.update(moved)
    module.load_state_dict(sd)


def _move_adam_state(old_opt_sd: dict, old_module, new_opt, new_module, rename: dict):
    """Re-index an Adam state dict of ``old_module`` (by position) to ``new_module``'s parameters by name."""
    old_names = [rename.get(n, n) for n, _ in old_module.named_parameters()]
    new_index = {n: i for i, (n, _) in enumerate(new_module.named_parameters())}
    sd = new_opt.state_dict()
    sd["state"] = {new_index[old_names[i]]: st for i, st in old_opt_sd["state"].items()}
    new_opt.load_state_dict(sd)


def _cpu_sd(module):
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
            for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Files

def atomic_torch_save(obj, path: str):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def list_checkpoints(out_dir: str):
    return sorted(glob.glob(os.path.join(out_dir, "ckpt-*.pt")))


def load_checkpoint_file(path: str) -> dict:
    """A full checkpoint (.pt), a compact one, or a directory of parts written by --export-parts."""
    if os.path.isdir(path):
        sd = {}
        for part in sorted(glob.glob(os.path.join(path, "part-*.pt"))):
            piece = torch.load(part, map_location="cpu", weights_only=False)
            for k, v in piece.items():
                if isinstance(v, dict) and isinstance(sd.get(k), dict):
                    sd[k].update(v)
                else:
                    sd[k] = v
        if not sd:
            raise FileNotFoundError(f"no part-*.pt files in {path}")
        return sd
    return torch.load(path, map_location="cpu", weights_only=False)


def export_generator(G, path: str):
    """Our safetensors generator format (pulse_ext.checkpoints.save_generator when it exists)."""
    try:
        from pulse_ext.checkpoints import save_generator  # type: ignore
    except ImportError:
        save_generator = None
    if save_generator is not None:
        tmp = path + ".tmp.safetensors"
        try:
            save_generator(G, tmp)
            os.replace(tmp, path)
            return
        except Exception as e:  # noqa: BLE001 - a broken exporter must never stop training
            print(f"warning: pulse_ext.checkpoints.save_generator failed ({e!r}); writing the layout directly",
                  flush=True)
    from safetensors.torch import save_file
    sd = {k: v.detach().to("cpu", torch.float32, memory_format=torch.contiguous_format).contiguous().clone()
          for k, v in G.state_dict().items()}
    meta = {"pulse_ext_config": json.dumps(G.init_kwargs), "format_version": "1"}
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)


def sample_grid(G_ema, path: str, grid: int = SAMPLE_GRID, device="cpu"):
    from PIL import Image
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    z = torch.randn([grid * grid, G_ema.z_dim], generator=gen).to(device)
    with torch.no_grad():
        imgs = []
        for zc in z.split(16):
            imgs.append(G_ema(zc, None, noise_mode="const").float().cpu())
        img = torch.cat(imgs)
    img = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    n, c, h, w = img.shape
    img = img.reshape(grid, grid, c, h, w).permute(0, 3, 1, 4, 2).reshape(grid * h, grid * w, c)
    tmp = path + ".tmp.png"
    Image.fromarray(img.numpy()).save(tmp)
    os.replace(tmp, path)


def save_all(trainer: Trainer, out_dir: str, keep: int = 3, samples: bool = True, log=print,
             milestone_kimg: float = 0):
    t0 = time.time()
    kimg = trainer.nimg // 1000
    path = os.path.join(out_dir, f"ckpt-{kimg:06d}.pt")
    atomic_torch_save(trainer.state_dict(), path)
    if milestone_kimg > 0 and trainer.nimg >= milestone_kimg * 1000:
        # The first checkpoint past each multiple of milestone_kimg is kept for good (a hard link:
        # no extra disk), so a late collapse can always be rolled back. Not used by --resume.
        m = int(trainer.nimg // (milestone_kimg * 1000) * milestone_kimg)
        mpath = os.path.join(out_dir, f"milestone-{m:06d}kimg.pt")
        if not os.path.exists(mpath):
            try:
                os.link(path, mpath)
            except OSError:
                import shutil
                shutil.copyfile(path, mpath)
    for old in list_checkpoints(out_dir)[:-keep]:
        if old != path:
            os.remove(old)
    try:
        G_ema = trainer.G_ema
        if trainer.memory_format == torch.channels_last:
            G_ema = copy.deepcopy(G_ema).to(memory_format=torch.contiguous_format)
        export_generator(G_ema, os.path.join(out_dir, "latest-G_ema.safetensors"))
        if samples:
            sample_grid(trainer.G_ema, os.path.join(out_dir, f"samples-{kimg:06d}.png"), device=trainer.device)
    except Exception as e:  # noqa: BLE001 - the checkpoint is safe; do not die over an export
        log(json.dumps({"event": "export-failed", "error": repr(e)}))
    log(json.dumps({"event": "checkpoint", "path": path, "kimg": trainer.nimg / 1000, "step": trainer.step,
                    "seconds": round(time.time() - t0, 2)}))
    return path


def export_compact(sd: dict, path: str):
    """G, D, G_ema in fp32 + counters + config; no optimizer state (resume re-creates Adam moments)."""
    keep = {k: sd[k] for k in ("format", "cfg", "seed", "G_kwargs", "D_kwargs", "step", "nimg", "train_seconds")
            if k in sd}
    for k in ("G", "D", "G_ema"):
        keep[k] = {n: t.float() if t.is_floating_point() else t for n, t in sd[k].items()}
    keep["compact"] = True
    atomic_torch_save(keep, path)


def export_parts(sd: dict, out_dir: str, max_mib: float = 15.0):
    """Split a checkpoint into part-*.pt files of at most ~max_mib each (for 16 MiB transfer limits)."""
    os.makedirs(out_dir, exist_ok=True)
    limit = int(max_mib * 2 ** 20)

    def nbytes(v):
        if torch.is_tensor(v):
            return v.numel() * v.element_size()
        if isinstance(v, dict):
            return sum(nbytes(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(nbytes(x) for x in v)
        return 64

    parts, small = [], {}
    for key, val in sd.items():
        if key in ("G", "D", "G_ema") and nbytes(val) > limit:
            chunk, size = {}, 0
            for n, t in val.items():
                if chunk and size + nbytes(t) > limit:
                    parts.append({key: chunk})
                    chunk, size = {}, 0
                chunk[n] = t
                size += nbytes(t)
            parts.append({key: chunk})
        elif nbytes(val) > min(2 ** 20, limit // 4):
            parts.append({key: val})  # optimizer states: one part each
        else:
            small[key] = val
    parts.insert(0, small)
    # pack pieces greedily into as few files as fit the limit ($OUT takes at most 8 files)
    packed, cur = [], {}
    for p in parts:
        if cur and nbytes(cur) + nbytes(p) > limit:
            packed.append(cur)
            cur = {}
        for k, v in p.items():
            if k in cur:  # two chunks of one state dict in the same file
                cur[k] = {**cur[k], **v}
            else:
                cur[k] = v
    packed.append(cur)
    parts = packed
    for old in glob.glob(os.path.join(out_dir, "part-*.pt")):
        os.remove(old)
    for i, p in enumerate(parts):
        atomic_torch_save(p, os.path.join(out_dir, f"part-{i:02d}.pt"))
    return len(parts)


# ----------------------------------------------------------------------------------------------
# Main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="prepare_faces.py output dir (its faces.npz), or its carry-train.npz")
    ap.add_argument("--out", required=True, help="checkpoint directory")
    ap.add_argument("--kimg", type=float, default=25000, help="total training length in kimg")
    ap.add_argument("--minutes", type=float, default=0, help="stop cleanly (and checkpoint) before this many minutes")
    ap.add_argument("--ckpt-minutes", type=float, default=10)
    ap.add_argument("--log-seconds", type=float, default=60)
    ap.add_argument("--threads", default="0", type=threads_arg,
                    help="torch CPU threads: N, 0 (torch's default), or auto: every --threads-check-seconds use the "
                         "cores no other process is running on (at least 1), so a shared machine's idle core is used "
                         "and a busy one is left alone (OpenMP waiting on a busy core collapses throughput)")
    ap.add_argument("--threads-check-seconds", type=float, default=20.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or CUDA)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--resume", action="store_true", help="resume from the latest ckpt-*.pt in --out")
    ap.add_argument("--resume-from", help="resume from this checkpoint file / compact file / parts dir")
    ap.add_argument("--grow-from", metavar="CKPT",
                    help="start a run at --resolution (twice CKPT's) from this checkpoint: new top blocks, D faded in "
                         "(with --resume, the latest checkpoint in --out wins once there is one)")
    ap.add_argument("--fade-kimg", type=float, default=60.0,
                    help="with --grow-from: kimg over which D's new top block fades in (default %(default)s)")
    ap.add_argument("--framing-data", metavar="DIR",
                    help="python/prepare_framing.py output: mix in crops of these photos at random framings")
    ap.add_argument("--framing-fraction", type=float, default=0.5,
                    help="share of each batch cut from --framing-data (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=int, default=3, help="ckpt-*.pt files kept (newest)")
    ap.add_argument("--milestone-kimg", type=float, default=100,
                    help="also keep the first checkpoint past every multiple of this many kimg (0 = off)")
    # recipe overrides (when resuming the checkpoint's config wins, except batch/lr/r1-gamma/pl-weight when given)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--channel-base", type=int)
    ap.add_argument("--channel-max", type=int)
    ap.add_argument("--z-dim", type=int)
    ap.add_argument("--map-layers", type=int)
    ap.add_argument("--r1-gamma", type=float)
    ap.add_argument("--pl-weight", type=float)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--conv-clamp", type=float, help="clamp conv outputs to +-X in G and D (0 = off, the default)")
    ap.add_argument("--export-compact", metavar="PATH", help="write a compact checkpoint of the latest one and exit")
    ap.add_argument("--export-parts", metavar="DIR", help="split the latest checkpoint into <=15 MiB parts and exit")
    ap.add_argument("--bench-steps", type=int, default=0, help="time N steps (after 2 warm-up) and exit")
    return ap.parse_args(argv)


def config_from_args(args) -> dict:
    cfg = dict(DEFAULT_CFG)
    for a, k in (("batch", "batch"), ("resolution", "resolution"), ("channel_base", "channel_base"),
                 ("channel_max", "channel_max"), ("r1_gamma", "r1_gamma"), ("pl_weight", "pl_weight"),
                 ("lr", "lr"), ("map_layers", "map_layers")):
        v = getattr(args, a)
        if v is not None:
            cfg[k] = v
    if args.channel_base is not None:
        cfg["d_channel_base"] = args.channel_base
    if args.channel_max is not None:
        cfg["d_channel_max"] = args.channel_max
    if args.conv_clamp is not None:
        cfg["conv_clamp"] = args.conv_clamp if args.conv_clamp > 0 else None
    if args.z_dim is not None:
        cfg["z_dim"] = cfg["w_dim"] = args.z_dim
    cfg["betas"] = list(cfg["betas"])
    return cfg


def threads_arg(text: str) -> str:
    """argparse type of --threads: "auto" or an integer >= 0 (kept as text)."""
    if text == "auto" or (text.isdigit() and int(text) >= 0):
        return text
    raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 0, got {text!r}")


def set_free_threads(log) -> int:
    """--threads auto: torch threads = the cores no other process is running on now (at least 1); logs changes."""
    from pulse_ext.runtime import busy_cores

    threads = max(1, (os.cpu_count() or 1) - busy_cores())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        log(json.dumps({"event": "threads", "threads": threads}))
    return threads


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    if args.export_compact or args.export_parts:
        ckpts = list_checkpoints(args.out)
        src = args.resume_from or (ckpts[-1] if ckpts else None)
        if src is None:
            log(f"no checkpoint in {args.out}")
            return 1
        sd = load_checkpoint_file(src)
        if args.export_compact:
            export_compact(sd, args.export_compact)
            log(f"compact checkpoint {args.export_compact} ({os.path.getsize(args.export_compact) / 2**20:.1f} MiB) from {src}")
        if args.export_parts:
            n = export_parts(sd, args.export_parts)
            log(f"{n} parts in {args.export_parts} from {src}")
        return 0

    if args.threads != "auto" and int(args.threads) > 0:
        torch.set_num_threads(int(args.threads))
    elif args.threads == "auto":
        set_free_threads(log)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    resume_sd, resume_src = None, None
    if args.resume_from:
        resume_src = args.resume_from
    elif args.resume:
        ckpts = list_checkpoints(args.out)
        # newest loadable checkpoint (a torn file, should one ever exist, falls back to the previous one)
        for path in reversed(ckpts):
            try:
                resume_sd = load_checkpoint_file(path)
                resume_src = path
                break
            except Exception as e:  # noqa: BLE001
                log(f"warning: cannot load {path}: {e}")
    if resume_src and resume_sd is None:
        resume_sd = load_checkpoint_file(resume_src)

    grow_sd = None
    if resume_sd is None and args.grow_from:
        grow_sd = load_checkpoint_file(args.grow_from)
        try:  # before loading the data, which takes a while at 128 px
            check_grow_resolution(grow_sd["cfg"], args.resolution)
        except ValueError as e:
            raise SystemExit(f"--grow-from {args.grow_from}: {e}")
        cfg = dict(grow_sd["cfg"], resolution=args.resolution)
        seed = int(grow_sd.get("seed", args.seed))
    elif resume_sd is not None:
        cfg = dict(resume_sd["cfg"])
        for a in ("batch", "lr", "r1_gamma", "pl_weight"):  # the training knobs that may change mid-run
            if getattr(args, a) is not None:
                cfg[a] = getattr(args, a)
        seed = int(resume_sd.get("seed", args.seed))
    else:
        cfg = config_from_args(args)
        seed = args.seed

    images = load_train_images(args.data)
    if images.shape[-1] != cfg["resolution"]:
        raise SystemExit(f"data is {images.shape[-1]} px but the config wants {cfg['resolution']}")
    if device.type == "cuda":
        images = images.to(device)  # 22.5 k x 12 KiB uint8: keep the whole set on the GPU
    framing = None
    if args.framing_data:
        photos, landmarks = load_framing_photos(args.framing_data)
        framing = {"photos": photos.to(device) if device.type == "cuda" else photos, "landmarks": landmarks,
                   "framed_fraction": args.framing_fraction}
        log(json.dumps({"event": "framing_data", "photos": int(photos.shape[0]), "folder": args.framing_data,
                        "framed_fraction": args.framing_fraction}))
    trainer_kwargs = dict(device=device, bf16=args.bf16, channels_last=args.channels_last, images=images,
                          framing=framing)
    if grow_sd is not None:
        try:
            trainer = grow_trainer(grow_sd, args.resolution, args.fade_kimg, **trainer_kwargs)
        except ValueError as e:
            raise SystemExit(f"--grow-from {args.grow_from}: {e}")
        cfg = trainer.cfg
        log(json.dumps({"event": "grow", "from": args.grow_from, "kimg": trainer.nimg / 1000,
                        "resolution": cfg["resolution"], "fade_kimg": cfg["fade_kimg"]}))
        del grow_sd
    else:
        trainer = Trainer(cfg, seed=seed, **trainer_kwargs)
    if resume_sd is not None:
        # Unchanged config => exact continuation; a changed batch/lr/r1_gamma/pl_weight keeps weights and
        # Adam moments and re-derives the Adam hyperparameters (lazy-regularisation correction included).
        trainer.load_state_dict(resume_sd)
        for opt, new in zip((trainer.optG, trainer.optD), make_optimizers(trainer.G, trainer.D, cfg)):
            for g, g_new in zip(opt.param_groups, new.param_groups):
                g["lr"], g["betas"] = g_new["lr"], g_new["betas"]
        log(json.dumps({"event": "resume", "from": resume_src, "kimg": trainer.nimg / 1000, "step": trainer.step,
                        "compact": bool(resume_sd.get("compact"))}))
        del resume_sd

    nG = sum(p.numel() for p in trainer.G.parameters())
    nD = sum(p.numel() for p in trainer.D.parameters())
    log(json.dumps({"event": "start", "cfg": cfg, "params_G": nG, "params_D": nD, "n_train": int(images.shape[0]),
                    "device": str(device), "threads": torch.get_num_threads(), "bf16": args.bf16,
                    "channels_last": args.channels_last, "torch": torch.__version__, "pid": os.getpid()}))

    if args.bench_steps:
        for _ in range(2):
            trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(args.bench_steps):
            trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        kimg_h = args.bench_steps * cfg["batch"] / 1000 / (dt / 3600)
        log(json.dumps({"event": "bench", "steps": args.bench_steps, "sec_per_step": dt / args.bench_steps,
                        "kimg_per_h": round(kimg_h, 1), **{k: round(v, 4) for k, v in trainer.pop_stats().items()}}))
        return 0

    stop = {"flag": False, "signal": None}

    def on_signal(signum, frame):
        stop["flag"] = True
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log_path = os.path.join(args.out, "log.jsonl")
    t_start = time.time()
    deadline = t_start + args.minutes * 60 if args.minutes > 0 else None
    last_ckpt = t_start
    last_log = t_start
    log_nimg = trainer.nimg
    step_times = []
    ckpt_seconds = 15.0
    target_nimg = int(args.kimg * 1000)
    if trainer.step == 0:
        sample_grid(trainer.G_ema, os.path.join(args.out, "samples-init.png"), device=device)

    reason = "kimg"
    last_threads_check = t_start
    while trainer.nimg < target_nimg:
        if stop["flag"]:
            reason = f"signal {stop['signal']}"
            break
        now = time.time()
        avg_step = sum(step_times[-20:]) / max(len(step_times[-20:]), 1) if step_times else 5.0
        if deadline is not None and now + 2 * avg_step + ckpt_seconds + 5 > deadline:
            reason = "minutes"
            break
        t0 = time.time()
        trainer.train_step()
        dt = time.time() - t0
        step_times.append(dt)
        trainer.train_seconds += dt
        now = time.time()
        if now - last_log >= args.log_seconds:
            d_nimg = trainer.nimg - log_nimg
            rec = {"kimg": round(trainer.nimg / 1000, 3), "step": trainer.step,
                   "sec_per_kimg": round((now - last_log) / max(d_nimg / 1000, 1e-9), 2),
                   "kimg_per_h": round(d_nimg / 1000 / ((now - last_log) / 3600), 2),
                   "elapsed_min": round((now - t_start) / 60, 2),
                   **{k: round(v, 5) for k, v in trainer.pop_stats().items()}}
            line = json.dumps(rec)
            log(line)
            with open(log_path, "a") as f:
                f.write(line + "\n")
            last_log, log_nimg = now, trainer.nimg
        if args.threads == "auto" and device.type == "cpu" and now - last_threads_check >= args.threads_check_seconds:
            set_free_threads(log)
            last_threads_check = time.time()
        if now - last_ckpt >= args.ckpt_minutes * 60:
            t1 = time.time()
            save_all(trainer, args.out, keep=args.keep, log=log, milestone_kimg=args.milestone_kimg)
            ckpt_seconds = max(ckpt_seconds, time.time() - t1)
            last_ckpt = time.time()

    save_all(trainer, args.out, keep=args.keep, log=log, milestone_kimg=args.milestone_kimg)
    log(json.dumps({"event": "exit", "reason": reason, "kimg": trainer.nimg / 1000, "step": trainer.step,
                    "minutes": round((time.time() - t_start) / 60, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

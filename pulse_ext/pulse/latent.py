"""PULSE's latent parametrisation: Gaussian rows on spheres, mapped to W through the mapping statistics.

PULSE searches over ``latent`` [N, L, D] whose rows stay on the sphere they started on (radius
about sqrt(D)) and feeds the generator w = lrelu(latent * std + mean, 0.2), where (mean, std) is a
Gaussian fitted to lrelu(mapping(z), 5) over many random z. lrelu(., 5) undoes the mapping network's
final leaky ReLU (slope 0.2), so the fit describes the pre-activation, which is close to Gaussian.

NVIDIA's StyleGAN2 mapping ends with lrelu(x, 0.2) * sqrt(2). Leaky ReLU is positively homogeneous,
lrelu(c * x, s) = c * lrelu(x, s) for c > 0, so lrelu(sqrt(2) * lrelu(x, 0.2), 5) = sqrt(2) * x and
lrelu(sqrt(2) * x, 0.2) = w: the inversion still holds, the fitted Gaussian is just sqrt(2) wider.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

SPHERE_EPS = 1e-9


@dataclass
class LatentStats:
    """Per-dimension Gaussian fit (mean [D], std [D]) of lrelu(mapping(z), 5)."""
    mean: torch.Tensor
    std: torch.Tensor

    def to(self, device=None, dtype=None) -> "LatentStats":
        return LatentStats(self.mean.to(device=device, dtype=dtype), self.std.to(device=device, dtype=dtype))


# Fitted statistics in float64 on the CPU, keyed by (mapping_fingerprint, num_samples, seed): the same
# weights loaded again (every ``upscale()`` call loads its generator) reuse the fit, and weights that
# change get a new fingerprint, so a stale fit is never used. A few hundred bytes per entry.
_STATS_CACHE: "OrderedDict[Tuple[str, int, int], LatentStats]" = OrderedDict()
_STATS_CACHE_SIZE = 64


def mapping_fingerprint(generator) -> str:
    """sha256 (hex) of everything ``fit_latent_stats`` depends on: the mapping network's configuration and
    its weights (as float32, w_avg excluded: PULSE maps without truncation). Same weights on another
    device or in another float dtype give the same fingerprint."""
    digest = hashlib.sha256()
    config = {"z_dim": generator.z_dim, "c_dim": getattr(generator, "c_dim", 0), "w_dim": generator.w_dim,
              "mapping_kwargs": getattr(generator, "init_kwargs", {}).get("mapping_kwargs", {})}
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(generator.mapping.state_dict().items()):
        if name == "w_avg":
            continue
        values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}:{list(values.shape)};".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def _remember(key: Tuple[str, int, int], stats: LatentStats) -> None:
    _STATS_CACHE[key] = stats
    _STATS_CACHE.move_to_end(key)
    while len(_STATS_CACHE) > _STATS_CACHE_SIZE:
        _STATS_CACHE.popitem(last=False)


@torch.no_grad()
def fit_latent_stats(generator, num_samples: int = 100_000, seed: int = 0, batch_size: int = 10_000,
                     cache: bool = True) -> LatentStats:
    """Fit PULSE's Gaussian to lrelu(G.mapping(z)[:, 0], 5) over ``num_samples`` z ~ N(0, I).

    The original used 10^6 samples; 10^5 gives the per-dimension mean and std to about 0.3 % and
    costs a tenth. Deterministic for ``seed`` (z is drawn on the CPU). Returns mean/std [w_dim] on the
    generator's device and in its dtype. With ``cache``, a fit is kept per (mapping weights, num_samples,
    seed) for the life of the process, and fits stored in a pulse_ext checkpoint are used as they are
    (``latent_stats_records`` / ``load_latent_stats_records``), so loading the same file again costs nothing.
    """
    if getattr(generator, "c_dim", 0):
        raise ValueError(f"PULSE needs an unconditional generator, this one has c_dim={generator.c_dim}")
    param = next(generator.parameters())
    key = (mapping_fingerprint(generator), int(num_samples), int(seed)) if cache else None
    if key is not None and key in _STATS_CACHE:
        _STATS_CACHE.move_to_end(key)
        return _STATS_CACHE[key].to(device=param.device, dtype=param.dtype)
    rng = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(generator.w_dim, dtype=torch.float64, device=param.device)
    total_sq = torch.zeros_like(total)
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        z = torch.randn(n, generator.z_dim, generator=rng).to(device=param.device, dtype=param.dtype)
        ws = generator.mapping(z, None, skip_w_avg_update=True)
        x = F.leaky_relu(ws[:, 0].double(), negative_slope=5.0)
        total += x.sum(0)
        total_sq += x.pow(2).sum(0)
        done += n
    mean = total / num_samples
    var = (total_sq - num_samples * mean.pow(2)) / max(num_samples - 1, 1)  # unbiased, as torch.std
    stats = LatentStats(mean.cpu(), var.clamp(min=0).sqrt().cpu())
    if key is not None:
        _remember(key, stats)
    return stats.to(device=param.device, dtype=param.dtype)


def latent_stats_records(generator) -> List[dict]:
    """The cached fits for ``generator``'s current weights, as JSON-serialisable records
    ({fingerprint, num_samples, seed, mean, std}; float64 values, exact through JSON). Empty if none."""
    fingerprint = mapping_fingerprint(generator)
    return [{"fingerprint": fingerprint, "num_samples": n, "seed": seed,
             "mean": stats.mean.double().tolist(), "std": stats.std.double().tolist()}
            for (fp, n, seed), stats in _STATS_CACHE.items() if fp == fingerprint]


def load_latent_stats_records(generator, records: List[dict]) -> int:
    """Put fits from ``latent_stats_records`` into the cache, keeping only those whose fingerprint
    matches ``generator``'s mapping weights (others describe different weights). Returns how many."""
    fingerprint = mapping_fingerprint(generator)
    used = 0
    for record in records:
        if record.get("fingerprint") != fingerprint:
            continue
        mean = torch.tensor(record["mean"], dtype=torch.float64)
        std = torch.tensor(record["std"], dtype=torch.float64)
        if mean.shape != (generator.w_dim,) or std.shape != (generator.w_dim,):
            continue
        _remember((fingerprint, int(record["num_samples"]), int(record["seed"])), LatentStats(mean, std))
        used += 1
    return used


def latent_to_w(latent: torch.Tensor, stats: LatentStats, num_ws: int) -> torch.Tensor:
    """latent [N, L, D] (L = num_ws, or 1 for a tiled latent) -> w = lrelu(latent * std + mean, 0.2), [N, num_ws, D]."""
    w = F.leaky_relu(latent * stats.std + stats.mean, negative_slope=0.2)
    return w.expand(-1, num_ws, -1) if w.shape[1] == 1 else w


def sphere_radius(x: torch.Tensor) -> torch.Tensor:
    """sqrt(sum of squares over dims 2.. + 1e-9), keepdim: each [i, j] slice is one point on its sphere."""
    return (x.pow(2).sum(tuple(range(2, x.dim())), keepdim=True) + SPHERE_EPS).sqrt()


def project_to_sphere(x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """x / sphere_radius(x) * radius, the original SphericalOptimizer's re-projection."""
    return x / sphere_radius(x) * radius


def restart_seed(seed: int, image_index: int, restart_index: int) -> int:
    """The seed of one restart: a 63-bit hash of (seed, image, restart), so restarts are independent streams."""
    state = np.random.SeedSequence([int(seed) & (2 ** 63 - 1), int(image_index), int(restart_index)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))

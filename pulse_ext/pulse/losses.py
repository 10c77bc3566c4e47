"""PULSE's loss terms: the loss-string parser, GEOCROSS and the downscalers behind the L2/L1 terms.

Every term is computed **per restart** (shape [N]); the search sums them over restarts, so each
restart's gradient is exactly the gradient it would get alone.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F

from pulse_ext import ops
from pulse_ext.ops.reference import cached_constant

LOSS_TERMS = ("L2", "L1", "GEOCROSS")
DOWNSCALERS = ("area", "bicubic")

_NUMBER = r"[+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(rf"^\s*(?:({_NUMBER})\s*\*\s*)?([A-Za-z0-9_]+)\s*$")


@dataclass(frozen=True)
class LossTerm:
    weight: float
    name: str


def parse_loss(spec: str) -> List[LossTerm]:
    """Parse a loss string such as ``"100*L2+0.05*GEOCROSS"`` into weighted terms.

    Grammar: terms joined by ``+``; each is ``[weight*]NAME`` with NAME in L2, L1, GEOCROSS (case
    insensitive) and weight a non-negative number (default 1). Each name may appear once.
    Raises ValueError naming the offending term.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"loss must be a non-empty string like '100*L2+0.05*GEOCROSS', got {spec!r}")
    terms: List[LossTerm] = []
    for raw in re.split(r"\+(?![0-9])|(?<![eE])\+", spec):
        match = _TERM.match(raw)
        if match is None:
            raise ValueError(f"loss {spec!r}: cannot parse term {raw.strip()!r}; expected 'weight*NAME' "
                             f"with NAME in {LOSS_TERMS}")
        weight = 1.0 if match.group(1) is None else float(match.group(1))
        name = match.group(2).upper()
        if name not in LOSS_TERMS:
            raise ValueError(f"loss {spec!r}: unknown term {match.group(2)!r}; valid terms are {LOSS_TERMS}")
        if not math.isfinite(weight):
            raise ValueError(f"loss {spec!r}: the weight of {name} must be finite, got {weight}")
        if any(t.name == name for t in terms):
            raise ValueError(f"loss {spec!r}: term {name} appears more than once")
        terms.append(LossTerm(weight, name))
    return terms


def geocross(w: torch.Tensor) -> torch.Tensor:
    """PULSE's GEOCROSS regulariser per restart: w [N, L, D] -> [N].

    d_ij = 2 * atan2(|w_i - w_j|, |w_i + w_j|) (the angle between rows i and j when they have equal
    norms; 1e-9 is added under each square root as in the original), and
    geocross = mean_ij(d_ij^2) * D / 8 (the original's scaling with D = 512, kept so the published loss
    weights still apply). L = 1 (a tiled latent) gives 0.

    The squared distances come from the Gram matrix G = w w^T: |w_i -+ w_j|^2 = G_ii + G_jj -+ 2 G_ij,
    one [N, L, L] product instead of the original's [N, L, L, D] differences (at R = 8, L = 10 that
    was 1 ms of a 20 ms search step, forward and backward). On the diagonal both forms give exactly
    0 + 1e-9; elsewhere they agree to rounding (float64: 3e-14, tested against the literal form).
    """
    if w.dim() != 3:
        raise ValueError(f"geocross: w must be [N, L, D], got {list(w.shape)}")
    n, num_rows, dim = w.shape
    if num_rows == 1:
        return w.new_zeros(n)
    gram = torch.bmm(w, w.transpose(1, 2))  # [N, L, L]
    norms = gram.diagonal(dim1=1, dim2=2)  # [N, L]: |w_i|^2
    norm_sums = norms.unsqueeze(1) + norms.unsqueeze(2)
    # clamp: rounding may take a squared distance of two near-equal rows a little below zero
    a = ((norm_sums - 2 * gram).clamp_min(0) + 1e-9).sqrt()
    b = ((norm_sums + 2 * gram).clamp_min(0) + 1e-9).sqrt()
    d = 2 * torch.atan2(a, b)
    return d.pow(2).mean((1, 2)) * (dim / 8.0)


def _bicubic_weight(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x <= 1.0:
        return (a + 2.0) * x ** 3 - (a + 3.0) * x ** 2 + 1.0
    if x < 2.0:
        return a * x ** 3 - 5.0 * a * x ** 2 + 8.0 * a * x - 4.0 * a
    return 0.0


def bicubic_kernel(factor: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The original PULSE's normalised 1-D bicubic (a = -0.5) downscaling kernel, 4 * factor taps."""
    return _shared_bicubic_kernel(factor, dtype, device).clone()


@cached_constant
def _shared_bicubic_kernel(factor: int, dtype, device) -> torch.Tensor:
    """bicubic_kernel, one cached tensor per arguments, for the loss to read (never modify it)."""
    size = 4 * factor
    taps = [_bicubic_weight((i - math.floor(size / 2) + 0.5) / factor) for i in range(size)]
    k = torch.tensor(taps, dtype=torch.float64)
    return (k / k.sum()).to(dtype=dtype, device=device)


def bicubic_downscale(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Downscale [N, C, H, W] by ``factor`` as the original PULSE's ``BicubicDownSample`` does.

    Separable 4*factor-tap bicubic filter, stride ``factor``, reflect padding of (3*factor)//2 before
    and the rest after, rows first then columns. H and W must be multiples of ``factor``.
    """
    if img.dim() != 4:
        raise ValueError(f"bicubic_downscale: img must be [N, C, H, W], got {list(img.shape)}")
    n, c, h, w = img.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"bicubic_downscale: factor {factor} must divide the image size {h}x{w}")
    if factor == 1:
        return img
    k = _shared_bicubic_kernel(factor, img.dtype, img.device)
    size = k.numel()
    pad = size - factor
    before, after = pad // 2, pad - pad // 2
    if before >= h or before >= w:
        raise ValueError(f"bicubic_downscale: reflect padding {before} needs an image larger than {h}x{w}")
    x = F.pad(img, (0, 0, before, after), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, size, 1).expand(c, 1, size, 1), stride=(factor, 1), groups=c)
    x = F.pad(x, (before, after, 0, 0), mode="reflect")
    return F.conv2d(x, k.view(1, 1, 1, size).expand(c, 1, 1, size), stride=(1, factor), groups=c)


def area_weights(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] float64 matrix of exact area averaging from n_in to n_out <= n_in pixels.

    Output pixel i covers [i, i + 1) * n_in / n_out in input coordinates; input pixel j's weight is the
    length of its overlap with that interval divided by the interval's length, so each row sums to 1
    and an integer factor gives plain block means.
    """
    if not 1 <= n_out <= n_in:
        raise ValueError(f"area_weights: need 1 <= n_out <= n_in, got n_in={n_in}, n_out={n_out}")
    edges = torch.arange(n_out + 1, dtype=torch.float64) * n_in / n_out  # integer products first: exact edges
    left = torch.arange(n_in, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:, None], left[None, :] + 1) - torch.maximum(edges[:-1, None], left[None, :]))
    return overlap.clamp(min=0) * (n_out / n_in)


@cached_constant
def _shared_area_weights(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """area_weights, one cached tensor per arguments, for the loss to read (never modify it)."""
    return area_weights(n_in, n_out).to(dtype=dtype, device=device)


def area_resample(img: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Exact area-averaging downscale of [N, C, H, W] to [N, C, h, w] for any h <= H, w <= W.

    Two small matrix products (rows, then columns) with ``area_weights``; for factors that divide
    the image it equals the block mean ``ops.reference.area_downscale``. Differentiable.
    """
    if img.dim() != 4:
        raise ValueError(f"area_resample: img must be [N, C, H, W], got {list(img.shape)}")
    hh, ww = img.shape[-2:]
    h, w = size
    rows = _shared_area_weights(hh, h, img.dtype, img.device)
    cols = _shared_area_weights(ww, w, img.dtype, img.device)
    return torch.matmul(torch.matmul(rows, img), cols.t())


def _divides(big, small) -> bool:
    (hh, ww), (h, w) = tuple(big), tuple(small)
    return hh % h == 0 and ww % w == 0


def target_size_problem(image_size, target_size, method: str = "area"):
    """None when a target (h, w) can be compared with images of image_size (H, W) by ``method``, else
    the reason. "area": any 1 <= h <= H, 1 <= w <= W (factors that divide use the fused block-mean
    kernel, others exact area averaging); "bicubic": one integer factor for both sides (the original's)."""
    (hh, ww), (h, w) = tuple(image_size), tuple(target_size)
    if method not in DOWNSCALERS:
        return f"downscale must be one of {DOWNSCALERS}, got {method!r}"
    if h < 1 or w < 1:
        return f"the input must be at least 1x1, got {w}x{h}"
    if h > hh or w > ww:
        return f"the input ({w}x{h}) must not be larger than the generator's images ({ww}x{hh})"
    if method == "bicubic" and (hh % h or ww % w or hh // h != ww // w):
        return (f"bicubic downscaling needs one integer factor for both sides ({ww}x{hh} -> {w}x{h} has none); "
                f"area downscaling takes any size")
    if method == "bicubic" and min(h, w) < 2 and hh > 1:
        # its reflect padding (1.5 x factor pixels) must be smaller than the image
        return f"bicubic downscaling needs an input of at least 2x2, got {w}x{h}; area downscaling takes any size"
    return None


def downscale(img: torch.Tensor, size: Tuple[int, int], method: str = "area") -> torch.Tensor:
    """Downscale [N, C, H, W] to ``size`` (h, w) with the search's downscaler (for display and checks)."""
    h, w = size
    if method == "area":
        if _divides(img.shape[-2:], (h, w)):
            return ops.reference.area_downscale(img, (h, w))
        return area_resample(img, (h, w))
    if method == "bicubic":
        return bicubic_downscale(img, _square_factor(img.shape[-2:], (h, w)))
    raise ValueError(f"downscale: method must be one of {DOWNSCALERS}, got {method!r}")


def _square_factor(big, small) -> int:
    problem = target_size_problem(big, small, "bicubic")
    if problem:
        raise ValueError(problem)
    return big[0] // small[0]


def downscale_losses(img: torch.Tensor, target: torch.Tensor, method: str = "area",
                     impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (L2, L1) = (mean squared, mean absolute) error of downscaled ``img`` vs ``target``.

    img [N, C, H, W]; target [1 or N, C, h, w]; returns two [N] tensors. "area": the fused
    ``pulse_ext.ops.area_downscale_loss`` (block means) when h divides H and w divides W, else exact
    area averaging (``area_resample``, plain PyTorch); "bicubic" is the original PULSE's filter (plain
    PyTorch, integer factors).
    """
    if method == "area":
        if _divides(img.shape[-2:], target.shape[-2:]):
            return ops.area_downscale_loss(img, target, impl=impl)
        diff = area_resample(img, target.shape[-2:]) - target
        return diff.square().mean((1, 2, 3)), diff.abs().mean((1, 2, 3))
    if method == "bicubic":
        diff = bicubic_downscale(img, _square_factor(img.shape[-2:], target.shape[-2:])) - target
        return diff.pow(2).mean((1, 2, 3)), diff.abs().mean((1, 2, 3))
    raise ValueError(f"downscale must be one of {DOWNSCALERS}, got {method!r}")


def per_restart_loss(terms: List[LossTerm], l2: torch.Tensor, l1: torch.Tensor, w: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """The weighted loss of each restart, [N], with the original's conventions.

    L2 = max(l2, eps); L1 = 10 * max(l1, eps) (the original's factor 10, kept so its weights apply);
    GEOCROSS = ``geocross(w)``. The clamp stops the data terms from pulling once they are below eps.
    """
    total = l2.new_zeros(l2.shape)
    for term in terms:
        if term.name == "L2":
            value = l2.clamp(min=eps)
        elif term.name == "L1":
            value = 10 * l1.clamp(min=eps)
        else:
            value = geocross(w)
        total = total + term.weight * value
    return total

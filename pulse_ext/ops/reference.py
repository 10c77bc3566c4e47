"""Plain-PyTorch reference twins of the fused ops.

These are the oracle for every test and the fallback wherever the compiled extension cannot run
(unsupported dtype, device without kernels, extension not built). They follow NVIDIA's StyleGAN2
(stylegan2-ada-pytorch ``training/networks.py`` / ``torch_utils/ops``) literally, favouring clarity
over speed, and support autograd wrt every input (weights included) and float64.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

DEMOD_EPS = 1e-8

# The [1, 3, 3, 1] FIR filter StyleGAN2 uses for every 2x upsampling, as NVIDIA's ``setup_filter``
# builds it: outer product, normalised to sum 1.
_FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def fir_filter_2d(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The normalised 4x4 [1,3,3,1] (x) [1,3,3,1] / 64 filter, shape [4, 4] (a new tensor).

    device None is the current default device, resolved before the cache is asked: a filter built
    under ``with torch.device("meta")`` (e.g. counting a model's parameters) must not be served later
    to a generator built on the CPU."""
    return _shared_fir_filter_2d(dtype, torch.get_default_device() if device is None else torch.device(device)).clone()


def cached_constant(build):
    """Decorator: keep the tensor ``build(*args)`` returns, one per positional arguments, for callers
    that only read it (``.cache_clear()`` empties the cache).

    A CUDA graph cannot capture the host-to-device copy that building a constant takes, so the filters
    and weights the ops and losses use are built once, on first use, and reused. They are built outside
    inference mode: a cached inference tensor could not be saved for any later backward.
    """
    @functools.lru_cache(maxsize=None)
    @functools.wraps(build)
    def cached(*args):
        with torch.inference_mode(False):
            return build(*args)

    return cached


@cached_constant
def _shared_fir_filter_2d(dtype: torch.dtype, device) -> torch.Tensor:
    """fir_filter_2d, one cached tensor per dtype and device, for the ops to read (never modify it)."""
    taps = torch.tensor(_FIR_TAPS, dtype=dtype, device=device)
    f = torch.outer(taps, taps)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 1, pad: Tuple[int, int, int, int] = (0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad, then FIR-filter, as NVIDIA's ``upfirdn2d`` (no downsampling).

    x: [N, C, H, W]; f: [fh, fw]; pad = (x0, x1, y0, y1), negative values crop.
    Returns [N, C, H*up + y0 + y1 - fh + 1, W*up + x0 + x1 - fw + 1].
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # The filter is scaled by gain ** (ndim / 2) = gain for a 2-D filter, and flipped to turn
    # correlation into convolution (a no-op for the symmetric StyleGAN filter, kept for exactness).
    f = (f * gain).to(x.dtype).flip([0, 1])
    weight = f[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, groups=c)


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling of the 'skip' image path: NVIDIA's ``upfirdn2d.upsample2d`` with [1,3,3,1].

    x: [N, C, H, W] -> [N, C, 2H, 2W].
    """
    f = _shared_fir_filter_2d(x.dtype, x.device)
    # upsample2d pads (fw + up - 1) // 2 = 2 before and (fw - up) // 2 = 1 after, gain up**2 = 4.
    return upfirdn2d(x, f, up=2, pad=(2, 1, 2, 1), gain=4.0)


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """d[n, o] = rsqrt(sum_{i,kh,kw} (weight[o,i,kh,kw] * styles[n,i])^2 + 1e-8).

    weight: [Cout, Cin, k, k]; styles: [N, Cin] -> [N, Cout].
    """
    w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)
    return (w.square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool = True,
                     up: int = 1, padding: Optional[int] = None,
                     conv_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """StyleGAN2 modulated convolution in the shared-weight form.

    y = d[n, o] * conv(x * s[n, :], weight), with d the demodulation coefficients (when demodulate).
    up=2 is NVIDIA's ``conv2d_resample``: a stride-2 transposed convolution at the input resolution
    followed by the [1,3,3,1] FIR filter (gain 4) with padding 1 on each side. With ``conv_dtype``
    the convolution alone runs in that dtype (operands cast down, result cast back to x's dtype).

    x: [N, Cin, H, W]; weight: [Cout, Cin, k, k]; styles: [N, Cin]
    -> [N, Cout, H*up, W*up] (padding defaults to k // 2, the only padding supported with up=2).
    """
    k = weight.shape[-1]
    if padding is None:
        padding = k // 2
    xs = x * styles.to(x.dtype).reshape(x.shape[0], -1, 1, 1)
    conv_dtype = conv_dtype or x.dtype
    if up == 1:
        y = F.conv2d(xs.to(conv_dtype), weight.to(conv_dtype), padding=padding).to(x.dtype)
    elif up == 2:
        y = F.conv_transpose2d(xs.to(conv_dtype), weight.to(conv_dtype).transpose(0, 1), stride=2).to(x.dtype)
        # conv2d_resample: p0 = padding + (fw + up - 1)//2 - (k - 1), p1 = padding + (fw - up)//2 - (k - up)
        p0 = padding + 2 - (k - 1)
        p1 = padding + 1 - (k - 2)
        y = upfirdn2d(y, _shared_fir_filter_2d(x.dtype, x.device), pad=(p0, p1, p0, p1), gain=4.0)
    else:
        raise ValueError(f"up must be 1 or 2, got {up}")
    if demodulate:
        d = demodulation_coefficients(weight, styles)
        y = y * d.to(y.dtype).reshape(y.shape[0], -1, 1, 1)
    return y


def noise_bias_act(x: torch.Tensor, noise: Optional[torch.Tensor] = None,
                   noise_strength: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, *,
                   demod: Optional[torch.Tensor] = None, gain: float = math.sqrt(2.0),
                   clamp: Optional[float] = None, slope: float = 0.2) -> torch.Tensor:
    """y = clamp(lrelu(x * d + noise_strength * noise + bias, slope) * gain, -clamp, clamp).

    x: [N, C, H, W]; demod: [N, C] or None; noise: [N or 1, 1, H, W] or None; noise_strength: scalar
    tensor (or float) or None (= 1); bias: [C] or None. slope=1 gives a linear activation.
    """
    # Computed as lrelu(x * (d g) + b g + noise * (strength g)) (leaky ReLU is positively homogeneous and
    # ops.noise_bias_act checks g > 0): three passes over the activation instead of six, forward and
    # backward -- this op was the largest elementwise cost of a bf16 training step at 128 px (78 -> 43 ms
    # at [32, 16, 128, 128]).
    y = x
    if demod is not None:
        d = demod.reshape(demod.shape[0], -1, 1, 1) * gain
        y = torch.addcmul(bias.reshape(1, -1, 1, 1) * gain, y, d) if bias is not None else y * d
    elif bias is not None:
        y = torch.add(bias.reshape(1, -1, 1, 1) * gain, y, alpha=gain)
    elif gain != 1.0:
        y = y * gain
    if noise is not None:
        y = y + noise * (gain if noise_strength is None else noise_strength * gain)
    if slope != 1.0:
        y = F.leaky_relu(y, slope)
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


def area_downscale(img: torch.Tensor, out_size: Tuple[int, int]) -> torch.Tensor:
    """Mean over each (H/h) x (W/w) block. img: [N, C, H, W] -> [N, C, h, w]."""
    n, c, hh, ww = img.shape
    h, w = out_size
    return img.reshape(n, c, h, hh // h, w, ww // w).mean(dim=(3, 5))


def area_downscale_loss(img: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (mean squared error, mean absolute error) between area-downscaled img and target.

    img: [N, C, H, W]; target: [1 or N, C, h, w] with H % h == 0 and W % w == 0 -> (l2 [N], l1 [N]).
    """
    diff = area_downscale(img, target.shape[-2:]) - target
    return diff.square().mean(dim=(1, 2, 3)), diff.abs().mean(dim=(1, 2, 3))

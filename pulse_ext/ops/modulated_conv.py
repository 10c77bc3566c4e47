"""StyleGAN2 modulated convolution (shared-weight form) with a data-gradient-only backward."""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from pulse_ext.ops import reference
from pulse_ext.ops._dispatch import (check, check_conv_dtype, is_cpu_channels_last, register_fake as _register_fake,
                                     use_fused)


def demodulation_weight_sums(weight: torch.Tensor) -> torch.Tensor:
    """sum_{kh,kw} weight[o, i, kh, kw]^2 as [Cin, Cout]: the weight's part of the demodulation
    coefficients (it depends on the weight alone, so a caller with frozen weights may keep it).
    weight: [Cout, Cin, k, k] -> [Cin, Cout] (a transposed view), differentiable."""
    return weight.square().sum(dim=(2, 3)).t()


@reference.cached_constant
def _demod_eps(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """reference.DEMOD_EPS as a 0-dim tensor (addmm's input), one per dtype and device."""
    return torch.full((), reference.DEMOD_EPS, dtype=dtype, device=device)


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor,
                              weight_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d[n, o] = rsqrt(sum_i styles[n, i]^2 * sum_{kh,kw} weight[o, i, kh, kw]^2 + 1e-8).

    Algebraically NVIDIA's sum over (w * s)^2, computed as one small [N, Cin] x [Cin, Cout] product
    instead of materialising N copies of the weight. weight: [Cout, Cin, k, k]; styles: [N, Cin]
    -> [N, Cout]; differentiable (plain torch ops). weight_sums: ``demodulation_weight_sums(weight)``
    in styles' dtype when the caller has it already (weight is then not read).
    """
    if weight_sums is None:
        weight_sums = demodulation_weight_sums(weight.to(styles.dtype))
    return torch.addmm(_demod_eps(styles.dtype, styles.device), styles.square(), weight_sums).rsqrt()


def check_upsampling_kernel(k: int, up: int, padding: int) -> None:
    """Refuses an up=2 layer whose kernel is not 3x3 with padding 1, as csrc/modulated_conv.cpp does.

    The fused FIR stage pads the transposed convolution's [2H+1, 2W+1] output by 1 per side, which is
    NVIDIA's conv2d_resample padding for k=3 only; every StyleGAN2 checkpoint upsamples with 3x3 kernels.
    """
    if up == 2:
        check(k == 3 and padding == 1,
              lambda: f"modulated_conv2d: up=2 needs a 3x3 kernel and padding=1, got k={k}, padding={padding}")


def _validate(x, weight, styles, up, padding) -> int:
    check(x.dim() == 4, lambda: f"modulated_conv2d: x must be [N, Cin, H, W], got shape {list(x.shape)}")
    check(weight.dim() == 4 and weight.shape[2] == weight.shape[3],
          lambda: f"modulated_conv2d: weight must be [Cout, Cin, k, k], got shape {list(weight.shape)}")
    n, cin = x.shape[:2]
    check(weight.shape[1] == cin,
          lambda: f"modulated_conv2d: weight must have Cin={cin} input channels, got {list(weight.shape)}")
    check(styles.shape == (n, cin),
          lambda: f"modulated_conv2d: styles must be [N, Cin]={[n, cin]}, got {list(styles.shape)}")
    check(up in (1, 2), lambda: f"modulated_conv2d: up must be 1 or 2, got {up}")
    k = weight.shape[-1]
    if padding is None:
        padding = k // 2
    check_upsampling_kernel(k, up, padding)
    check(padding >= 0, lambda: f"modulated_conv2d: padding must be >= 0, got {padding}")
    for name, t in (("weight", weight), ("styles", styles)):
        check(t.device == x.device, lambda: f"modulated_conv2d: {name} is on {t.device} but x is on {x.device}")
        check(t.dtype == x.dtype, lambda: f"modulated_conv2d: {name} has dtype {t.dtype} but x has {x.dtype}")
    return padding


def _output_size(x, weight, up, padding):
    k = weight.shape[-1]
    h, w = x.shape[-2:]
    if up == 2:
        return 2 * h, 2 * w
    return h + 2 * padding - k + 1, w + 2 * padding - k + 1


def _cpu_output_is_channels_last(x, weight, up, padding):
    """Mirrors csrc/modulated_conv.cpp: on the CPU the convolution works channels-last, except a 1x1
    layer on an NCHW input."""
    if x.device.type != "cpu" or os.environ.get("PULSE_EXT_CPU_LAYOUT", "nhwc") == "nchw":
        return False
    pointwise = weight.shape[-1] == 1 and up == 1 and padding == 0
    return not pointwise or is_cpu_channels_last(x)


def library_weight_format(x: torch.Tensor, weight: torch.Tensor, up: int, padding: int,
                          impl: str = "auto") -> torch.memory_format:
    """The memory format in which ``modulated_conv2d(x, weight, ..., impl=impl)`` hands the weight to
    the library convolution (oneDNN / cuDNN): the layout of x there. The library copies a weight laid
    out otherwise on every call, so a caller keeping a frozen weight (the up=2 layers' transposed
    [Cin, Cout] view) lays it out so. The fused CPU path runs channels-last (csrc/modulated_conv.cpp),
    the fused CUDA path NCHW, the reference path in x's own layout."""
    if use_fused(impl, "modulated_conv2d", x):
        fused_channels_last = _cpu_output_is_channels_last(x, weight, up, padding)
        return torch.channels_last if fused_channels_last else torch.contiguous_format
    x_channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if x_channels_last else torch.contiguous_format


@_register_fake("pulse_ext::modulated_conv2d")
def _modulated_conv2d_fake(x, weight, styles, demod, up, padding, conv_dtype=None):
    check_upsampling_kernel(weight.shape[-1], up, padding)
    oh, ow = _output_size(x, weight, up, padding)
    y = x.new_empty((x.shape[0], weight.shape[0], oh, ow))
    return y.contiguous(memory_format=torch.channels_last) if _cpu_output_is_channels_last(x, weight, up, padding) else y


@_register_fake("pulse_ext::modulated_conv2d_backward")
def _modulated_conv2d_backward_fake(grad, y, x, weight, styles, demod, up, padding, conv_dtype=None):
    layout = torch.channels_last if _cpu_output_is_channels_last(x, weight, up, padding) else torch.contiguous_format
    return (torch.empty_like(x, memory_format=layout), torch.empty_like(styles),
            x.new_empty((0,)) if demod is None else torch.empty_like(demod))


@_register_fake("pulse_ext::modulated_conv2d_weight_grad")
def _modulated_conv2d_weight_grad_fake(grad, x, weight, styles, demod, up, padding, conv_dtype=None):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


# Autograd: registered in C++ (csrc/autograd.cpp); the weight gradient is its own op,
# pulse_ext::modulated_conv2d_weight_grad, run only when the weight requires grad.


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool = True,
                     up: int = 1, padding: Optional[int] = None, demod: Optional[torch.Tensor] = None,
                     conv_dtype: Optional[torch.dtype] = None, impl: str = "auto") -> torch.Tensor:
    """StyleGAN2 modulated convolution: y = d[n, o] * conv(x * styles[n, :], weight).

    The weight is shared by the whole batch (no per-sample weights): styles scale input channels and
    the demodulation coefficients d (see ``demodulation_coefficients``) scale output channels.
    up=2 is NVIDIA's upsampling layer: stride-2 transposed convolution + [1,3,3,1] FIR (gain 4).

    Args:
        x: [N, Cin, H, W]; weight: [Cout, Cin, k, k]; styles: [N, Cin]; all one dtype and device
            (float32/float64 for the fused kernels, CPU or CUDA).
        demodulate: apply d computed from weight and styles (StyleGAN2 conv layers; toRGB does not).
        up: 1 or 2.
        padding: defaults to k // 2 ("same"); up=2 needs k = 3 and padding 1 (StyleGAN2's upsampling layer).
        demod: precomputed [N, Cout] coefficients to use instead of computing them (needs demodulate).
        conv_dtype: None, or a floating dtype (e.g. torch.bfloat16) the convolution itself runs in: its
            operands are rounded to it and its result (accumulated in fp32 by oneDNN/cuDNN) cast back to
            x's dtype; everything else (style scaling, FIR, demodulation, the output) stays in x's dtype.
            About 2-3x faster convolutions on CPUs with AVX512-BF16 / AMX and on tensor-core GPUs, at
            bf16's ~3 significant digits per product.
        impl: "auto" | "fused" | "reference".
    Returns:
        [N, Cout, H*up, W*up] (for up=1 and other paddings, the usual convolution size). The backward
        computes grads wrt x and styles with a data-gradient convolution only; a weight gradient is
        computed (one weight-gradient convolution) only when the weight requires grad.

    On the CPU the fused path keeps activations channels-last, and its 3x3 stride-1 "same" layers (fp32 /
    fp64; wider than 128 x 128 channels only from 16 output tiles of 4x4 on) run a Winograd F(4x4, 3x3)
    convolution with the style scaling and demodulation fused into its transforms; it differs from a
    direct convolution by ~1e-6 of the output's magnitude in fp32. ``PULSE_EXT_CPU_CONV=onednn`` selects
    oneDNN's direct convolution instead.
    """
    padding = _validate(x, weight, styles, up, padding)
    check_conv_dtype(conv_dtype, "modulated_conv2d")
    if demod is not None:
        check(demodulate, "modulated_conv2d: demod was given but demodulate=False")
        check(demod.shape == (x.shape[0], weight.shape[0]),
              lambda: f"modulated_conv2d: demod must be [N, Cout]={[x.shape[0], weight.shape[0]]}, "
                      f"got {list(demod.shape)}")
    if not use_fused(impl, "modulated_conv2d", x):
        y = reference.modulated_conv2d(x, weight, styles, demodulate=demodulate and demod is None, up=up,
                                       padding=padding, conv_dtype=conv_dtype)
        return y if demod is None else y * demod.reshape(demod.shape[0], -1, 1, 1)
    if demodulate and demod is None:
        demod = demodulation_coefficients(weight, styles)
    return torch.ops.pulse_ext.modulated_conv2d(x, weight, styles, demod if demodulate else None, up, padding,
                                                conv_dtype)


def upsample2d(x: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """2x [1,3,3,1] FIR upsampling of StyleGAN2's skip image path: [N, C, H, W] -> [N, C, 2H, 2W], in
    x's dtype and device (on the CPU's fused path in x's layout, NCHW or channels-last).

    The reference computes NVIDIA's zero-insertion + pad (2, 1) + 4x4 filter literally. On the CPU the
    fused form is ``pulse_ext::upsample2d``: separable polyphase loops (each output is 2x2 inputs
    weighted by products of 3/4 and 1/4), differentiable through its adjoint op. On CUDA it is one
    depthwise stride-2 transposed convolution with the gain-4 filter (padding 1), the same map.
    """
    check(x.dim() == 4, f"upsample2d: x must be [N, C, H, W], got shape {list(x.shape)}")
    if impl not in ("auto", "fused", "reference"):
        raise ValueError(f"upsample2d: impl must be 'auto', 'fused' or 'reference', got {impl!r}")
    if impl == "reference":
        return reference.upsample2d(x)
    if x.device.type == "cpu" and use_fused(impl, "upsample2d", x):
        return torch.ops.pulse_ext.upsample2d(x)
    return F.conv_transpose2d(x, _depthwise_upsample_filter(x.dtype, x.device, x.shape[1]), stride=2, padding=1,
                              groups=x.shape[1])


def _same_layout_empty(like: torch.Tensor, shape) -> torch.Tensor:
    layout = torch.channels_last if is_cpu_channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


@_register_fake("pulse_ext::upsample2d")
def _upsample2d_fake(x):
    n, c, h, w = x.shape
    return _same_layout_empty(x, (n, c, 2 * h, 2 * w))


@_register_fake("pulse_ext::upsample2d_backward")
def _upsample2d_backward_fake(grad):
    n, c, h, w = grad.shape
    return _same_layout_empty(grad, (n, c, h // 2, w // 2))


@reference.cached_constant
def _depthwise_upsample_filter(dtype: torch.dtype, device: torch.device, channels: int) -> torch.Tensor:
    """upsample2d's gain-4 FIR filter for each of ``channels`` channels: [channels, 1, 4, 4], contiguous
    (the convolution would copy an expanded view on every call)."""
    f = reference._shared_fir_filter_2d(dtype, device) * 4.0
    return f[None, None].expand(channels, 1, 4, 4).contiguous()

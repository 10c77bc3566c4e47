"""Noise injection + bias + leaky ReLU + gain + clamp: StyleGAN2's convolution epilogue in one pass."""
from __future__ import annotations

import math
from typing import Optional

import torch

from pulse_ext.ops import reference
from pulse_ext.ops._dispatch import check, is_cpu_channels_last, register_fake as _register_fake, use_fused


def _validate(x, noise, noise_strength, bias, demod) -> None:
    check(x.dim() == 4, lambda: f"noise_bias_act: x must be [N, C, H, W], got shape {list(x.shape)}")
    n, c, h, w = x.shape
    if demod is not None:
        check(demod.shape == (n, c),
              lambda: f"noise_bias_act: demod must be [N, C]={[n, c]}, got {list(demod.shape)}")
    if noise is not None:
        check(noise.dim() == 4 and noise.shape[0] in (1, n) and noise.shape[1] == 1 and noise.shape[2:] == (h, w),
              lambda: f"noise_bias_act: noise must be [1 or N, 1, H, W]=[1 or {n}, 1, {h}, {w}], "
                      f"got {list(noise.shape)}")
    if noise_strength is not None:
        check(noise_strength.numel() == 1,
              lambda: f"noise_bias_act: noise_strength must be a scalar, got shape {list(noise_strength.shape)}")
    if bias is not None:
        check(bias.shape == (c,), lambda: f"noise_bias_act: bias must be [C]=[{c}], got {list(bias.shape)}")
    for name, t in (("demod", demod), ("noise", noise), ("noise_strength", noise_strength), ("bias", bias)):
        if t is not None:
            check(t.device == x.device, lambda: f"noise_bias_act: {name} is on {t.device} but x is on {x.device}")
            check(t.dtype == x.dtype, lambda: f"noise_bias_act: {name} has dtype {t.dtype} but x has {x.dtype}")


def _layout(x):
    """The memory format of the kernels' outputs for input x: channels-last stays channels-last on CPU."""
    return torch.channels_last if is_cpu_channels_last(x) else torch.contiguous_format


@_register_fake("pulse_ext::noise_bias_act")
def _noise_bias_act_fake(x, demod, noise, noise_strength, bias, slope, gain, clamp):
    return torch.empty_like(x, memory_format=_layout(x))


@_register_fake("pulse_ext::noise_bias_act_backward")
def _noise_bias_act_backward_fake(grad, y, x, demod, noise, noise_strength, bias, slope, gain, clamp):
    def like(t):
        return x.new_empty((0,)) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    return (torch.empty_like(x, memory_format=_layout(x)), like(demod), like(noise), like(noise_strength), like(bias))


# Autograd: registered in C++ (csrc/autograd.cpp), where a forward+backward costs no Python.


def noise_bias_act(x: torch.Tensor, noise: Optional[torch.Tensor] = None,
                   noise_strength: Optional[torch.Tensor | float] = None, bias: Optional[torch.Tensor] = None, *,
                   demod: Optional[torch.Tensor] = None, gain: float = math.sqrt(2.0), clamp: Optional[float] = None,
                   slope: float = 0.2, impl: str = "auto") -> torch.Tensor:
    """y = clamp(lrelu(x * demod + noise_strength * noise + bias, slope) * gain, -clamp, clamp).

    Args:
        x: [N, C, H, W] convolution output (float32/float64 for the fused kernels, CPU or CUDA).
        noise: [1 or N, 1, H, W], broadcast over channels (and over the batch when its N is 1), or None.
        noise_strength: scalar tensor (differentiable) or float multiplying noise; None means 1.
        bias: [C] or None.
        demod: [N, C] per-sample output-channel scale (StyleGAN2 demodulation), or None.
        gain: multiplies the activation (sqrt(2) for StyleGAN2 conv layers, 1 for toRGB).
        clamp: clamps the result to [-clamp, clamp] (NVIDIA's conv_clamp), or None.
        slope: leaky ReLU negative slope; 1.0 gives a linear activation.
        impl: "auto" | "fused" | "reference".
    Returns:
        [N, C, H, W] tensor, same dtype and device as x. Differentiable wrt x, noise, noise_strength,
        bias and demod.
    """
    if noise_strength is not None and not isinstance(noise_strength, torch.Tensor):
        noise_strength = torch.tensor(float(noise_strength), dtype=x.dtype, device=x.device)
    _validate(x, noise, noise_strength, bias, demod)
    if clamp is not None:
        check(clamp > 0, lambda: f"noise_bias_act: clamp must be positive or None, got {clamp}")
    # The backward recovers the activation's branch from the sign of y, which needs these.
    check(gain > 0, lambda: f"noise_bias_act: gain must be positive, got {gain}")
    check(slope >= 0, lambda: f"noise_bias_act: slope must be >= 0, got {slope}")
    if not use_fused(impl, "noise_bias_act", x):
        return reference.noise_bias_act(x, noise, noise_strength, bias, demod=demod, gain=gain, clamp=clamp,
                                        slope=slope)
    if noise_strength is not None and noise_strength.dim() != 0:
        noise_strength = noise_strength.reshape(())
    # The OpOverload itself: calling it skips the overload resolution of torch.ops.pulse_ext.noise_bias_act.
    return torch.ops.pulse_ext.noise_bias_act.default(x, demod, noise, noise_strength, bias, float(slope),
                                                      float(gain), None if clamp is None else float(clamp))

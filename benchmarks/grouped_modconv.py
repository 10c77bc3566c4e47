"""NVIDIA-style modulated convolution (per-sample weights as a grouped convolution), in plain PyTorch.

The formulation of stylegan2-ada-pytorch's ``modulated_conv2d(fused_modconv=True)``: build per-sample
weights w[n] = weight * styles[n] (input channels) * d[n] (output channels), reshape the batch into
channels and run ONE convolution with groups=N; for up=2, a stride-2 transposed convolution (groups=N)
then the [1,3,3,1] FIR filter (gain 4, NVIDIA's upfirdn2d written with conv2d). Epilogue, toRGB and
skip-image upsampling are plain PyTorch too. This is the baseline the fused path is compared against in
``bench_e2e.py``; it is our own implementation of that formulation, not NVIDIA's code.

``patch_generator(G)`` swaps the forward of every SynthesisLayer / ToRGBLayer of ``G`` for the grouped
form (instance attributes, so ``unpatch_generator`` restores them) and sets the remaining ops
(skip-image upsampling) to the reference implementation.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from pulse_ext.ops import reference


def grouped_modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool = True,
                             up: int = 1) -> torch.Tensor:
    """x [N, Cin, H, W], weight [Cout, Cin, k, k], styles [N, Cin] -> [N, Cout, H*up, W*up] (padding k // 2)."""
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    wts = weight.unsqueeze(0) * styles.reshape(n, 1, cin, 1, 1)          # [N, Cout, Cin, k, k]
    if demodulate:
        d = (wts.square().sum(dim=[2, 3, 4]) + reference.DEMOD_EPS).rsqrt()
        wts = wts * d.reshape(n, cout, 1, 1, 1)
    xg = x.reshape(1, n * cin, h, w)
    if up == 1:
        y = F.conv2d(xg, wts.reshape(n * cout, cin, kh, kw), padding=kh // 2, groups=n)
    else:
        # conv_transpose2d weight is [in, out/groups, k, k]: per group [Cin, Cout].
        wt = wts.transpose(1, 2).reshape(n * cin, cout, kh, kw)
        y = F.conv_transpose2d(xg, wt, stride=2, groups=n)
        p0 = kh // 2 + 2 - (kh - 1)
        p1 = kh // 2 + 1 - (kh - 2)
        y = reference.upfirdn2d(y, reference.fir_filter_2d(x.dtype, x.device), pad=(p0, p1, p0, p1), gain=4.0)
    return y.reshape(n, cout, *y.shape[2:])


def _synthesis_layer_forward(self, x, w, noise_mode="random", noise=None, gain=1):
    n, dtype = x.shape[0], x.dtype
    styles = self.affine(w.to(dtype))
    y = grouped_modulated_conv2d(x, self.weight.to(dtype), styles, demodulate=True, up=self.up)
    noise_in = None
    if self.use_noise:
        res = self.resolution
        if noise is not None:
            noise_in = noise.to(dtype)
        elif noise_mode == "random":
            noise_in = torch.randn([n, 1, res, res], dtype=dtype, device=x.device)
        elif noise_mode == "const":
            noise_in = self.noise_const.to(dtype).reshape(1, 1, res, res)
    act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return reference.noise_bias_act(y, noise_in, self.noise_strength.to(dtype) if noise_in is not None else None,
                                    self.bias.to(dtype), slope=self.slope, gain=self.act_gain * gain, clamp=act_clamp)


def _torgb_forward(self, x, w):
    dtype = x.dtype
    styles = self.affine(w.to(dtype)) * self.weight_gain
    y = grouped_modulated_conv2d(x, self.weight.to(dtype), styles, demodulate=False)
    return reference.noise_bias_act(y, None, None, self.bias.to(dtype), slope=1.0, gain=1.0, clamp=self.conv_clamp)


def patch_generator(G) -> None:
    """Make every modulated conv of G (a Generator or SynthesisNetwork) run the grouped formulation."""
    from pulse_ext.stylegan2.networks import SynthesisLayer, ToRGBLayer

    G.set_impl("reference")  # skip-image upsampling and anything not patched: plain PyTorch
    for module in G.modules():
        if isinstance(module, SynthesisLayer):
            module.forward = types.MethodType(_synthesis_layer_forward, module)
        elif isinstance(module, ToRGBLayer):
            module.forward = types.MethodType(_torgb_forward, module)


def unpatch_generator(G) -> None:
    for module in G.modules():
        if "forward" in module.__dict__:
            del module.forward

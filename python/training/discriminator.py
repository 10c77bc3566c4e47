"""StyleGAN2 residual discriminator in plain PyTorch (our own code).

Semantics follow NVIDIA's stylegan2-ada-pytorch ``training/networks.py`` Discriminator with
architecture='resnet', no conditioning: equalised-learning-rate layers, a [1,3,3,1] FIR low-pass
filter before every stride-2 step, residual blocks scaled by sqrt(0.5), a minibatch-stddev layer
and a 4x4 epilogue.  State-dict names mirror NVIDIA's (``b64.fromrgb.weight``, ``b64.conv0.weight``,
``b4.fc.weight`` ...), so a NVIDIA-style D could be mapped on if ever needed.

The FIR blur runs as a depthwise ``conv2d`` (groups=C) with a cached 4x4 kernel, which on CPU is
~3x faster in the backward than a generic upfirdn2d (data/README.md).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def _fir_4x4() -> torch.Tensor:
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(taps, taps)
    return f / f.sum()


def _depthwise(x: torch.Tensor, f: torch.Tensor, pad: int) -> torch.Tensor:
    c = x.shape[1]
    w = f.to(dtype=x.dtype).reshape(1, 1, *f.shape).expand(c, 1, *f.shape)
    return F.conv2d(x, w, padding=pad, groups=c)


class _Blur(torch.autograd.Function):
    """Depthwise 4x4 FIR, stride 1, zero padding ``pad`` (0..3) on every side.

    The blur is linear, and its adjoint is the same kind of blur with the flipped filter and padding
    3 - pad, so the backward (and the backward of the backward, R1) runs as a *forward* depthwise
    conv. PyTorch's own depthwise-conv backward on CPU (bf16 / channels_last) was ~12x slower than
    its forward and took ~40 % of a D step.
    """

    @staticmethod
    def forward(ctx, x, f, pad):
        ctx.pad = pad
        ctx.save_for_backward(f)
        return _depthwise(x, f, pad)

    @staticmethod
    def backward(ctx, gy):
        (f,) = ctx.saved_tensors
        return _Blur.apply(gy, f.flip([0, 1]), f.shape[-1] - 1 - ctx.pad), None, None


def blur(x: torch.Tensor, f: torch.Tensor, pad: int, stride: int = 1) -> torch.Tensor:
    """Depthwise FIR filter f [4,4] with zero padding ``pad``; stride 2 keeps every other output
    (what NVIDIA's upfirdn2d(down=2) computes)."""
    y = _Blur.apply(x, f, pad)
    if stride > 1:
        y = y[:, :, ::stride, ::stride]
    return y


class EqualLinear(torch.nn.Module):
    """NVIDIA FullyConnectedLayer: y = act(x @ (W * lr/sqrt(in))^T + b * lr)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        x = F.linear(x, w, b)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
        return x


class EqualConv2d(torch.nn.Module):
    """NVIDIA Conv2dLayer (up=1): conv with equalised lr, optional FIR-blur + stride-2 downsampling,
    bias, lrelu (gain sqrt 2) times ``gain``, optional clamp."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: Optional[float] = None):
        super().__init__()
        assert down in (1, 2)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation = activation
        self.down = down
        self.kernel_size = kernel_size
        self.conv_clamp = conv_clamp
        if down > 1:
            self.register_buffer("resample_filter", _fir_4x4(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        # act(conv(x, w) + b) * g computed as act(conv(x, w g, b g)): leaky ReLU is positively homogeneous
        # (g > 0), and the gain and bias ride in the convolution instead of two full passes over the
        # activation (forward and backward) -- about a third of a 128-px D step on CPU was elementwise.
        act_gain = gain * LRELU_GAIN if self.activation == "lrelu" else gain
        w = self.weight.to(x.dtype) * (self.weight_gain * act_gain)
        b = self.bias.to(x.dtype) * act_gain if self.bias is not None else None
        k = self.kernel_size
        if self.down == 1:
            x = F.conv2d(x, w, b, padding=k // 2)
        elif k == 1:
            # NVIDIA: upfirdn2d(down=2, pad 1) then 1x1 conv; the blur's stride does the downsampling.
            x = blur(x, self.resample_filter, pad=1, stride=2)
            x = F.conv2d(x, w, b)
        else:
            # NVIDIA conv2d_resample (down=2, k=3): blur with pad (k//2 + 1) then stride-2 valid conv.
            x = blur(x, self.resample_filter, pad=k // 2 + 1)
            x = F.conv2d(x, w, b, stride=2)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE)
        if self.conv_clamp is not None:
            c = self.conv_clamp * gain
            x = x.clamp(-c, c)
        return x


class DBlock(torch.nn.Module):
    """Residual block: [fromrgb] -> conv0 3x3 -> conv1 3x3 down2, plus 1x1 down2 skip, each * sqrt(.5)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        if in_channels == 0:
            self.fromrgb = EqualConv2d(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = EqualConv2d(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualConv2d(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = EqualConv2d(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: Optional[torch.Tensor], img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append the per-group stddev (averaged over channels and pixels) as ``num_channels`` extra maps."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g != 0:
        raise ValueError(f"minibatch-stddev: batch {n} is not divisible by group size {g}")
    f = num_channels
    y = x.float().reshape(g, -1, f, c // f, h, w)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()
    y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
    y = y.repeat(g, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class Discriminator(torch.nn.Module):
    """img [N, C, R, R] in [-1, 1] -> logits [N, 1]. Channels per resolution: min(channel_base // res, channel_max).

    ``fade_in=True`` makes a D grown from one of half the resolution (python/train_generator.py
    ``--grow-from``): it keeps the old top block's fromrgb as ``fade_fromrgb`` and feeds the block below
    the new top one ``lerp(fade_fromrgb(avg_pool2d(img, 2)), b<R>(img), fade_alpha)``. At alpha 0 it is
    exactly the old D on the 2x2-mean image (the area downscale the half-resolution data was made
    with); the trainer ramps alpha to 1 (ProGAN's fade-in), after which the old path is not run.
    """

    def __init__(self, img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: Optional[float] = None, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, fade_in: bool = False):
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                                channel_base=channel_base, channel_max=channel_max, conv_clamp=conv_clamp,
                                mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
                                fade_in=fade_in)
        log2 = int(math.log2(img_resolution))
        assert 2 ** log2 == img_resolution and img_resolution >= 8
        self.img_resolution = img_resolution
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        ch = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        for res in self.block_resolutions:
            in_ch = ch[res] if res < img_resolution else 0
            setattr(self, f"b{res}", DBlock(in_ch, ch[res], ch[res // 2], res, img_channels, conv_clamp))
        self.fade_in = fade_in
        if fade_in:
            if img_resolution < 16:
                raise ValueError(f"fade_in needs img_resolution >= 16 (a grown D of >= 8 px below), got {img_resolution}")
            self.fade_fromrgb = EqualConv2d(img_channels, ch[img_resolution // 2], 1, activation="lrelu",
                                            conv_clamp=conv_clamp)
            self.register_buffer("fade_alpha", torch.zeros([]))
        c4 = ch[4]
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_num_channels = mbstd_num_channels
        # Epilogue (NVIDIA names it b4.*): mbstd -> conv 3x3 -> fc -> out.
        self.b4 = torch.nn.Module()
        self.b4.conv = EqualConv2d(c4 + mbstd_num_channels, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.b4.fc = EqualLinear(c4 * 16, c4, activation="lrelu")
        self.b4.out = EqualLinear(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
            if res == self.img_resolution and self.fade_in:
                alpha = float(self.fade_alpha)
                if alpha < 1.0:
                    old = self.fade_fromrgb(F.avg_pool2d(img, 2))
                    x = old.lerp(x, alpha) if alpha > 0.0 else old
        if self.mbstd_num_channels > 0:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = self.b4.conv(x)
        x = self.b4.fc(x.flatten(1))
        return self.b4.out(x)

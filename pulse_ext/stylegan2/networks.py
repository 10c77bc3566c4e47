"""StyleGAN2 generator built on the fused ops of ``pulse_ext.ops``.

Semantics, constructor arguments and state-dict names follow NVIDIA's stylegan2-ada-pytorch
``training/networks.py`` Generator, so its G_ema weights load with ``load_state_dict`` and give the
same pictures (the 'skip' architecture every published StyleGAN2 generator uses; 'orig' and 'resnet'
too).
Everything runs in the dtype of the parameters (float32 by default; ``G.double()`` gives float64);
NVIDIA's fp16 options are accepted and ignored.

Differences from NVIDIA's code, all additive:
- ``impl`` ("auto" | "fused" | "reference") picks the op implementation for the whole network.
- ``set_conv_dtype(torch.bfloat16)`` runs the 3x3 convolutions (nearly all of the FLOPs) in bfloat16,
  everything else in the parameters' dtype (``ops.modulated_conv2d(conv_dtype=...)``).
- ``SynthesisNetwork.noise_shapes()`` and ``synthesis(ws, noise=[...])`` expose the per-layer noise
  maps, which PULSE optimises.
"""
from __future__ import annotations

import copy
import json
import math
from typing import List, Optional, Sequence, Tuple

import torch

from pulse_ext import ops
from pulse_ext.ops._dispatch import check_conv_dtype
from pulse_ext.ops.modulated_conv import library_weight_format

IMPLS = ("auto", "fused", "reference")
NOISE_MODES = ("random", "const", "none")
SUPPORTED_ARCHITECTURES = ("skip", "orig", "resnet")
SUPPORTED_RESAMPLE_FILTER = [1, 3, 3, 1]

# name -> (negative slope, default gain), as NVIDIA's bias_act table for the activations that are a
# (leaky) ReLU; those are the ones the fused epilogue computes.
_ACTIVATIONS = {
    "linear": (1.0, 1.0),
    "relu": (0.0, math.sqrt(2.0)),
    "lrelu": (0.2, math.sqrt(2.0)),
}


def _activation(name: str, where: str) -> Tuple[float, float]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _fir_filter_buffer() -> torch.Tensor:
    # NVIDIA's setup_filter([1,3,3,1]): outer product normalised to sum 1, always float32. Kept as a
    # buffer only so checkpoints round-trip; the ops hard-code the same filter.
    return ops.reference.fir_filter_2d(torch.float32)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2 over dim) + eps)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(torch.nn.Module):
    """Equalised-learning-rate linear layer: y = act(x @ (weight * lr / sqrt(in)).T + bias * lr).

    Input [N, in_features] -> [N, out_features], in the dtype and on the device of x (the parameters
    are cast to x.dtype). ``activation`` is 'linear', 'relu' or 'lrelu' (slope 0.2, gain sqrt(2)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1, bias_init: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.slope, self.act_gain = _activation(activation, "FullyConnectedLayer")
        # Parameters are stored divided by lr_multiplier and rescaled at run time: the equalised
        # learning rate trick, and what NVIDIA's checkpoints contain.
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None
        if self.bias is not None:
            b = self.bias.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if b is not None and self.activation == "linear":
            # The weight gain as addmm's alpha: no scaled copy of the weight per call (the style affines
            # run 20-odd times per PULSE step).
            return torch.addmm(b.unsqueeze(0), x, self.weight.to(x.dtype).t(), alpha=self.weight_gain)
        w = self.weight.to(x.dtype) * self.weight_gain
        x = x.matmul(w.t())
        if b is not None:
            x = x + b.unsqueeze(0)
        if self.slope != 1.0:
            x = torch.nn.functional.leaky_relu(x, self.slope)
        if self.act_gain != 1.0:
            x = x * self.act_gain
        return x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(torch.nn.Module):
    """z [N, z_dim] (+ label c [N, c_dim]) -> ws [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

    Runs in the dtype of its parameters on their device. In training mode it tracks ``w_avg`` (the
    moving average of w, decay w_avg_beta) which truncation pulls towards.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MappingNetwork: num_layers must be >= 1, got {num_layers}")
        if z_dim == 0 and c_dim == 0:
            raise ValueError("MappingNetwork: z_dim and c_dim are both 0, the network would have no input")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                           lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def _dtype(self) -> torch.dtype:
        return self.fc0.weight.dtype

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor] = None, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, skip_w_avg_update: bool = False) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] or None -> ws [N, num_ws, w_dim] in the network's dtype.

        Truncation: ws = w_avg + psi * (ws - w_avg), on the first ``truncation_cutoff`` ws only when
        a cutoff is given. Differentiable wrt z (PULSE-style searches may optimise through it).
        """
        dtype = self._dtype()
        x = None
        if self.z_dim > 0:
            if z is None or z.dim() != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"mapping: z must be [N, z_dim]=[N, {self.z_dim}], got "
                                 f"{None if z is None else list(z.shape)}")
            x = normalize_2nd_moment(z.to(dtype))
        if self.c_dim > 0:
            if c is None or c.dim() != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"mapping: c must be [N, c_dim]=[N, {self.c_dim}] for this conditional model, got "
                                 f"{None if c is None else list(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.to(dtype)))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("mapping: truncation needs w_avg, which is not tracked (w_avg_beta=None)")
            w_avg = self.w_avg.to(x.dtype)
            if self.num_ws is None or truncation_cutoff is None:
                x = w_avg.lerp(x, truncation_psi)
            else:
                # Out of place (NVIDIA assigns in place) so the result stays differentiable either way.
                head = w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, head.shape[1]:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class Conv2dLayer(torch.nn.Module):
    """Equalised-learning-rate convolution without modulation: the 'resnet' generator's 1x1 skip path.

    Only what that path needs: [N, in, H, W] -> [N, out, H*up, W*up], kernel_size 1 when up=2, linear
    activation scaled by ``gain``. Parameters are cast to x.dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, resample_filter: Sequence[int] = SUPPORTED_RESAMPLE_FILTER,
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        if up not in (1, 2) or (up == 2 and kernel_size != 1) or kernel_size % 2 != 1:
            raise ValueError(f"Conv2dLayer: supports up=1 with an odd kernel or up=2 with kernel_size=1, "
                             f"got up={up}, kernel_size={kernel_size}")
        self.activation = activation
        self.slope, self.act_gain = _activation(activation, "Conv2dLayer")
        self.up = up
        self.conv_clamp = conv_clamp
        self.impl = "auto"
        self.register_buffer("resample_filter", _fir_filter_buffer())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        dtype = x.dtype
        x = torch.nn.functional.conv2d(x, (self.weight * self.weight_gain).to(dtype), padding=self.padding)
        if self.up == 2:
            # A 1x1 convolution commutes with the per-channel FIR upsampling, so it runs at the low resolution.
            x = ops.upsample2d(x, impl=self.impl)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.noise_bias_act(x, None, None, None if self.bias is None else self.bias.to(dtype), slope=self.slope,
                                  gain=self.act_gain * gain, clamp=act_clamp, impl=self.impl)


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + noise + bias + activation.

    x [N, in_channels, res/up, res/up] and w [N, w_dim] -> [N, out_channels, res, res], in x's dtype
    and device. Noise is [1 or N, 1, res, res] scaled by the learned ``noise_strength``.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[int] = SUPPORTED_RESAMPLE_FILTER, conv_clamp: Optional[float] = None,
                 channels_last: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SynthesisLayer: kernel_size must be odd, got {kernel_size}")
        if up == 2 and kernel_size != 3:  # as ops.modulated_conv2d: every StyleGAN2 checkpoint upsamples 3x3
            raise ValueError(f"SynthesisLayer: up=2 needs kernel_size=3, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.slope, self.act_gain = _activation(activation, "SynthesisLayer")
        self.conv_clamp = conv_clamp
        self.impl = "auto"
        self.conv_dtype: Optional[torch.dtype] = None  # see SynthesisNetwork.set_conv_dtype
        self.register_buffer("resample_filter", _fir_filter_buffer())
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self._frozen_weights = None  # see _weight_and_sums

    def _weight_and_sums(self, x: torch.Tensor):
        """The weight in x's dtype as the convolution of x takes it, and ``ops.demodulation_weight_sums`` of it.

        With the weight frozen (no grad, as during a PULSE search, which runs thousands of steps with
        the same weights) both are made once and kept until the weight changes: a different tensor,
        storage, dtype or version counter (which every in-place change through torch bumps, e.g.
        ``load_state_dict``; ``module.to()`` swaps the storage), or x's layout. For up=2 the kept weight
        is laid out so that its [Cin, Cout] transpose, which the transposed convolution (and its data
        gradient) reads, is contiguous in the memory format the library convolution sees
        (``ops.modulated_conv.library_weight_format``): the library would otherwise copy it on every
        call, forward and backward. Otherwise (training) both are computed per call, through autograd.
        """
        source, dtype = self.weight, x.dtype
        if source.requires_grad and torch.is_grad_enabled():
            weight = source.to(dtype)
            return weight, ops.demodulation_weight_sums(weight)
        layout = (library_weight_format(x, source, self.up, source.shape[-1] // 2, self.impl) if self.up == 2
                  else torch.contiguous_format)
        key = (source.data_ptr(), source.device, source._version, dtype, layout)
        cached = self._frozen_weights
        if cached is None or cached[0] is not source or cached[1] != key:
            with torch.no_grad():
                weight = source.to(dtype)
                sums = ops.demodulation_weight_sums(weight).contiguous()  # summed in the weight's own layout
                if self.up == 2:
                    weight = weight.transpose(0, 1).contiguous(memory_format=layout).transpose(0, 1)
                cached = self._frozen_weights = (source, key, weight, sums)
        return cached[2], cached[3]

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                noise: Optional[torch.Tensor] = None, gain: float = 1) -> torch.Tensor:
        """``noise``, when given, replaces the noise that noise_mode would pick (still times noise_strength)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_res = self.resolution // self.up
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, in_res, in_res):
            raise ValueError(f"SynthesisLayer: x must be [N, {self.in_channels}, {in_res}, {in_res}], "
                             f"got {list(x.shape)}")
        n, dtype = x.shape[0], x.dtype
        weight, weight_sums = self._weight_and_sums(x)
        styles = self.affine(w.to(dtype))

        noise_in = None
        if self.use_noise:
            res = self.resolution
            if noise is not None:
                if noise.dim() != 4 or noise.shape[0] not in (1, n) or noise.shape[1:] != (1, res, res):
                    raise ValueError(f"SynthesisLayer: noise must be [1 or N, 1, {res}, {res}] with N={n}, "
                                     f"got {list(noise.shape)}")
                noise_in = noise.to(dtype)
            elif noise_mode == "random":
                noise_in = torch.randn([n, 1, res, res], dtype=dtype, device=x.device)
            elif noise_mode == "const":
                noise_in = self.noise_const.to(dtype).reshape(1, 1, res, res)

        # Demodulation goes to the epilogue (it commutes with the conv and its up=2 FIR blur), where NVIDIA
        # also applies it first: y = act((conv * d + noise * strength + bias)) * gain.
        conv = ops.modulated_conv2d(x, weight, styles, demodulate=False, up=self.up, conv_dtype=self.conv_dtype,
                                    impl=self.impl)
        demod = ops.demodulation_coefficients(weight, styles, weight_sums)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.noise_bias_act(conv, noise_in, self.noise_strength.to(dtype) if noise_in is not None else None,
                                  self.bias.to(dtype), demod=demod, slope=self.slope, gain=act_gain,
                                  clamp=act_clamp, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, "
                f"up={self.up}, use_noise={self.use_noise}, activation={self.activation}")


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution to image channels, no demodulation, linear: [N, C, H, W] -> [N, img_channels, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.impl = "auto"
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        # Without demodulation, this is the only thing normalising the weight: it goes on the styles.
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        styles = self.affine(w.to(dtype)) * self.weight_gain
        y = ops.modulated_conv2d(x, self.weight.to(dtype), styles, demodulate=False, impl=self.impl)
        if self.conv_clamp is None:
            # Linear and unclamped, the epilogue is a bias add, whose backward autograd gets for free
            # (grad_x is grad): at 3 channels the fused epilogue's per-pixel kernels cost more than that.
            return y + self.bias.to(dtype).reshape(1, -1, 1, 1)
        return ops.noise_bias_act(y, None, None, self.bias.to(dtype), slope=1.0, gain=1.0, clamp=self.conv_clamp,
                                  impl=self.impl)


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (const or 2x-upsampling conv0) + conv1 (+ toRGB).

    forward(x [N, in_channels, res/2, res/2] or None for the first block, img [N, img_channels, res/2,
    res/2] or None, ws [N, num_conv + num_torgb, w_dim]) -> (x [N, out_channels, res, res],
    img [N, img_channels, res, res] or None).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[int] = SUPPORTED_RESAMPLE_FILTER,
                 conv_clamp: Optional[float] = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 **layer_kwargs):
        super().__init__()
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"SynthesisBlock: architecture must be one of {SUPPORTED_ARCHITECTURES}, "
                             f"got {architecture!r}")
        if [float(t) for t in resample_filter] != [float(t) for t in SUPPORTED_RESAMPLE_FILTER]:
            raise ValueError(f"SynthesisBlock: only resample_filter={SUPPORTED_RESAMPLE_FILTER} is supported "
                             f"(the fused ops hard-code it), got {list(resample_filter)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.impl = "auto"
        self.register_buffer("resample_filter", _fir_filter_buffer())
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def noise_layers(self) -> List[Tuple[str, "SynthesisLayer"]]:
        """(name within the block, layer) for the layers that take noise, in forward order."""
        names = ["conv1"] if self.in_channels == 0 else ["conv0", "conv1"]
        return [(name, getattr(self, name)) for name in names if getattr(self, name).use_noise]

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                noise_mode: str = "random", noise: Optional[Sequence[Optional[torch.Tensor]]] = None,
                **ignored) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``noise``: one entry per ``noise_layers()`` (tensor or None), or None."""
        expected = (self.num_conv + self.num_torgb, self.w_dim)
        if ws.dim() != 3 or ws.shape[1:] != expected:
            raise ValueError(f"SynthesisBlock b{self.resolution}: ws must be [N, {expected[0]}, {expected[1]}], "
                             f"got {list(ws.shape)}")
        noise_by_layer = {}
        if noise is not None:
            noise_by_layer = {name: t for (name, _), t in zip(self.noise_layers(), noise)}
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, noise=noise_by_layer.get("conv1"))
        elif self.architecture == "resnet":
            # sqrt(1/2) on both branches keeps the sum at unit variance.
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, noise=noise_by_layer.get("conv0"))
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, noise=noise_by_layer.get("conv1"),
                           gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, noise=noise_by_layer.get("conv0"))
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, noise=noise_by_layer.get("conv1"))

        if img is not None:
            img = ops.upsample2d(img, impl=self.impl)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter))
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"architecture={self.architecture}")


class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, img_resolution, img_resolution], roughly in [-1, 1].

    Runs in the dtype of its parameters (ws are cast to it) on their device.
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f"SynthesisNetwork: img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res  # accepted for NVIDIA configs; everything runs in fp32/fp64
        self.impl = "auto"
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        self.channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels_dict[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(in_channels, self.channels_dict[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, **block_kwargs)
            # Blocks share their toRGB w with the next block's conv0, so only the last toRGB adds one.
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def set_impl(self, impl: str) -> None:
        """Use ``impl`` ("auto" | "fused" | "reference") for every op in this network."""
        _check_impl(impl)
        for module in self.modules():
            if hasattr(module, "impl"):
                module.impl = impl

    def set_conv_dtype(self, dtype: Optional[torch.dtype]) -> None:
        """Run every SynthesisLayer's convolution in ``dtype`` (None: the activations' dtype). See
        ``Generator.set_conv_dtype``."""
        check_conv_dtype(dtype, "set_conv_dtype")
        for module in self.modules():
            if isinstance(module, SynthesisLayer):
                module.conv_dtype = dtype

    def noise_shapes(self) -> List[Tuple[str, int]]:
        """(layer name, resolution) for every layer that takes noise, in the order ``forward(noise=...)`` expects.

        Layer names are relative to the synthesis network, e.g. 'b4.conv1', 'b8.conv0'; that layer's
        noise is [1 or N, 1, resolution, resolution].
        """
        return [(f"b{res}.{name}", layer.resolution) for res in self.block_resolutions
                for name, layer in getattr(self, f"b{res}").noise_layers()]

    def forward(self, ws: torch.Tensor, noise_mode: str = "random",
                noise: Optional[Sequence[Optional[torch.Tensor]]] = None, force_fp32: bool = False,
                fused_modconv: Optional[bool] = None) -> torch.Tensor:
        """Synthesize images.

        Args:
            ws: [N, num_ws, w_dim] on the network's device (cast to the network's dtype).
            noise_mode: 'random' (torch.randn per call), 'const' (the stored noise_const buffers) or 'none'.
            noise: optional list, one entry per ``noise_shapes()``: a tensor [1 or N, 1, res, res] used
                instead of that layer's noise (still multiplied by its noise_strength; gradients flow
                to it), or None to use noise_mode for that layer.
            force_fp32, fused_modconv: accepted for NVIDIA call compatibility; no effect.
        Returns:
            [N, img_channels, img_resolution, img_resolution].
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.dim() != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"synthesis: ws must be [N, num_ws, w_dim]=[N, {self.num_ws}, {self.w_dim}], "
                             f"got {list(ws.shape)}")
        if noise is not None:
            expected = len(self.noise_shapes())
            if len(noise) != expected:
                raise ValueError(f"synthesis: noise must be a list of {expected} entries (see noise_shapes()), "
                                 f"got {len(noise)}")
        return self.forward_blocks(ws, noise_mode=noise_mode, noise=noise)[1]

    def forward_blocks(self, ws: torch.Tensor, x: Optional[torch.Tensor] = None, img: Optional[torch.Tensor] = None,
                       first: int = 4, last: Optional[int] = None, noise_mode: str = "random",
                       noise: Optional[Sequence[Optional[torch.Tensor]]] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run only the blocks of resolutions first..last (default: to the end), each with the ws rows and
        noise entries ``forward`` gives it.

        ws: [N, num_ws, w_dim] (all rows; each block takes its own). x, img: what enters block b{first}
        (the features [N, C, first/2, first/2] and skip image [N, img_channels, first/2, first/2] the
        block before made); None for first=4, which starts from its constant. noise: the full list of
        ``noise_shapes()`` (entries of other blocks unused). Returns (x, img) out of block b{last}.
        """
        last = self.img_resolution if last is None else int(last)
        if first not in self.block_resolutions or last not in self.block_resolutions or last < first:
            raise ValueError(f"synthesis: blocks {first}..{last} are not a range of {self.block_resolutions}")
        if (x is None) != (first == 4):
            raise ValueError(f"synthesis: x (the features entering b{first}) must be given exactly when first > 4")
        ws = ws.to(self.b4.const.dtype)
        w_idx = 0
        noise_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            num_noise = len(block.noise_layers())
            if first <= res <= last:
                block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
                block_noise = None if noise is None else noise[noise_idx: noise_idx + num_noise]
                x, img = block(x, img, block_ws, noise_mode=noise_mode, noise=block_noise)
            w_idx += block.num_conv
            noise_idx += num_noise
        return x, img

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, img_resolution={self.img_resolution}, num_ws={self.num_ws}"


class Generator(torch.nn.Module):
    """StyleGAN2 generator: z [N, z_dim] (+ c [N, c_dim]) -> img [N, img_channels, R, R], roughly in [-1, 1].

    Same constructor, call signature and state-dict names as NVIDIA's stylegan2-ada-pytorch
    Generator. ``init_kwargs`` holds the constructor arguments as a JSON-serialisable dict, so
    ``Generator(**G.init_kwargs)`` rebuilds the architecture. ``G.impl`` / ``G.set_impl`` choose the
    op implementation ("auto" | "fused" | "reference") for every layer.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: Optional[dict] = None, synthesis_kwargs: Optional[dict] = None):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        # JSON round trip: plain lists/dicts only, and fail here rather than when a loader saves it.
        self.init_kwargs = json.loads(json.dumps(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **copy.deepcopy(synthesis_kwargs))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **copy.deepcopy(mapping_kwargs))
        self._impl = "auto"

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        self.set_impl(impl)

    def set_impl(self, impl: str) -> "Generator":
        """Use ``impl`` ("auto" | "fused" | "reference") for every op of the generator; returns self."""
        _check_impl(impl)
        self.synthesis.set_impl(impl)
        self._impl = impl
        return self

    def set_conv_dtype(self, dtype: Optional[torch.dtype]) -> "Generator":
        """Run the synthesis network's 3x3 convolutions in ``dtype`` (e.g. torch.bfloat16; None, the default:
        the parameters' dtype); returns self. The convolutions hold nearly all of the FLOPs and run 2-3x
        faster in bfloat16 on CPUs with AVX512-BF16/AMX and on tensor-core GPUs; their inputs and outputs,
        and every other op (affine, demodulation, noise, bias, activation, toRGB, skip path), stay in the
        parameters' dtype. PULSE uses it for its search phase (``PULSE(precision="bf16")``)."""
        self.synthesis.set_conv_dtype(dtype)
        return self

    @property
    def conv_dtype(self) -> Optional[torch.dtype]:
        return self.synthesis.b4.conv1.conv_dtype

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor] = None, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, noise_mode: str = "random",
                noise: Optional[Sequence[Optional[torch.Tensor]]] = None, **synthesis_kwargs) -> torch.Tensor:
        """mapping then synthesis: z [N, z_dim] (c [N, c_dim]) -> img [N, img_channels, R, R].

        See ``MappingNetwork.forward`` for truncation and ``SynthesisNetwork.forward`` for noise.
        """
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, noise=noise, **synthesis_kwargs)

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_ws={self.num_ws}, impl={self.impl}")

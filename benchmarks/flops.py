"""FLOP model of the StyleGAN2 synthesis network (the part a PULSE step runs), per image.

    python benchmarks/flops.py            # prints the table for the 64 / 256 / 1024 benchmark shapes

Counted multiply-adds (MACs), every one at the resolution it actually runs at:
- modulated 3x3 conv, up=1: Cout * Cin * 9 per output pixel;
- modulated 3x3 conv, up=2: the stride-2 transposed convolution runs at the INPUT resolution
  (Cout * Cin * 9 per input pixel), then the [1,3,3,1] FIR filter (4x4 taps = 16 MACs per output pixel
  and channel, as NVIDIA's upfirdn2d computes it) on the (2H+1)^2 result;
- toRGB: Cin * img_channels per pixel (1x1 conv);
- skip-path FIR upsampling of the image: 16 MACs per output pixel and image channel;
- the style affines (w_dim * Cin per layer), modulation/demodulation scalings and the epilogue
  (noise + bias + lrelu) are elementwise or tiny and are reported separately (not in ``conv_macs``).
A PULSE step = forward + data-gradient backward (no weight gradients): the backward of a convolution
wrt its input costs as much as the forward, so step ~= 2 x forward (``step_flops`` = 2 * 2 * MACs).
Cross-check: config-f 1024 (channel_base 32768, channel_max 512) gives ~75.5 G MACs per image (DESIGN.md §6).
"""
from __future__ import annotations

from typing import Dict, List

FIR_TAPS = 16  # 4x4 [1,3,3,1] filter


def channels(res: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // res, channel_max)


def synthesis_layers(resolution: int, channel_base: int, channel_max: int, img_channels: int = 3,
                     up_to: int | None = None) -> List[dict]:
    """The synthesis network's layers in forward order, each a dict: name (the generator's module name:
    ``b<res>.conv0`` / ``.conv1`` / ``.torgb``, and ``b<res>.upsample_img`` for the skip image's FIR),
    kind ("conv3x3", "conv3x3_up2", "torgb", "fir_img"), res (output side), c_in, c_out, macs split into
    conv / fir / torgb. The one definition of the MAC count: ``synthesis_macs`` sums these."""
    last = resolution if up_to is None else up_to
    layers = []

    def add(name, kind, res, c_in, c_out, conv=0.0, fir=0.0, torgb=0.0):
        layers.append(dict(name=name, kind=kind, res=res, c_in=c_in, c_out=c_out,
                           macs=dict(conv=float(conv), fir=float(fir), torgb=float(torgb))))

    res = 4
    while res <= last:
        c_out = channels(res, channel_base, channel_max)
        if res == 4:
            add("b4.conv1", "conv3x3", res, c_out, c_out, conv=c_out * c_out * 9 * res * res)  # on the const
        else:
            c_in = channels(res // 2, channel_base, channel_max)
            h_in = res // 2
            # conv0: the stride-2 transposed conv runs at the input resolution, its FIR at the output's
            add(f"b{res}.conv0", "conv3x3_up2", res, c_in, c_out, conv=c_out * c_in * 9 * h_in * h_in,
                fir=c_out * FIR_TAPS * res * res)
            add(f"b{res}.conv1", "conv3x3", res, c_out, c_out, conv=c_out * c_out * 9 * res * res)
            add(f"b{res}.upsample_img", "fir_img", res, img_channels, img_channels,
                fir=img_channels * FIR_TAPS * res * res)
        add(f"b{res}.torgb", "torgb", res, c_out, img_channels, torgb=c_out * img_channels * res * res)
        res *= 2
    return layers


def synthesis_macs(resolution: int, channel_base: int, channel_max: int, img_channels: int = 3,
                   w_dim: int = 512, up_to: int | None = None) -> Dict[str, float]:
    """MACs per image of the 'skip' synthesis network (optionally truncated at resolution ``up_to``).

    Returns a dict: conv (modulated 3x3 convs incl. the transposed conv of up=2 layers), fir (FIR
    filters of the up=2 convs and of the skip image), torgb, affine (style affines), total = conv + fir
    + torgb, and per-resolution totals under 'by_res'.
    """
    out = {"conv": 0.0, "fir": 0.0, "torgb": 0.0, "affine": 0.0, "by_res": {}}
    for layer in synthesis_layers(resolution, channel_base, channel_max, img_channels, up_to):
        for part, macs in layer["macs"].items():
            out[part] += macs
        out["by_res"][layer["res"]] = out["by_res"].get(layer["res"], 0.0) + sum(layer["macs"].values())
        if layer["kind"] != "fir_img":  # every modulated layer has a style affine w_dim -> c_in
            out["affine"] += w_dim * layer["c_in"]
    out["total"] = out["conv"] + out["fir"] + out["torgb"]
    return out


def step_flops(resolution: int, channel_base: int, channel_max: int, **kwargs) -> float:
    """FLOPs (2 per MAC) of one PULSE restart-step: forward + data-gradient backward = 2 x forward."""
    return 2 * 2 * synthesis_macs(resolution, channel_base, channel_max, **kwargs)["total"]


CONFIGS = {  # name -> (resolution, channel_base, channel_max, w_dim)
    "64 (default)": (64, 2048, 128, 256),
    "256 (config-f)": (256, 32768, 512, 512),
    "1024 (config-f)": (1024, 32768, 512, 512),
}


if __name__ == "__main__":
    print(f"{'generator':18s} {'fwd GMAC':>9s} {'conv':>8s} {'fir':>7s} {'torgb':>7s} {'step GFLOP':>10s}")
    for name, (res, base, cmax, wdim) in CONFIGS.items():
        m = synthesis_macs(res, base, cmax, w_dim=wdim)
        print(f"{name:18s} {m['total'] / 1e9:9.3f} {m['conv'] / 1e9:8.3f} {m['fir'] / 1e9:7.3f} "
              f"{m['torgb'] / 1e9:7.3f} {step_flops(res, base, cmax, w_dim=wdim) / 1e9:10.2f}")

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

from typing import Dict

FIR_TAPS = 16  # 4x4 [1,3,3,1] filter


def channels(res: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // res, channel_max)


def synthesis_macs(resolution: int, channel_base: int, channel_max: int, img_channels: int = 3,
                   w_dim: int = 512, up_to: int | None = None) -> Dict[str, float]:
    """MACs per image of the 'skip' synthesis network (optionally truncated at resolution ``up_to``).

    Returns a dict: conv (modulated 3x3 convs incl. the transposed conv of up=2 layers), fir (FIR
    filters of the up=2 convs and of the skip image), torgb, affine (style affines), total = conv + fir
    + torgb, and per-resolution totals under 'by_res'.
    """
    last = resolution if up_to is None else up_to
    out = {"conv": 0.0, "fir": 0.0, "torgb": 0.0, "affine": 0.0, "by_res": {}}
    res = 4
    while res <= last:
        c_out = channels(res, channel_base, channel_max)
        before = out["conv"] + out["fir"] + out["torgb"]
        if res == 4:
            out["conv"] += c_out * c_out * 9 * res * res            # conv1 on the const input
            out["affine"] += w_dim * c_out
        else:
            c_in = channels(res // 2, channel_base, channel_max)
            h_in = res // 2
            out["conv"] += c_out * c_in * 9 * h_in * h_in           # conv0: transposed conv at input res
            out["fir"] += c_out * FIR_TAPS * res * res              # conv0's FIR at output res
            out["conv"] += c_out * c_out * 9 * res * res            # conv1
            out["fir"] += img_channels * FIR_TAPS * res * res       # skip image upsampling
            out["affine"] += w_dim * (c_in + c_out)
        out["torgb"] += c_out * img_channels * res * res
        out["affine"] += w_dim * c_out
        out["by_res"][res] = out["conv"] + out["fir"] + out["torgb"] - before
        res *= 2
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

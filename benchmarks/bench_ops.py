"""Op microbenchmarks: fused vs reference, forward and forward+backward, at shapes of a real generator.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--threads N] [--quick]

Writes benchmarks/results/ops-<device>.{json,md}. Shapes follow PULSE: R restarts x a StyleGAN2 layer
(CPU: the default 64-px generator's layers and scaled-down config-f ones; CUDA: 32 restarts at
64^2 x 512, 256^2 x 128 and 1024^2 x 32). Reported over --repeats interleaved rounds: median and fastest time, the speed-up (reference / fused)
with its range over rounds, and
achieved memory bandwidth (elementwise ops) or TFLOP/s (convolutions) from the minimal traffic or
arithmetic of the op.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import time_call, write_results  # noqa: E402

from pulse_ext import ops  # noqa: E402

CPU_SHAPES = [  # (R, C, H): default 64-px generator layers and a config-f layer, scaled for 2 cores;
    # 16 x 128 x 32^2 is issue #19's NCHW case
    (8, 128, 16), (8, 64, 32), (8, 32, 64), (2, 512, 16), (8, 128, 4), (16, 128, 32)]
CUDA_SHAPES = [(32, 512, 64), (32, 128, 256), (32, 32, 1024), (32, 512, 8)]
# area_downscale_loss: (R, output resolution, input resolution) of real PULSE jobs.
CPU_LOSS_SHAPES = [(8, 64, 16), (32, 64, 16), (8, 256, 32), (2, 1024, 32)]
CUDA_LOSS_SHAPES = [(64, 64, 16), (32, 256, 32), (32, 1024, 32), (64, 1024, 16)]


def bench(fn_fused, fn_ref, device, *, backward_inputs, reps_seconds, repeats=1):
    """Time both paths ``repeats`` times, interleaved (fused first in even rounds, reference first in odd
    ones), so that a load change on a shared machine hits both alike. Reported per path and pass: the
    median and the minimum of the rounds' median times; per pass the median speed-up of the rounds
    (each round's reference / fused) and its range over rounds (the spread to read it against)."""
    paths = {"fused": fn_fused, "reference": fn_ref}
    runners = {}
    for impl, fn in paths.items():
        def forward(fn=fn):
            with torch.no_grad():
                fn()

        # Dense upstream gradients in the outputs' layout, as the layers above hand them down in PULSE
        # (a y.sum() would hand down a broadcast one, which the fused kernels must first copy).
        with torch.no_grad():
            outputs = fn()
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        upstream = [torch.randn_like(t) for t in outputs]

        def forward_backward(fn=fn, upstream=upstream):
            y = fn()
            torch.autograd.grad(y if isinstance(y, tuple) else (y,), backward_inputs, upstream)

        runners[impl] = {"fwd": forward, "fwdbwd": forward_backward}
    times = {(impl, p): [] for impl in paths for p in ("fwd", "fwdbwd")}
    for round_index in range(repeats):
        order = ("fused", "reference") if round_index % 2 == 0 else ("reference", "fused")
        for p in ("fwd", "fwdbwd"):
            for impl in order:
                times[(impl, p)].append(time_call(runners[impl][p], device, min_seconds=reps_seconds) * 1e3)
    out = {}
    for (impl, p), ms in times.items():
        out[f"{impl}_{p}_ms"] = statistics.median(ms)
        out[f"{impl}_{p}_min_ms"] = min(ms)
    for p in ("fwd", "fwdbwd"):
        ratios = [r / f for r, f in zip(times[("reference", p)], times[("fused", p)])]
        out[f"speedup_{p}"] = statistics.median(ratios)
        out[f"speedup_{p}_range"] = [min(ratios), max(ratios)]
        out[f"speedup_{p}_spread"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing (smoke run)")
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum timing per measurement")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved rounds per shape; medians, minima and the speed-up's range over rounds")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--mallopt", action="store_true",
                        help="tune glibc malloc as the pulse-ext command does (no page faults on fresh buffers); "
                             "results go to ops-mallopt-<device>")
    parser.add_argument("--shapes", default=None,
                        help="only these layer shapes, RxCxH comma-separated (e.g. 16x128x32); skips the loss op")
    parser.add_argument("--tag", default="", help="results name suffix: ops[-mallopt]-<tag>-<device>")
    args = parser.parse_args(argv)
    if args.mallopt:
        from pulse_ext.allocator import tune_glibc_malloc
        if not tune_glibc_malloc():
            parser.error("--mallopt: glibc mallopt is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in item.split("x")) for item in args.shapes.split(",")]
        except ValueError:
            parser.error(f"--shapes: expected RxCxH items such as 16x128x32, got {args.shapes!r}")
        if any(len(shape) != 3 for shape in shapes):
            parser.error(f"--shapes: expected RxCxH items such as 16x128x32, got {args.shapes!r}")
    if args.quick:
        shapes, args.seconds, args.repeats = shapes[:2], 0.1, min(args.repeats, 2)
    torch.manual_seed(0)
    rows = []
    for r, c, h in shapes:
        first = len(rows)
        x = torch.randn(r, c, h, h, device=device)
        if device.type == "cpu":  # the layout the fused CPU generator keeps between layers (both paths get it)
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        noise = torch.randn(r, 1, h, h, device=device, requires_grad=True)
        strength = torch.tensor(0.3, device=device, requires_grad=True)
        bias = torch.randn(c, device=device, requires_grad=True)
        demod = (torch.rand(r, c, device=device) + 0.5).requires_grad_()

        def nba(impl):
            return lambda: ops.noise_bias_act(x, noise, strength, bias, demod=demod, clamp=256.0, impl=impl)

        row = dict(op="noise_bias_act", shape=f"{r}x{c}x{h}x{h}")
        row.update(bench(nba("fused"), nba("reference"), device, backward_inputs=[x, noise, strength, bias, demod],
                         reps_seconds=args.seconds, repeats=args.repeats))
        # Minimal traffic: forward reads x (+ noise) and writes y; backward reads grad, y, x and writes grad_x.
        n_el = x.numel()
        row["fused_fwdbwd_GBps"] = (2 * n_el + 4 * n_el) * 4 / (row["fused_fwdbwd_ms"] * 1e-3) / 1e9
        rows.append(row)

        weight = torch.randn(c, c, 3, 3, device=device)
        styles = torch.randn(r, c, device=device, requires_grad=True)
        for up in (1, 2):
            xin = x if up == 1 else torch.randn(r, c, h // 2, h // 2, device=device, requires_grad=True)
            if device.type == "cpu":
                # The layout the fused CPU generator hands from layer to layer (see csrc/modulated_conv.cpp);
                # the reference gets the same tensor.
                xin = xin.detach().contiguous(memory_format=torch.channels_last).requires_grad_()

            # The stride-1 case runs on each backend: on CUDA cuDNN (the default) and our implicit-GEMM
            # kernels, in fp32 (SIMT) and bf16 (tensor cores; its reference convolves in bf16 too), on the
            # CPU Winograd (the default up to 256x256 channels) and oneDNN's direct convolution.
            backend_variable = "PULSE_EXT_CUDA_CONV" if device.type == "cuda" else "PULSE_EXT_CPU_CONV"
            variants = [(None, None)]
            if up == 1 and device.type == "cuda":
                variants = [(b, dt) for dt in (None, torch.bfloat16) for b in ("cudnn", "igemm")]
            elif up == 1:
                # ... and, default backend, on an NCHW input (a caller's own tensor: the fused op converts it)
                variants = [("winograd", None), ("onednn", None), ("nchw", None)]
            for backend, conv_dtype in variants:
                layer_input = xin
                if backend == "nchw":
                    layer_input = xin.detach().contiguous().requires_grad_()
                elif backend:
                    os.environ[backend_variable] = backend

                def mc(impl, conv_dtype, layer_input=layer_input):
                    return lambda: ops.modulated_conv2d(layer_input, weight, styles, up=up, conv_dtype=conv_dtype,
                                                        impl=impl)

                name = (f"modulated_conv2d up={up}" + (" bf16" if conv_dtype else "")
                        + (f" [{backend}]" if backend else ""))
                row = dict(op=name, shape=f"{r}x{c}x{xin.shape[2]}->{c}x{h}")
                row.update(bench(mc("fused", conv_dtype), mc("reference", conv_dtype), device,
                                 backward_inputs=[layer_input, styles], reps_seconds=args.seconds,
                                 repeats=args.repeats))
                os.environ.pop(backend_variable, None)
                flops = 2 * r * c * c * 9 * xin.shape[2] * xin.shape[3]  # at the input resolution, as NVIDIA runs it
                row["fused_fwd_TFLOPs"] = flops / (row["fused_fwd_ms"] * 1e-3) / 1e12
                rows.append(row)
            os.environ.pop(backend_variable, None)

        # toRGB: the 1x1 modulated convolution to 3 channels, no demodulation, on the layer's output.
        weight_rgb = torch.randn(3, c, 1, 1, device=device)

        def torgb(impl):
            return lambda: ops.modulated_conv2d(x, weight_rgb, styles, demodulate=False, impl=impl)

        row = dict(op="modulated_conv2d 1x1 (toRGB)", shape=f"{r}x{c}x{h}->3x{h}")
        row.update(bench(torgb("fused"), torgb("reference"), device, backward_inputs=[x, styles],
                         reps_seconds=args.seconds, repeats=args.repeats))
        # Minimal traffic: forward reads x, writes y; backward reads grad and x, writes grad_x.
        rgb_el = r * 3 * h * h
        row["fused_fwdbwd_GBps"] = (3 * n_el + 2 * rgb_el) * 4 / (row["fused_fwdbwd_ms"] * 1e-3) / 1e9
        rows.append(row)

        # The skip path's image upsampling into this resolution.
        img = torch.randn(r, 3, h // 2, h // 2, device=device)
        if device.type == "cpu":
            img = img.contiguous(memory_format=torch.channels_last)
        img.requires_grad_()

        def up2(impl):
            return lambda: ops.upsample2d(img, impl=impl)

        row = dict(op="upsample2d (skip image)", shape=f"{r}x3x{h // 2}->{h}")
        row.update(bench(up2("fused"), up2("reference"), device, backward_inputs=[img], reps_seconds=args.seconds,
                         repeats=args.repeats))
        # Minimal traffic: forward reads img, writes 4x its size; backward the reverse.
        row["fused_fwdbwd_GBps"] = 2 * (img.numel() + rgb_el) * 4 / (row["fused_fwdbwd_ms"] * 1e-3) / 1e9
        rows.append(row)
        print(*(f"{row['op']} {row['shape']}: fwd x{row['speedup_fwd']:.2f} ({row['speedup_fwd_spread']}) "
                f"fwd+bwd x{row['speedup_fwdbwd']:.2f} ({row['speedup_fwdbwd_spread']})"
                for row in rows[first:]), sep="\n", flush=True)
    loss_shapes = CUDA_LOSS_SHAPES if device.type == "cuda" else CPU_LOSS_SHAPES
    for r, res, lr in ([] if args.shapes else loss_shapes[:2] if args.quick else loss_shapes):
        rgb = torch.rand(r, 3, res, res, device=device, requires_grad=True)
        target = torch.rand(1, 3, lr, lr, device=device)

        def adl(impl):
            return lambda: ops.area_downscale_loss(rgb, target, impl=impl)

        row = dict(op="area_downscale_loss", shape=f"{r}x3x{res}x{res}->{lr}x{lr}")
        row.update(bench(adl("fused"), adl("reference"), device, backward_inputs=[rgb], reps_seconds=args.seconds, repeats=args.repeats))
        # Minimal traffic: forward reads img, backward writes d img.
        row["fused_fwdbwd_GBps"] = 2 * rgb.numel() * 4 / (row["fused_fwdbwd_ms"] * 1e-3) / 1e9
        rows.append(row)
        print(f"{row['op']} {row['shape']}: fwd x{row['speedup_fwd']:.2f} ({row['speedup_fwd_spread']}) "
              f"fwd+bwd x{row['speedup_fwdbwd']:.2f} ({row['speedup_fwdbwd_spread']})", flush=True)
    columns = ["op", "shape", "fused_fwd_ms", "reference_fwd_ms", "speedup_fwd", "speedup_fwd_spread",
               "fused_fwdbwd_ms", "fused_fwdbwd_min_ms", "reference_fwdbwd_ms", "reference_fwdbwd_min_ms",
               "speedup_fwdbwd", "speedup_fwdbwd_spread", "fused_fwdbwd_GBps", "fused_fwd_TFLOPs"]
    notes = (f"{args.repeats} interleaved rounds per shape (fused and reference alternate which goes first); times are "
             "the median of the rounds' medians (_min_ms: the fastest round), speed-ups the median of the rounds' "
             "reference / fused ratios, _spread their range over rounds. GB/s counts the minimal "
             "traffic (fp32); TFLOP/s counts 2*N*Cout*Cin*9*H_in*W_in for the convolution (the direct algorithm's "
             "arithmetic, also for Winograd, which does 4x fewer multiplications: its rate is effective). On CPU the inputs of "
             "noise_bias_act and the modulated convolution are channels-last, the layout the fused generator keeps "
             "between layers (both paths get the same tensor), except the [nchw] rows: an NCHW tensor, as a caller may "
             "pass one. "
             + ("glibc malloc tuned as the pulse-ext command does (pulse_ext.allocator.tune_glibc_malloc): freed buffers are "
                "reused, not unmapped, so outputs do not page-fault." if args.mallopt else
                "glibc malloc defaults: buffers over its mmap threshold are fresh mappings that page-fault on first "
                "touch (compare ops-mallopt-<device>)."))
    name = ("ops-mallopt" if args.mallopt else "ops") + (f"-{args.tag}" if args.tag else "")
    path = write_results(name, device, rows, columns, notes)
    print("wrote", path)


if __name__ == "__main__":
    main()

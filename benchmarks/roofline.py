"""This machine's measured limits and a roofline of one PULSE step, layer by layer.

    python benchmarks/roofline.py [--size 1024] [--restarts 1,4,8] [--precisions fp32,bf16] [--threads 2]

1. **Limits**, measured here and now: fp32 and bf16 matmul GFLOP/s (torch.mm, n = 2048, best of 5
   rounds: oneDNN/MKL with AMX or AVX512-BF16 where the CPU has them, which the CPU flags row says) and
   memory bandwidth (copy and triad over 256 MiB arrays, 8x the largest L3 here; best of 5; counted
   STREAM's way, bytes read + bytes written, write-allocate traffic not counted).
2. **Per layer** of the synthesis network (config-f channels at 256 / 1024, the default generator's at
   64; random weights), for each R and precision: the FLOPs of forward + data backward (``flops.py``:
   2 x forward), the least DRAM traffic that step could have (every tensor it must touch read or
   written once: x three times -- forward, data gradient, style gradient --, y three times -- forward
   out, gradient in, the activation's saved input --, the weight twice; fp32 activations, the weight in
   the conv's precision), its arithmetic intensity, the roofline time max(FLOP / peak, bytes / bandwidth)
   and which term bounds it, then the measured time of that layer alone: its real module on the fused
   path, channels-last input as in the generator, forward + autograd.grad wrt (x, w), median of rounds.
   "% of roofline" = roofline time / measured time. Like the search, each layer is timed with freed
   memory kept in the process (``pulse_ext.allocator.freed_memory_kept``). FLOPs are a direct
   convolution's: the CPU's fused 3x3 stride-1 path is Winograd F(4x4, 3x3), which multiplies 4x less, so
   it can pass 100 % of a roofline drawn in direct-convolution FLOPs (and a GFLOP/s above the matmul
   peak means exactly that).
3. **The whole step** measured by ``PULSE.search`` (eps 0, a few steps after a warm-up search), its share
   of the fp32 / bf16 matmul peak, and how much of it the per-layer times account for (the rest: the
   loss, GEOCROSS, Adam, the style affines, allocation).

The peak is the matmul rate of the precision the convolutions run in (bf16: the conv in bf16 with fp32
accumulation, everything else fp32). Writes benchmarks/results/roofline-<size>-<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import flops  # noqa: E402
from bench_e2e import build_generator, config_for, matmul_limit, target_size  # noqa: E402
from common import RESULTS_DIR, synchronize, write_results  # noqa: E402

BANDWIDTH_BYTES = 256 * 2 ** 20
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
ACTIVATION_BYTES = 4  # activations stay fp32 between layers, whatever the conv runs in


# ------------------------------------------------------------------------------------------ limits

def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and which of CPU_FLAGS it has (they decide the matmul kernels oneDNN can use);
    empty off Linux."""
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    present = set(value.split())
                    flags = [flag for flag in CPU_FLAGS if flag in present]
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def memory_bandwidth(device: torch.device, rounds: int = 5) -> dict:
    """GB/s of a copy (b = a) and a triad (a = b + 3 c) over arrays far larger than the caches, best round."""
    n = BANDWIDTH_BYTES // 4
    a = torch.rand(n, device=device)
    b = torch.rand(n, device=device)
    c = torch.rand(n, device=device)
    best = {"copy_GBs": 0.0, "triad_GBs": 0.0}
    for _ in range(rounds + 1):  # the first round pages the arrays in and warms up
        synchronize(device)
        t0 = time.perf_counter()
        b.copy_(a)
        synchronize(device)
        t1 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        synchronize(device)
        t2 = time.perf_counter()
        best["copy_GBs"] = max(best["copy_GBs"], 2 * n * 4 / (t1 - t0) / 1e9)
        best["triad_GBs"] = max(best["triad_GBs"], 3 * n * 4 / (t2 - t1) / 1e9)
    return best


def measure_limits(device: torch.device, threads) -> dict:
    limits = {"fp32_GFLOPs": matmul_limit(device, threads, torch.float32),
              "bf16_GFLOPs": matmul_limit(device, threads, torch.bfloat16)}
    limits.update(memory_bandwidth(device))
    if device.type == "cpu":
        limits["cpu_model"], limits["cpu_flags"] = cpu_description()
    return limits


# ------------------------------------------------------------------------------------------ per layer

def layer_traffic_bytes(layer: dict, restarts: int, weight_bytes: int) -> float:
    """The least DRAM traffic of one layer's forward + data backward (see the module docstring)."""
    res, c_in, c_out = layer["res"], layer["c_in"], layer["c_out"]
    in_res = res // 2 if layer["kind"] in ("conv3x3_up2", "fir_img") else res
    x = restarts * c_in * in_res * in_res * ACTIVATION_BYTES
    y = restarts * c_out * res * res * ACTIVATION_BYTES
    if layer["kind"] == "fir_img":  # a fixed filter: read x, write y, and the same backwards
        return 2 * (x + y)
    taps = 1 if layer["kind"] == "torgb" else 9
    return 3 * x + 3 * y + 2 * c_out * c_in * taps * weight_bytes


def layer_modules(G) -> dict:
    """name -> (callable(x, w) -> y, input shape without N, takes w) for the names flops.synthesis_layers gives."""
    from pulse_ext import ops

    out = {}
    for block in (getattr(G.synthesis, f"b{res}") for res in G.synthesis.block_resolutions):
        res = block.resolution
        if block.in_channels:
            conv0 = block.conv0
            out[f"b{res}.conv0"] = (lambda x, w, m=conv0: m(x, w, noise_mode="const"),
                                    (block.in_channels, res // 2, res // 2), True)
            out[f"b{res}.upsample_img"] = (lambda x, w, b=block: ops.upsample2d(x, impl=b.impl),
                                           (block.img_channels, res // 2, res // 2), False)
        conv1 = block.conv1
        out[f"b{res}.conv1"] = (lambda x, w, m=conv1: m(x, w, noise_mode="const"), (block.out_channels, res, res), True)
        if block.num_torgb:
            torgb = block.torgb
            out[f"b{res}.torgb"] = (lambda x, w, m=torgb: m(x, w), (block.out_channels, res, res), True)
    return out


def time_layer(fn, in_shape, takes_w, restarts: int, w_dim: int, device, rounds: int) -> float:
    """Median seconds of fn's forward + autograd.grad wrt its inputs (one warm-up call first)."""
    from pulse_ext.allocator import freed_memory_kept

    # As in a search, freed buffers stay in the process while the layer is timed, and go back after it:
    # held across all layers (each larger than the last), the heap would grow by every layer's peak.
    with freed_memory_kept(device):
        return _time_layer(fn, in_shape, takes_w, restarts, w_dim, device, rounds)


def _time_layer(fn, in_shape, takes_w, restarts: int, w_dim: int, device, rounds: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((restarts,) + tuple(in_shape), generator=g).to(device)
    if x.shape[1] > 3:  # the generator's 3x3 layers hand channels-last activations on
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(restarts, w_dim, generator=g).to(device).requires_grad_(True)
    inputs = [x, w] if takes_w else [x]
    y = fn(x, w)
    grad_y = torch.randn(y.shape, generator=g).to(device)
    times = []
    for i in range(rounds + 1):
        synchronize(device)
        t0 = time.perf_counter()
        y = fn(x, w)
        torch.autograd.grad(y, inputs, grad_y)
        synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_seconds(G, size: int, restarts: int, precision: str, steps: int, device) -> float:
    """Seconds per step of PULSE.search at these restarts (eps 0, no refinement), after a warm-up search."""
    from pulse_ext.pulse import PULSE
    from pulse_ext.pulse.latent import LatentStats

    stats = LatentStats(torch.zeros(G.w_dim), torch.ones(G.w_dim))
    ts = target_size(size)
    target = torch.rand(1, 3, ts, ts, generator=torch.Generator().manual_seed(2))
    kwargs = dict(eps=0.0, latent_stats=stats, precision=precision, refine_steps=0)
    PULSE(G, steps=1, **kwargs).search(target, restarts=restarts, seed=0)
    searcher = PULSE(G, steps=steps, **kwargs)
    synchronize(device)
    t0 = time.perf_counter()
    searcher.search(target, restarts=restarts, seed=0)
    synchronize(device)
    return (time.perf_counter() - t0) / steps


# ------------------------------------------------------------------------------------------ main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=1024, help="generator resolution (64, 256, 1024)")
    parser.add_argument("--restarts", default="1,4,8", help="comma-separated R")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per layer (median)")
    parser.add_argument("--steps", type=int, default=2, help="timed search steps for the whole-step time")
    parser.add_argument("--name", default=None, help="results file stem (default roofline-<size>)")
    args = parser.parse_args(argv)
    restarts_list = [int(r) for r in args.restarts.split(",")]
    precisions = [p.strip() for p in args.precisions.split(",")]
    for p in precisions:
        if p not in ("fp32", "bf16"):
            parser.error(f"--precisions: expected fp32 and/or bf16, got {p!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    return run(args, device, restarts_list, precisions)


def run(args, device, restarts_list, precisions):
    """Measure and write the report; returns (per-layer rows, whole-step rows)."""
    limits = measure_limits(device, args.threads)
    bandwidth = limits["triad_GBs"] * 1e9
    print("limits:", limits, flush=True)

    cfg = config_for(args.size)
    G = build_generator(args.size, device, None).requires_grad_(False)
    G.set_impl("fused")
    layers = flops.synthesis_layers(args.size, cfg["channel_base"], cfg["channel_max"])
    modules = layer_modules(G)
    step_flops_one = flops.step_flops(args.size, cfg["channel_base"], cfg["channel_max"])

    rows, steps = [], []
    for precision in precisions:
        conv_dtype = torch.bfloat16 if precision == "bf16" else None
        peak = limits[f"{precision}_GFLOPs"] * 1e9
        weight_bytes = 2 if precision == "bf16" else 4
        for r in restarts_list:
            G.synthesis.set_conv_dtype(conv_dtype)
            layer_total = 0.0
            for layer in layers:
                fn, in_shape, takes_w = modules[layer["name"]]
                # 3x3 layers only run in bf16 (set_conv_dtype); toRGB and the FIR stay fp32.
                layer_peak = peak if layer["kind"].startswith("conv3x3") else limits["fp32_GFLOPs"] * 1e9
                flop = 2 * 2 * sum(layer["macs"].values()) * r
                traffic = layer_traffic_bytes(layer, r, weight_bytes if layer["kind"].startswith("conv3x3") else 4)
                t_compute, t_memory = flop / layer_peak, traffic / bandwidth
                measured = time_layer(fn, in_shape, takes_w, r, G.w_dim, device, args.rounds)
                layer_total += measured
                rows.append(dict(precision=precision, R=r, layer=layer["name"], kind=layer["kind"],
                                 GFLOP=flop / 1e9, MB=traffic / 1e6, FLOP_per_byte=flop / traffic,
                                 bound="compute" if t_compute >= t_memory else "memory",
                                 roofline_ms=1e3 * max(t_compute, t_memory), measured_ms=1e3 * measured,
                                 GFLOPs=flop / measured / 1e9,
                                 pct_of_roofline=100 * max(t_compute, t_memory) / measured))
                print(rows[-1], flush=True)
            G.synthesis.set_conv_dtype(None)
            seconds = step_seconds(G, args.size, r, precision, args.steps, device)
            steps.append(dict(precision=precision, R=r, s_per_step=seconds, s_per_restart_step=seconds / r,
                              GFLOPs=step_flops_one * r / seconds / 1e9,
                              pct_of_peak=100 * step_flops_one * r / seconds / peak,
                              layers_s=layer_total, layers_share=layer_total / seconds))
            print(steps[-1], flush=True)

    name = args.name or f"roofline-{args.size}"
    ridge = {p: limits[f"{p}_GFLOPs"] * 1e9 / bandwidth for p in precisions}
    path = write_results(name, device, rows, ["precision", "R", "layer", "kind", "GFLOP", "MB", "FLOP_per_byte",
                                              "bound", "roofline_ms", "measured_ms", "GFLOPs", "pct_of_roofline"],
                         notes=report_notes(args, device, limits, ridge, steps),
                         extra={"limits": limits, "steps": steps, "ridge_FLOP_per_byte": ridge})
    print("wrote", path, "and", os.path.join(RESULTS_DIR, f"{name}-{device.type}.json"))
    return rows, steps


def report_notes(args, device, limits: dict, ridge: dict, steps: list) -> str:
    """The markdown above the per-layer table: the command, the limits and the whole-step table."""
    command = (f"`python benchmarks/roofline.py --size {args.size} --restarts {args.restarts} "
               f"--precisions {args.precisions}{f' --threads {args.threads}' if args.threads else ''}`")
    text = (f"{command}. Limits measured in this run: fp32 matmul {limits['fp32_GFLOPs']:.0f} GFLOP/s, bf16 "
            f"matmul {limits['bf16_GFLOPs']:.0f} GFLOP/s, copy {limits['copy_GBs']:.1f} GB/s, triad "
            f"{limits['triad_GBs']:.1f} GB/s (the roofline uses the triad); ")
    if device.type == "cpu":
        flags = ", ".join(limits["cpu_flags"]) or "none of " + ", ".join(CPU_FLAGS)
        text += f"CPU {limits['cpu_model']} with {flags}; "
    text += "ridge point " + ", ".join(f"{p} {v:.0f} FLOP/byte" for p, v in ridge.items())
    lines = [text + ". Whole step (PULSE.search):", "",
             "| precision | R | s/step | s/restart-step | GFLOP/s | % of peak | layers' share |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['precision']} | {s['R']} | {s['s_per_step']:.3f} | {s['s_per_restart_step']:.3f} | "
              f"{s['GFLOPs']:.0f} | {s['pct_of_peak']:.0f} | {100 * s['layers_share']:.0f} % |" for s in steps]
    return "\n".join(lines + ["", "Per layer (forward + data backward, alone):"])


if __name__ == "__main__":
    main()

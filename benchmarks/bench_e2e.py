"""End-to-end PULSE benchmark: restart-steps per second of the real search loop, three modulation paths.

    python benchmarks/bench_e2e.py [--device cpu|cuda] [--threads N] [--sizes 64,256,1024]
        [--restarts 1,8,32,64] [--paths fused,fused_onednn,reference,grouped] [--steps N] [--max-step-seconds S]
    python benchmarks/bench_e2e.py --study      # CPU loop optimisations on/off -> e2e-<device>-loop.*
    python benchmarks/bench_e2e.py --progressive  # search_resolution / bf16 speed and error -> e2e-progressive-<device>.*

One step = what ``PULSE.search`` runs per iteration: synthesis forward from W+ latents (no mapping),
area-downscale L2 (+ GEOCROSS), backward wrt the latents and the trainable noise maps, spherical Adam
step. It is timed with ``PULSE.search`` itself (eps=0 so nothing converges or leaves the batch); the
reported time is its loop time divided by the steps, after a warm-up search of the same shape.

Paths: fused (``G.set_impl("fused")``; on the CPU its 3x3 layers run our Winograd convolution), fused_onednn
(CPU only: the fused path with PULSE_EXT_CPU_CONV=onednn, i.e. oneDNN's direct convolution -- what Winograd
adds), reference (plain PyTorch, shared-weight modulation), grouped
(NVIDIA-style per-sample weights + groups=N convolution, ``grouped_modconv.py``; checked against the
reference images before timing). Generators: 64 = our default (channel_base 2048, channel_max 128,
w 256); 256 / 1024 = config-f channel counts (channel_base 32768, channel_max 512, w 512), random
weights; other sizes (tests) get a tiny config. Each (size, R, path) runs in a fresh subprocess so
peak memory is per configuration: CPU = ru_maxrss of that process minus its RSS before the first
search (both include nothing from other configurations); CUDA = torch.cuda.max_memory_allocated.

TFLOP/s come from ``flops.py`` (forward + data-gradient backward = 2 x forward multiply-adds x 2
FLOP) and are compared with a matmul measured in the same run (CPU: fp32 with the same thread count;
CUDA: fp32 with TF32 as torch is configured for convolutions, and bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import flops  # noqa: E402
from common import synchronize, write_results  # noqa: E402

CONFIG_F = dict(channel_base=32768, channel_max=512, w_dim=512, z_dim=512)
CONFIGS = {64: dict(channel_base=2048, channel_max=128, w_dim=256, z_dim=256), 256: CONFIG_F, 1024: CONFIG_F}
TINY = dict(channel_base=512, channel_max=32, w_dim=32, z_dim=32)
PATHS = ("fused", "fused_onednn", "reference", "grouped")
CPU_ONLY_PATHS = ("fused_onednn",)
DEFAULT_GENERATOR_64 = "/work/checkpoints/default64/latest-G_ema.safetensors"


def config_for(size: int) -> dict:
    return dict(CONFIGS.get(size, TINY))


def target_size(size: int) -> int:
    return 16 if size >= 64 else max(size // 4, 1)


# ------------------------------------------------------------------------------------------ memory

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


# ------------------------------------------------------------------------------------------ one configuration

def build_generator(size: int, device, generator_path=None):
    from pulse_ext.stylegan2 import Generator

    if generator_path:
        from pulse_ext.checkpoints import load_generator
        return load_generator(generator_path, device=device)
    cfg = config_for(size)
    torch.manual_seed(0)
    G = Generator(z_dim=cfg["z_dim"], c_dim=0, w_dim=cfg["w_dim"], img_resolution=size, img_channels=3,
                  mapping_kwargs=dict(num_layers=2 if size < 64 else 8),
                  synthesis_kwargs=dict(channel_base=cfg["channel_base"], channel_max=cfg["channel_max"]))
    with torch.no_grad():  # NVIDIA initialises noise_strength to 0: make the noise maps matter
        for module in G.modules():
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.1)
    return G.to(device).eval()


def agreement(G, path: str, device) -> float:
    """Max |image(path) - image(reference)| / max(1, max |image(reference)|) on 2 fixed samples, in
    exact fp32: with TF32 (torch's default for cuDNN convolutions) every path would differ by ~1e-3."""
    from grouped_modconv import patch_generator, unpatch_generator

    g = torch.Generator().manual_seed(1)
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=g).to(device)
    noise = [torch.randn(2, 1, r, r, generator=g).to(device) for _, r in G.synthesis.noise_shapes()]
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            G.set_impl("reference")
            ref = G.synthesis(ws, noise_mode="const", noise=noise)
            if path == "grouped":
                patch_generator(G)
                out = G.synthesis(ws, noise_mode="const", noise=noise)
                unpatch_generator(G)
            else:
                G.set_impl("fused")
                out = G.synthesis(ws, noise_mode="const", noise=noise)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        G.set_impl("auto")
    return float((out - ref).abs().max() / ref.abs().max().clamp(min=1))


def _channels_last_hooks(G):
    from pulse_ext.stylegan2.networks import SynthesisLayer, ToRGBLayer

    def pre(module, args):
        return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])

    return [m.register_forward_pre_hook(pre) for m in G.modules() if isinstance(m, (SynthesisLayer, ToRGBLayer))]


def run_config(cfg: dict) -> dict:
    """Time one (size, restarts, path, variant) in this process; returns a result row."""
    previous = os.environ.get("PULSE_EXT_CPU_CONV")
    if cfg["path"] == "fused_onednn":
        os.environ["PULSE_EXT_CPU_CONV"] = "onednn"  # read by the op on every call
    try:
        return _run_config(cfg)
    finally:  # --inprocess runs configurations one after another in one process
        if previous is None:
            os.environ.pop("PULSE_EXT_CPU_CONV", None)
        else:
            os.environ["PULSE_EXT_CPU_CONV"] = previous


def _run_config(cfg: dict) -> dict:
    from grouped_modconv import patch_generator
    from pulse_ext.pulse import PULSE
    from pulse_ext.pulse.latent import LatentStats

    device = torch.device(cfg["device"])
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    variant = set(filter(None, cfg.get("variant", "").split("+")))
    size, r, path = cfg["size"], cfg["restarts"], cfg["path"]
    row = dict(size=size, R=r, path=path, variant="+".join(sorted(variant)) or "base",
               threads=torch.get_num_threads())
    if "mallopt" in variant:
        from pulse_ext.allocator import tune_glibc_malloc  # what the pulse-ext command does at start-up
        row["mallopt_ok"] = tune_glibc_malloc()
    if "glibc_defaults" in variant:
        # The search as it was before pulse_ext.allocator: glibc's default limits, as a user who set them
        # (glibc read its environment at start-up; the library reads it at every search).
        from pulse_ext.allocator import GLIBC_DEFAULT_TRIM_THRESHOLD
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(GLIBC_DEFAULT_TRIM_THRESHOLD)
    G = build_generator(size, device, cfg.get("generator"))
    if device.type == "cpu":
        # A configuration that cannot fit is reported, not run: the kernel's OOM killer would end it (and
        # might pick another process). pulse_ext's own estimate of a search row's bytes, as upscale() uses.
        from pulse_ext.pulse.batching import available_cpu_bytes, cpu_row_bytes
        need = r * cpu_row_bytes(G, "fused" if path.startswith("fused") else "reference")
        available = available_cpu_bytes()
        # (The estimate has margin -- fused 5x one sample's activations, measured 3-4x -- so the whole
        # available memory is the bar: config-f 1024 px R = 8 fused, est. 20 GiB, peaked at 13.)
        if available is not None and need > available:
            row["status"] = f"skipped (est. {need / 2**30:.0f} GiB > {available / 2**30:.0f} GiB available)"
            return row
    if cfg.get("check", True) and path != "reference":
        row["max_rel_diff_vs_ref"] = agreement(G, path, device)
        if path == "grouped" and row["max_rel_diff_vs_ref"] > 1e-4:
            raise RuntimeError(f"grouped path disagrees with the reference: {row['max_rel_diff_vs_ref']:.3g}")
    if path == "grouped":
        patch_generator(G)
    if "channels_last" in variant:
        _channels_last_hooks(G)
    if cfg.get("generator"):
        stats = None  # fitted (cached per process) on the real generator
    else:
        stats = LatentStats(torch.zeros(G.w_dim), torch.ones(G.w_dim))
    impl = "fused" if path.startswith("fused") else "reference"
    ts = target_size(size)
    target = torch.rand(1, 3, ts, ts, generator=torch.Generator().manual_seed(2))
    if cfg.get("target"):
        from pulse_ext.upscale import image_to_tensor
        target = image_to_tensor(cfg["target"])
    options = dict(eps=cfg.get("eps", 0.0), impl=impl, latent_stats=stats, stats_samples=20_000,
                   sync_every=1 if "sync1" in variant else 5)
    if "bf16" in variant:  # bf16 convolutions, then one fp32 render (no refinement: eps=0 here)
        options.update(precision="bf16", refine_steps=0)
    if "cuda_graph" in variant:  # steps replayed from a CUDA graph (the first two eager, then the capture)
        options.update(cuda_graph=True)
    if "no_tf32" in variant:  # exact fp32 convolutions (torch's default lets cuDNN use TF32)
        torch.backends.cudnn.allow_tf32 = False
    options.update(cfg.get("options", {}))

    def search(steps):
        return PULSE(G, steps=steps, **options).search(target, restarts=r, seed=0)

    row["base_rss_MB"] = rss_mb()
    try:
        t0 = time.perf_counter()
        search(1)  # warm-up (and the latent-statistics fit for a real generator)
        warm = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base_alloc = torch.cuda.memory_allocated(device)
        steps = cfg["steps"]
        if cfg.get("min_seconds"):
            steps = int(max(2, min(steps, cfg["min_seconds"] / max(warm, 1e-6))))
        result = search(steps)
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
        return row
    row["steps"] = result.steps_run
    row["s_per_step"] = result.seconds / result.steps_run
    row["restart_steps_per_s"] = r / row["s_per_step"]
    if device.type == "cuda":
        row["peak_mem_MB"] = (torch.cuda.max_memory_allocated(device) - base_alloc) / 2 ** 20
    else:
        row["peak_mem_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - row["base_rss_MB"]
    res, gen_cfg = G.img_resolution, G.init_kwargs["synthesis_kwargs"]
    step_flops = flops.step_flops(res, gen_cfg.get("channel_base", 32768), gen_cfg.get("channel_max", 512),
                                  w_dim=G.w_dim)
    row["TFLOPs"] = step_flops * r / row["s_per_step"] / 1e12
    row["best_l2"] = float(result.l2.min())
    row["converged"] = int(result.converged.sum())
    row["status"] = "ok"
    if cfg.get("save"):
        torch.save({"images": result.images.cpu(), "l2": result.l2.cpu()}, cfg["save"])
    return row


def run_isolated(cfg: dict, timeout: float | None = None) -> dict:
    """run_config in a fresh Python process (per-configuration peak memory, allocator settings)."""
    env = dict(os.environ)
    if cfg.get("threads"):
        env["OMP_NUM_THREADS"] = str(cfg["threads"])
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(size=cfg["size"], R=cfg["restarts"], path=cfg["path"], variant=cfg.get("variant") or "base",
                    status=f"timeout {timeout:.0f}s")
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    if proc.returncode == -signal.SIGKILL:  # what the kernel's OOM killer sends; the worker leaves no message
        status = "killed (SIGKILL: out of memory, most likely)"
    else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"no output, exit status {proc.returncode}"]
        status = "error: " + tail[0][:200]
    return dict(size=cfg["size"], R=cfg["restarts"], path=cfg["path"], variant=cfg.get("variant") or "base",
                status=status)


# ------------------------------------------------------------------------------------------ device limit

def matmul_limit(device, threads, dtype=torch.float32, n=None) -> float:
    """GFLOP/s of a large square matmul (best of repeats)."""
    if threads:
        torch.set_num_threads(threads)
    n = n or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(6 if device.type == "cpu" else 20):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9  # best of the repeats: the machine may be shared


def estimate_step_seconds(size, r, path, gflops_limit, measured=None) -> float:
    """A guess used only to skip configurations that would take too long: the time measured in this run
    for the same size and path at the largest smaller R, scaled linearly in R (measured: {(size, path):
    (R, s_per_step)}), else a pessimistic efficiency against the matmul limit."""
    if measured and (size, path) in measured:
        r_measured, seconds = measured[(size, path)]
        return seconds * r / r_measured
    cfg = config_for(size)
    efficiency = {"fused": 0.25, "fused_onednn": 0.25, "reference": 0.2, "grouped": 0.15}[path]
    return flops.step_flops(size, cfg["channel_base"], cfg["channel_max"]) * r / (gflops_limit * 1e9 * efficiency)


def time_cli(generator, threads) -> dict:
    """Wall time of the default CPU upscale from the command line (a fresh process, as a user runs it)."""
    exe = os.path.join(os.path.dirname(sys.executable), "pulse-ext")
    cmd = [exe, "upscale", os.path.join(HERE, "..", "examples", "astronaut16.png"), "-o", "/tmp/bench-e2e-cli.png", "--overwrite"]
    if generator:
        cmd += ["--generator", generator]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return dict(command=" ".join(["pulse-ext"] + cmd[1:]), seconds=time.perf_counter() - t0, rc=proc.returncode,
                stderr_tail=proc.stderr.strip()[-300:])


# ------------------------------------------------------------------------------------------ main modes

# Appended to the notes of results written while a run is still going (after every configuration), so a
# run stopped at its time limit keeps what it measured and says it is incomplete.
PARTIAL_NOTE = " Partial: the run had not finished when this was written."


def _ints(text):
    return [int(t) for t in str(text).split(",") if t.strip()]


def _fmt_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row.get(c, ''):.3g}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                                       for c in columns) + " |")
    return "\n".join(lines)


def main_benchmark(args, device):
    limits = {"fp32_GFLOPs": matmul_limit(device, args.threads)}
    if device.type == "cuda":
        limits["bf16_GFLOPs"] = matmul_limit(device, None, torch.bfloat16)
        limits["conv_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    limit = limits["fp32_GFLOPs"]
    print("device limit:", limits, flush=True)
    notes = [f"One step = PULSE.search's loop iteration (synthesis fwd from W+, area-downscale loss + GEOCROSS, "
             f"backward wrt latents and trainable noise, spherical Adam), timed over `steps` after a warm-up search; "
             f"threads={args.threads or torch.get_num_threads()}. Device limit measured in this run: "
             + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in limits.items())
             + ". TFLOP/s from benchmarks/flops.py (step = 2 x forward MACs x 2 FLOP); pct_limit is against the "
             "fp32 matmul (TF32 on CUDA when cudnn.allow_tf32). Both count a direct convolution's FLOPs: the CPU "
             "fused path's Winograd layers multiply up to 4x less, so its rate is an effective one and can pass "
             "100 %. fused_vs_X = time(X) / time(fused), side by side. "
             "peak_mem_MB: " + ("torch.cuda.max_memory_allocated during the timed search, minus what was allocated "
                                "before it" if device.type == "cuda" else
                                "ru_maxrss of the configuration's own process minus its RSS before the first search "
                                "(glibc default malloc unless variant says mallopt)")
             + ". 64 = default generator shape (channel_base 2048, channel_max 128, w 256); 256/1024 = config-f "
             "channel counts, random weights. max_rel_diff_vs_ref: images vs the reference path before timing."]
    columns = ["size", "R", "path", "status", "s_per_step", "restart_steps_per_s", "TFLOPs", "pct_limit",
               "peak_mem_MB", "fused_vs_fused_onednn", "fused_vs_reference", "fused_vs_grouped", "max_rel_diff_vs_ref",
               "threads", "steps"]
    name = "e2e" + (f"-{args.tag}" if args.tag else "")

    def save(complete: bool) -> str:
        """Results so far (JSON with the measured limits, and markdown): written after every configuration,
        so a run stopped at its time limit keeps what it measured."""
        status = "" if complete else PARTIAL_NOTE
        path = write_results(name, device, rows, columns, "\n\n".join(notes) + status,
                             extra={"limits": limits, "complete": complete})
        return path

    rows = []
    measured = {}  # (size, path) -> (R, s_per_step) of the last configuration timed
    for size in args.sizes:
        for r in sorted(args.restarts):
            by_path = {}
            for path in args.paths:
                est = estimate_step_seconds(size, r, path, limit, measured)
                if device.type == "cpu" and est > args.max_step_seconds:
                    row = dict(size=size, R=r, path=path, status=f"skipped (est. {est:.0f} s/step > "
                                                                  f"--max-step-seconds {args.max_step_seconds:g})")
                else:
                    cfg = dict(device=str(device), threads=args.threads, size=size, restarts=r, path=path,
                               steps=args.steps, min_seconds=args.min_seconds, variant=args.variant)
                    row = run_config(cfg) if args.inprocess else run_isolated(cfg, timeout=args.timeout)
                if row.get("TFLOPs"):
                    row["pct_limit"] = 100 * row["TFLOPs"] * 1e3 / limit
                if row.get("s_per_step"):
                    measured[(size, path)] = (r, row["s_per_step"])
                by_path[path] = row
                rows.append(row)
                print({k: (float(f'{v:.4g}') if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                save(complete=False)
            fused = by_path.get("fused", {}).get("s_per_step")
            for other in ("fused_onednn", "reference", "grouped"):
                if fused and by_path.get(other, {}).get("s_per_step"):
                    by_path["fused"][f"fused_vs_{other}"] = by_path[other]["s_per_step"] / fused
    if args.cli and device.type == "cpu":
        generator = None if os.path.exists(os.path.join(HERE, "..", "pulse_ext", "weights", "default.safetensors")) \
            else DEFAULT_GENERATOR_64
        cli = time_cli(generator, args.threads)
        print("cli:", cli, flush=True)
        notes.append(f"Command line (fresh process, OMP_NUM_THREADS={args.threads}): `{cli['command']}` took "
                     f"{cli['seconds']:.1f} s wall (exit {cli['rc']})"
                     + ("" if generator is None else " -- pulse_ext/weights/default.safetensors is not shipped yet, "
                        "so the training export was passed with --generator") + ".")
    print("wrote", save(complete=True))
    return rows


def main_study(args, device):
    """Loop optimisations on/off, side by side, each in its own process (allocator settings are per process)."""
    rows = []
    columns = ["size", "R", "path", "variant", "status", "s_per_step", "speedup_vs_base", "peak_mem_MB", "best_l2",
               "base_best_l2", "max_img_diff_vs_base", "threads", "steps", "generator"]
    notes = (f"Each variant in its own process, same seeds, {args.steps} steps after a 1-step warm-up; "
             f"speedup_vs_base = s_per_step(base) / s_per_step(variant). mallopt: M_MMAP_MAX=0 + M_TRIM_THRESHOLD=2^31-1 "
             f"via ctypes at process start (what pulse-ext does; the search itself does it while it runs since "
             f"pulse_ext.allocator). glibc_defaults: the search with glibc's default limits (as before "
             f"pulse_ext.allocator). sync1: sync_every=1 (one host read per step) vs the default 5. "
             f"channels_last: activations converted to channels_last before every modulated conv. bf16: "
             f"PULSE(precision='bf16'): the 3x3 convolutions in bfloat16, then one fp32 render of the results "
             f"(included in s_per_step); best_l2 / max_img_diff_vs_base compare the search result with the fp32 "
             f"base run. cuda_graph: PULSE(cuda_graph=True), steps replayed from a CUDA graph (the first two "
             f"after each capture point eager; captures included in s_per_step). no_tf32: cuDNN convolutions in "
             f"exact fp32 (the base uses torch's default, TF32 on tensor-core GPUs): the accuracy check of TF32.")
    name = "e2e-loop" + (f"-{args.tag}" if args.tag else "")
    sizes = args.sizes if args.sizes_given else [64, 256]
    for size in sizes:
        r = args.restarts[0] if args.restarts_given else (8 if size <= 64 else 1)
        gen = DEFAULT_GENERATOR_64 if size == 64 and os.path.exists(DEFAULT_GENERATOR_64) else None
        for path in ("fused", "reference"):
            variants = (["base", "cuda_graph", "sync1", "channels_last", "bf16", "no_tf32"] if device.type == "cuda"
                        else ["base", "mallopt", "sync1", "channels_last", "bf16"])
            if args.study_variants:
                variants = ["base"] + [v for v in args.study_variants.split(",") if v != "base"]
            base_images = None
            for variant in variants:
                save = f"/tmp/bench-e2e-{size}-{path}-{variant}.pt"
                cfg = dict(device=str(device), threads=args.threads, size=size, restarts=r, path=path,
                           steps=args.steps, variant="" if variant == "base" else variant, generator=gen,
                           save=save, check=False)
                row = run_isolated(cfg, timeout=args.timeout)
                row["generator"] = "default64 export" if gen else "random"
                if row.get("status") == "ok":
                    data = torch.load(save)
                    if variant == "base":
                        base_images, base_row = data, row
                    elif base_images is not None:
                        row["speedup_vs_base"] = base_row["s_per_step"] / row["s_per_step"]
                        row["max_img_diff_vs_base"] = float((data["images"] - base_images["images"]).abs().max())
                        row["base_best_l2"] = base_row["best_l2"]
                rows.append(row)
                print({k: (float(f'{v:.4g}') if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                write_results(name, device, rows, columns, notes + PARTIAL_NOTE, extra={"complete": False})
    path = write_results(name, device, rows, columns, notes, extra={"complete": True})
    print("wrote", path)


def main_progressive(args, device):
    """Full-resolution search vs search_resolution=s (+ a short full-resolution check/refinement)."""
    rows = []
    columns = ["size", "R", "search_resolution", "precision", "refine_steps", "status", "steps", "search_s",
               "speedup_vs_full", "best_l2", "full_best_l2", "converged", "threads", "generator"]
    notes = ("Fused path, eps=2e-3 (converged restarts leave the batch), same seeds. search_s = whole search loop "
             "(cheaper phase at search_resolution and/or bf16 convolutions + the full-resolution fp32 "
             "check/refinement); best_l2 = the best restart's L2 of the FULL-resolution fp32 image, "
             "area-downscaled, against the target; converged = restarts (of R) whose final fp32 L2 meets eps. Random-weight generators (256, 1024) do "
             "not make faces: their L2 says how well the search fits a random 16x16 target, not image quality.")
    # (search_resolution or None, precision); the first is the full-resolution fp32 baseline.
    plans = {64: [(None, "fp32"), (None, "bf16"), (32, "fp32"), (16, "fp32"), (32, "bf16")],
             256: [(None, "fp32"), (None, "bf16"), (64, "fp32"), (32, "fp32")],
             1024: [(None, "fp32"), (None, "bf16"), (256, "fp32"), (128, "fp32")]}
    sizes = args.sizes if args.sizes_given else [64, 256]
    for size in sizes:
        gen = DEFAULT_GENERATOR_64 if size == 64 and os.path.exists(DEFAULT_GENERATOR_64) else None
        r = args.restarts[0] if args.restarts_given else (8 if size <= 64 else 1)
        steps = args.steps if args.steps_given else (100 if size <= 64 else 20)
        target = os.path.join(HERE, "..", "examples", "astronaut16.png") if gen else None
        base = None
        for sres, precision in plans.get(size, [(None, "fp32"), (None, "bf16"), (size // 2, "fp32")]):
            staged = sres is not None or precision != "fp32"
            options = dict(search_resolution=sres, precision=precision,
                           refine_steps=args.refine_steps if staged else 0)
            cfg = dict(device=str(device), threads=args.threads, size=size, restarts=r, path="fused", steps=steps,
                       generator=gen, target=target, eps=2e-3, options=options, check=False,
                       variant="mallopt" if args.variant == "mallopt" else "")
            row = run_isolated(cfg, timeout=args.timeout)
            row.update(search_resolution=sres or size, precision=precision,
                       generator="default64 export" if gen else "random", refine_steps=options["refine_steps"])
            if row.get("status") == "ok":
                row["search_s"] = row["s_per_step"] * row["steps"]
                if not staged:
                    base = row
                elif base:
                    row["speedup_vs_full"] = base["search_s"] / row["search_s"]
                    row["full_best_l2"] = base["best_l2"]
            rows.append(row)
            print({k: (float(f'{v:.4g}') if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            write_results("e2e-progressive", device, rows, columns, notes + PARTIAL_NOTE, extra={"complete": False})
    path = write_results("e2e-progressive", device, rows, columns, notes, extra={"complete": True})
    print("wrote", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); recorded")
    parser.add_argument("--sizes", default=None, help="generator resolutions, e.g. 64,256,1024")
    parser.add_argument("--restarts", default=None, help="R values, e.g. 1,8,32,64")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--steps", type=int, default=None, help="max timed steps per configuration")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="time about this long per configuration (fewer steps for slow ones)")
    parser.add_argument("--max-step-seconds", type=float, default=30.0,
                        help="CPU: skip configurations estimated slower than this per step")
    parser.add_argument("--timeout", type=float, default=900.0, help="per-configuration subprocess timeout")
    parser.add_argument("--variant", default="", help="e.g. mallopt, bf16, channels_last, sync1 (joined with +)")
    parser.add_argument("--inprocess", action="store_true", help="no subprocesses (tests; memory is then a bound)")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="CPU: skip timing the pulse-ext command")
    parser.add_argument("--tag", default="", help="results name suffix: e2e-<tag>-<device>")
    parser.add_argument("--study", action="store_true", help="loop optimisations on/off (e2e-loop-<device>)")
    parser.add_argument("--progressive", action="store_true",
                        help="search_resolution and precision='bf16' study (e2e-progressive-<device>)")
    parser.add_argument("--study-variants", default="", help="--study: variants to compare with base (comma list)")
    parser.add_argument("--refine-steps", type=int, default=10)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = run_config(json.loads(args.worker))
        print("RESULT " + json.dumps(row), flush=True)
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.sizes_given, args.restarts_given, args.steps_given = (args.sizes is not None, args.restarts is not None,
                                                               args.steps is not None)
    args.sizes = _ints(args.sizes or "64,256,1024")
    args.restarts = _ints(args.restarts or "1,8,32,64")
    args.paths = [p for p in args.paths.split(",") if p and not (cuda and p in CPU_ONLY_PATHS)]
    if args.steps is None:  # at most; --min-seconds takes fewer for slow configurations (at least 2)
        args.steps = 10 if cuda else 30
    if args.min_seconds is None:  # on the CPU, 5 steps of a 15 ms configuration scattered by +-20 %
        args.min_seconds = 2.0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.study:
        return main_study(args, device)
    if args.progressive:
        return main_progressive(args, device)
    return main_benchmark(args, device)


if __name__ == "__main__":
    main()

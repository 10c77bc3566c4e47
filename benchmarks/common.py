"""Timing and reporting helpers shared by the benchmarks (not part of the installed package)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, min_seconds: float = 0.5, warmup: int = 2,
              max_reps: int = 200) -> float:
    """Median wall time of fn() in seconds (after warm-up), repeating until min_seconds have passed."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _write_atomically(path: str, text: str) -> None:
    """Write text to path via a temporary file and a rename: a run killed mid-write leaves the old file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(name: str, device: torch.device, rows: list[dict], columns: list[str], notes: str = "",
                  extra: dict | None = None) -> str:
    """Write rows as JSON (plus the keys of ``extra``) and as a markdown table under benchmarks/results/,
    each file replaced atomically (benchmarks call this after every configuration); returns the markdown path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    tag = f"{name}-{device.type}"
    info = machine_info(device)
    _write_atomically(os.path.join(RESULTS_DIR, tag + ".json"),
                      json.dumps({"machine": info, "rows": rows, "notes": notes, **(extra or {})}, indent=1))
    lines = [f"# {name} on {device.type}", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), ""]
    if notes:
        lines += [notes, ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    path = os.path.join(RESULTS_DIR, tag + ".md")
    _write_atomically(path, "\n".join(lines) + "\n")
    return path


def run_json_process(argv: list[str], what: str, *, cwd: str | None = None,
                     env_updates: dict[str, str] | None = None) -> dict:
    """``python *argv`` in a fresh process without the caller's MALLOC_* settings (so each side sets up the
    allocator itself), in ``cwd`` with ``env_updates`` added to the environment; returns the JSON object its
    last stdout line holds. A failed run ends the benchmark with its stderr, naming ``what`` ran."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_updates or {})
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"the {what} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(script: str, args: list[str], what: str) -> dict:
    """``python script *args`` through ``run_json_process``; ``what`` names the run in the error."""
    return run_json_process([os.path.abspath(script), *args], f"{os.path.basename(script)} {what}")

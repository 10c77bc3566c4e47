"""Where a search runs: the torch device and the number of CPU threads."""
from __future__ import annotations

import os
import time

import torch

from pulse_ext.errors import UserError


def resolve_device(text, option: str = "device") -> torch.device:
    """``text`` ("cpu", "cuda", "cuda:1", or None for cuda when available, else cpu) as a torch.device
    that exists here; UserError naming ``option`` otherwise."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"{option}: not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} {text}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{option} {text}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def busy_cores(samples: int = 5, interval: float = 0.02) -> int:
    """Cores other processes are running on now. Linux: the fewest runnable tasks in /proc/stat's
    procs_running over a few samples, minus this process (a busy job keeps its core all the time; a
    blip does not); elsewhere the 1-minute load average (which also remembers the last minute, e.g. a
    build that just finished)."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                counts += [int(line.split()[1]) for line in f if line.startswith("procs_running")]
        except (OSError, ValueError, IndexError):
            break
        if i + 1 < samples:
            time.sleep(interval)
    if counts:
        return max(0, min(counts) - 1)
    return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0


def apply_thread_setting(threads) -> int:
    """Set torch's CPU threads from an int or "auto" (the cores not busy with other processes now,
    since OpenMP threads that wait for a busy core slow the whole search; OMP_NUM_THREADS, if set,
    wins); returns the number used."""
    if threads == "auto":
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - busy_cores()))
    torch.set_num_threads(int(threads))
    return int(threads)

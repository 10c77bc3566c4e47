"""How glibc's allocator treats a CPU search's large buffers (no torch import: the CLI loads it first).

glibc serves every allocation over its mmap threshold (adaptive, at most 32 MiB) with a fresh mapping
and gives freed heap tops back to the OS, so each PULSE step page-faults its activations in again: ~15 %
of a 32-restart step at 64 px, 1.4-2x at 1024 px (docs/performance.md). Keeping freed memory in the
process removes that; ``pulse-ext`` does it for its whole life, the library while a search runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

# glibc mallopt parameters (malloc.h) and the values glibc starts with (malloc/malloc.c)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024
GLIBC_DEFAULT_MMAP_MAX = 65536
_KEEP_EVERYTHING = 2 ** 31 - 1
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")

_lock = threading.Lock()
_process_wide = False  # tune_glibc_malloc() ran: nothing is restored
_scopes = 0  # searches running inside freed_memory_kept()


def _glibc():
    """glibc's handle with mallopt and malloc_trim, or None (not Linux, not glibc, or the user set the
    allocator's own environment variables, whose values then stand)."""
    if not sys.platform.startswith("linux") or set(_USER_SETTINGS) & set(os.environ):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None
    return libc


def _keep_freed_memory(libc) -> bool:
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1  # never mmap: every allocation from the (reused) heap
    ok &= libc.mallopt(M_TRIM_THRESHOLD, _KEEP_EVERYTHING) == 1  # never give the heap top back
    return bool(ok)


def tune_glibc_malloc() -> bool:
    """Keep large buffers in the heap and freed memory in the process for the rest of its life (glibc only).

    ``pulse-ext`` does this at start-up (its process is ours); the library does it only while a CPU
    search runs (:func:`freed_memory_kept`). Skipped when the user set MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_
    themselves. Returns whether it applied.
    """
    global _process_wide
    libc = _glibc()
    if libc is None:
        return False
    with _lock:
        _process_wide = _keep_freed_memory(libc)
        return _process_wide


@contextlib.contextmanager
def freed_memory_kept(device="cpu"):
    """While the block runs a search on ``device`` (a torch.device or its name; only "cpu" has an effect),
    glibc keeps freed memory in the process instead of unmapping it (as
    :func:`tune_glibc_malloc`), so a CPU search reuses its buffers from step to step instead of
    page-faulting them in again; on leaving the last such block, glibc's default limits are restored and
    the freed memory goes back to the OS (``malloc_trim``). Nested and concurrent blocks share one
    setting. A no-op off glibc, after ``tune_glibc_malloc()`` (process-wide already) and when the user set
    MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_. While it holds, the whole process allocates this way (other
    threads too); glibc's adaptive mmap threshold stays where it had got to.
    """
    global _scopes
    on_cpu = str(getattr(device, "type", device)).split(":")[0] == "cpu"
    libc = _glibc() if on_cpu else None
    with _lock:
        active = libc is not None and not _process_wide
        if active:
            if _scopes == 0:
                _keep_freed_memory(libc)
            _scopes += 1
    try:
        yield
    finally:
        if active:
            with _lock:
                _scopes -= 1
                if _scopes == 0 and not _process_wide:
                    libc.mallopt(M_MMAP_MAX, GLIBC_DEFAULT_MMAP_MAX)
                    libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_TRIM_THRESHOLD)
                    libc.malloc_trim(0)

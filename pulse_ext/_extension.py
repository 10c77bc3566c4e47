"""Loads the compiled extension ``pulse_ext._C`` (which registers the ``torch.ops.pulse_ext`` ops).

The package stays importable without it: every op then runs its plain-PyTorch reference, and
``impl="fused"`` raises an error that says why the extension is missing.
"""
from __future__ import annotations

import torch

try:
    from pulse_ext import _C  # noqa: F401  (importing registers the ops with the dispatcher)

    LOAD_ERROR: Exception | None = None
except ImportError as error:  # not built, or built against another torch
    LOAD_ERROR = error


def is_loaded() -> bool:
    """True when the compiled ops are registered."""
    return LOAD_ERROR is None


def compiled_with_cuda() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return is_loaded() and bool(torch.ops.pulse_ext._compiled_with_cuda())


def has_kernels_for(device: torch.device) -> bool:
    """True when the fused ops have kernels for tensors on ``device``."""
    if not is_loaded():
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return compiled_with_cuda()
    return False


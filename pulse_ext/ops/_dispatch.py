"""Choosing between the fused kernels and the reference twin for one call."""
from __future__ import annotations

import torch

from pulse_ext import _extension

IMPLS = ("auto", "fused", "reference")
FUSED_DTYPES = (torch.float32, torch.float64)


def use_fused(impl: str, op_name: str, *tensors: torch.Tensor | None) -> bool:
    """Decide whether ``op_name`` runs its fused kernel for these inputs.

    "auto": fused when the extension has kernels for the device and the dtype is float32/float64,
    else the reference. "fused": the same conditions, but an error naming the failing one.
    "reference": always the reference.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op_name}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return False
    first = next(t for t in tensors if t is not None)
    reason = None
    if not _extension.is_loaded():
        reason = f"the compiled extension is not available ({_extension.LOAD_ERROR})"
    elif not _extension.has_kernels_for(first.device):
        reason = f"the extension has no kernels for device {first.device} (built with CUDA: {_extension.compiled_with_cuda()})"
    elif first.dtype not in FUSED_DTYPES:
        reason = f"the fused kernels support float32 and float64, got {first.dtype}"
    if reason is None:
        return True
    if impl == "fused":
        raise RuntimeError(f"{op_name}(impl='fused'): {reason}; use impl='auto' or 'reference'")
    return False


def check(condition: bool, message) -> None:
    """Raise ValueError(message) when condition is false (argument validation).

    message: a str, or a zero-argument callable returning it, so that per-call validation on hot paths
    does not format messages that are almost never shown (a few microseconds per op call).
    """
    if not condition:
        raise ValueError(message() if callable(message) else message)


def check_conv_dtype(conv_dtype, where: str) -> None:
    """ValueError unless conv_dtype is None or a floating torch.dtype (the dtype a convolution runs in)."""
    check(conv_dtype is None or (isinstance(conv_dtype, torch.dtype) and conv_dtype.is_floating_point),
          lambda: f"{where}: conv_dtype must be None or a floating torch.dtype, got {conv_dtype!r}")


def register_fake(qualname: str):
    """``torch.library.register_fake`` when the extension defines ``qualname``; a no-op otherwise."""
    def decorator(fn):
        if _extension.is_loaded():
            torch.library.register_fake(qualname)(fn)
        return fn

    return decorator


def is_cpu_channels_last(t: torch.Tensor) -> bool:
    """A CPU tensor laid out channels-last (and not also plain contiguous). The CPU kernels work on
    such tensors as NHWC and keep that layout in their outputs (mirrors csrc/backend.h)."""
    return (t.device.type == "cpu" and t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))

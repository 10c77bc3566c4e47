"""Shared fixtures: the devices every op test runs on (CUDA ones skipped, with the reason, without a GPU)."""
import pytest
import torch

from pulse_ext import _extension


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if not _extension.compiled_with_cuda():
        return "pulse_ext was built without CUDA kernels"
    return None


CUDA_SKIP_REASON = _cuda_skip_reason()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(CUDA_SKIP_REASON is not None,
                                                               reason=CUDA_SKIP_REASON or ""))]

requires_extension = pytest.mark.skipif(not _extension.is_loaded(),
                                        reason=f"compiled extension not built: {_extension.LOAD_ERROR}")

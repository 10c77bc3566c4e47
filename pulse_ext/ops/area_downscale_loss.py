"""Per-sample L2/L1 between an area-downscaled image batch and a low-resolution target (PULSE's loss)."""
from __future__ import annotations

from typing import Tuple

import torch

from pulse_ext.ops import reference
from pulse_ext.ops._dispatch import check, register_fake as _register_fake, use_fused


def _validate(img: torch.Tensor, target: torch.Tensor) -> None:
    check(img.dim() == 4, lambda: f"area_downscale_loss: img must be [N, C, H, W], got shape {list(img.shape)}")
    check(target.dim() == 4,
          lambda: f"area_downscale_loss: target must be [1 or N, C, h, w], got shape {list(target.shape)}")
    n, c, hh, ww = img.shape
    tn, tc, h, w = target.shape
    check(tn in (1, n) and tc == c,
          lambda: f"area_downscale_loss: target must be [1 or N, C, h, w] with N={n}, C={c}, got {list(target.shape)}")
    check(h > 0 and w > 0 and hh % h == 0 and ww % w == 0,
          lambda: f"area_downscale_loss: the target size {h}x{w} must divide the image size {hh}x{ww}")
    check(target.device == img.device,
          lambda: f"area_downscale_loss: target is on {target.device} but img is on {img.device}")
    check(target.dtype == img.dtype,
          lambda: f"area_downscale_loss: target has dtype {target.dtype} but img has {img.dtype}")


@_register_fake("pulse_ext::area_downscale_loss")
def _area_downscale_loss_fake(img, target):
    n, c = img.shape[:2]
    h, w = target.shape[-2:]
    return img.new_empty((n,)), img.new_empty((n,)), img.new_empty((n, c, h, w))


@_register_fake("pulse_ext::area_downscale_loss_backward")
def _area_downscale_loss_backward_fake(grad_l2, grad_l1, diff, img_height, img_width):
    n, c = diff.shape[:2]
    return diff.new_empty((n, c, img_height, img_width))


# Autograd: registered in C++ (csrc/autograd.cpp), where a forward+backward costs no Python.


def area_downscale_loss(img: torch.Tensor, target: torch.Tensor, *, impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (L2, L1) between ``img`` downscaled by block means and ``target``.

    ds[n, c, i, j] = mean of img[n, c] over the f_h x f_w block (i, j), f_h = H // h, f_w = W // w;
    l2[n] = mean((ds - target)^2), l1[n] = mean(|ds - target|) over (C, h, w). The fused kernels never
    materialise ds at full size and write d img in one pass.

    Args:
        img: [N, C, H, W] float (float32/float64 for the fused kernels), CPU or CUDA.
        target: [1 or N, C, h, w], same dtype and device; h divides H and w divides W.
        impl: "auto" | "fused" | "reference".
    Returns:
        (l2, l1), each [N]. Differentiable wrt img and target.
    """
    _validate(img, target)
    if not use_fused(impl, "area_downscale_loss", img):
        return reference.area_downscale_loss(img, target)
    l2, l1, _ = torch.ops.pulse_ext.area_downscale_loss.default(img, target)
    return l2, l1

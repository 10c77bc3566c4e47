"""Does an output look like a face? dlib's HOG frontal-face detector as a realism check.

PULSE always returns *something*: when the input lies outside what the generator can draw (a framing
it never learned, a whole photo squeezed to 16x16), the search melts the face to match the pixels.
L2 alone does not catch that (a melted face can meet eps). This module scores an image by the best
detection score of dlib's HOG face detector on its bicubic enlargement to 200x200 (-1 when it finds
nothing); at least :data:`REALISM_THRESHOLD` counts as face-like. The same score drives the framing
evaluation's "realistic outputs" column (python/evaluate_framing.py; docs/evaluation.md), where real
photos of the same faces score >= 0.5 in 83-100 % of cases, depending on the framing.

Needs dlib (the ``align`` extra: ``pip install 'pulse_ext[align]'``); without it
:func:`realism_unavailable_reason` says so and :func:`upscale` skips the check.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import numpy as np

# dlib HOG score of the 200-px enlargement at or above which an image counts as a face.
REALISM_THRESHOLD = 0.5
# The side the image is enlarged (or reduced) to before detection: dlib's HOG window is 80x80, and
# faces filling a 64-px image are found reliably at this size.
REALISM_SIZE = 200


def realism_unavailable_reason() -> Optional[str]:
    """None when the check can run, else a one-line reason (dlib is not installed)."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return "dlib is not installed (pip install 'pulse_ext[align]')"
    return None


@functools.lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


def _as_rgb_array(image) -> np.ndarray:
    """PIL image, uint8 HxW(x3) array, or float tensor/array [C, H, W] / [H, W, C] in [0, 1] -> uint8 HxWx3."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # a torch tensor [C, H, W] in [0, 1]
        import torch

        image = image.detach().float().clamp(0, 1).cpu()
        if image.dim() != 3:
            raise ValueError(f"image tensor must be [C, H, W], got {list(image.shape)}")
        image = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"image array must be HxW, HxWx1 or HxWx3, got {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array


def realism_scores(images: Sequence) -> List[float]:
    """dlib HOG detector's best score on the 200x200 bicubic resize of each image (-1.0: no face).

    images: PIL images, uint8 HxW(x3) arrays, or tensors [C, H, W] in [0, 1] (any size, 1 or 3 channels).
    Raises RuntimeError naming the install command when dlib is missing.
    """
    from PIL import Image

    reason = realism_unavailable_reason()
    if reason:
        raise RuntimeError(f"the realism check needs dlib: {reason}")
    detector = _detector()
    scores = []
    for image in images:
        array = _as_rgb_array(image)
        big = Image.fromarray(array, "RGB").resize((REALISM_SIZE, REALISM_SIZE), Image.BICUBIC)
        _, found, _ = detector.run(np.ascontiguousarray(np.asarray(big)), 0, -1.0)
        scores.append(float(max(found)) if len(found) else -1.0)
    return scores


def is_face_like(score: float) -> bool:
    return score >= REALISM_THRESHOLD

"""Framing search: where in a tiny input does the generator's own frame sit?

A generator draws faces in one framing (the default one: UTKFace's tight crop). A 16x16 input cut
looser (FFHQ-style, the whole photo) shows the same face smaller, somewhere inside it, and PULSE
cannot match the whole input: it melts the face trying. The framing search probes square boxes of the
input (:func:`candidate_boxes`: the whole input, and smaller squares at a grid of positions) with a
short search each, all boxes of one size batched as one search, and keeps the box that explains the
input best (:func:`box_score`: its L2, charged for the area it leaves out). The full search then runs
on that box alone.

The output is the face the generator draws for the box, at the generator's resolution; input pixels
outside the box (hair, shoulders, background) are not reproduced. The box is reported in input pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

# Box sides as fractions of the input's shorter side: the whole input, and the UTKFace frame inside an
# FFHQ one (0.64; pulse_ext.align.FRAMINGS) with a step between.
DEFAULT_BOX_SCALES = (1.0, 0.8, 0.64)
DEFAULT_PROBE_RESTARTS = 2
DEFAULT_PROBE_STEPS = 40
# box_score's charge for a smaller box: L2 x (input area / box area) ** this (calibrated; see box_score).
BOX_AREA_EXPONENT = 0.85


@dataclass(frozen=True)
class FrameBox:
    """A square of the input, in its pixels: columns left..left+side, rows top..top+side."""
    left: int
    top: int
    side: int

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.top:self.top + self.side, self.left:self.left + self.side]

    def as_dict(self) -> dict:
        return {"left": self.left, "top": self.top, "side": self.side}


def candidate_boxes(height: int, width: int, scales: Sequence[float] = DEFAULT_BOX_SCALES,
                    positions: int = 3) -> List[FrameBox]:
    """Square boxes of an h x w input: for each scale s, side round(s * min(h, w)) (at least 2), at
    ``positions`` evenly spaced offsets along each axis (left / centre / right, top / centre / bottom),
    duplicates removed; the full-size square(s) first."""
    if height < 2 or width < 2:
        raise ValueError(f"framing search needs an input of at least 2x2, got {width}x{height}")
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"box scales must be in (0, 1], got {list(scales)}")
    if positions < 1:
        raise ValueError(f"positions must be >= 1, got {positions}")
    boxes = []
    for scale in sorted(set(scales), reverse=True):
        side = max(2, round(scale * min(height, width)))

        def offsets(n):
            room = n - side
            return sorted({round(room * i / (positions - 1)) for i in range(positions)} if positions > 1
                          else {room // 2})
        for top in offsets(height):
            for left in offsets(width):
                box = FrameBox(left, top, side)
                if box not in boxes:
                    boxes.append(box)
    return boxes


def box_score(l2: float, x: torch.Tensor, box: FrameBox) -> float:
    """The box's probe L2 times (input area / box area) ** BOX_AREA_EXPONENT: lower is better.

    A smaller box always matches a little better (fewer pixels to explain), so it must beat a larger one
    by more than that: a box with half the area needs an L2 2 ** 0.85 = 1.8 times lower. The exponent was
    calibrated on training identities (python/calibrate_framing_search.py; docs/pulse.md): tight 16x16
    inputs kept the whole input in 11 of 12 faces, FFHQ-framed ones chose a smaller box in 12 of 12.
    """
    h, w = x.shape[-2:]
    return float(l2) * (h * w / (box.side * box.side)) ** BOX_AREA_EXPONENT


def probe_boxes(run_search, x: torch.Tensor, boxes: Sequence[FrameBox], seeds_for) -> Tuple[FrameBox, List[dict]]:
    """The box whose short search matches best.

    run_search(targets [n, C, s, s], seeds [n][R]) -> SearchResult: the short search (the caller's
    PULSE with few steps, and its memory handling). seeds_for(i) -> the restart seeds of box i.
    x: the input [1, C, h, w]. Returns (best box, one record per box: box, l2 = its best restart's L2,
    score = :func:`box_score`, lowest first).
    """
    records = []
    by_side = {}
    for i, box in enumerate(boxes):
        by_side.setdefault(box.side, []).append(i)
    for side, indices in by_side.items():
        targets = torch.cat([boxes[i].crop(x) for i in indices])
        result = run_search(targets, [seeds_for(i) for i in indices])
        for row, i in enumerate(indices):
            l2 = float(result.l2[row].min())
            records.append({**boxes[i].as_dict(), "l2": l2, "score": box_score(l2, x, boxes[i])})
    records.sort(key=lambda r: (r["score"], -r["side"]))
    best = records[0]
    return FrameBox(best["left"], best["top"], best["side"]), records

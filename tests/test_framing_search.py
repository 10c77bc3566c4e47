"""Framing search (pulse_ext.pulse.framing, upscale(framing_search=True))."""
import pytest
import torch

from conftest import reachable_targets, tiny_search_generator
from pulse_ext.pulse.framing import BOX_AREA_EXPONENT, FrameBox, box_score, candidate_boxes, probe_boxes
from pulse_ext.upscale import upscale


def test_candidate_boxes_cover_the_input_at_three_scales():
    boxes = candidate_boxes(16, 16)
    assert boxes[0] == FrameBox(0, 0, 16)
    assert sorted({b.side for b in boxes}, reverse=True) == [16, 13, 10]
    assert len(boxes) == 1 + 9 + 9 and len(set(boxes)) == len(boxes)
    assert FrameBox(3, 3, 10) in boxes and FrameBox(6, 6, 10) in boxes and FrameBox(0, 3, 13) in boxes
    for box in candidate_boxes(12, 20):
        assert 0 <= box.left and box.left + box.side <= 20 and 0 <= box.top and box.top + box.side <= 12
    x = torch.arange(16 * 16.0).reshape(1, 1, 16, 16)
    assert torch.equal(FrameBox(2, 3, 4).crop(x), x[..., 3:7, 2:6])
    for bad, message in (((1, 8), "at least 2x2"), ((8, 8, (0.0,)), "scales must be in"),
                         ((8, 8, (0.5,), 0), "positions must be")):
        with pytest.raises(ValueError, match=message):
            candidate_boxes(*bad)


def test_box_score_charges_smaller_boxes_by_a_power_of_their_area():
    x = torch.zeros(1, 3, 16, 16)
    full, half_side = FrameBox(0, 0, 16), FrameBox(4, 4, 8)
    assert box_score(0.01, x, full) == pytest.approx(0.01)
    # A quarter of the area: the L2 is charged 4 ** BOX_AREA_EXPONENT.
    assert box_score(0.01, x, half_side) == pytest.approx(0.01 * 4 ** BOX_AREA_EXPONENT)
    # So a smaller box wins only when its L2 is lower by more than that factor.
    assert box_score(0.01 / 4 ** BOX_AREA_EXPONENT * 0.99, x, half_side) < box_score(0.01, x, full)
    assert box_score(0.01 / 4 ** BOX_AREA_EXPONENT * 1.01, x, half_side) > box_score(0.01, x, full)


def test_probe_keeps_the_box_with_the_lowest_score_and_prefers_larger_on_ties():
    """Against an oracle: a fake search whose L2 is the distance of each box from a chosen one (0 there)."""
    boxes = candidate_boxes(16, 16)
    x = torch.zeros(1, 3, 16, 16)
    wanted = FrameBox(3, 6, 10)

    class Result:
        def __init__(self, l2):
            self.l2 = l2

    calls = []

    def fake_search(targets, seeds):
        side = targets.shape[-1]
        calls.append((side, targets.shape[0], len(seeds[0])))
        group = [b for b in boxes if b.side == side]
        l2 = [[abs(b.left - wanted.left) + abs(b.top - wanted.top) + abs(b.side - wanted.side) + r * 0.1
               for r in range(2)] for b in group]
        return Result(torch.tensor(l2))

    best, records = probe_boxes(fake_search, x, boxes, lambda i: [i, i + 100])
    assert best == wanted and records[0]["l2"] == 0
    assert sorted(calls) == [(10, 9, 2), (13, 9, 2), (16, 1, 2)]  # one batched search per box size
    tie = probe_boxes(lambda t, s: Result(torch.zeros(t.shape[0], 2)), x, boxes, lambda i: [0, 1])[0]
    assert tie.side == 16


def test_framing_search_finds_a_reachable_face_inside_a_wider_frame():
    """A generator sample downscaled to 8x8 pasted inside a 10x10 grey frame: the plain search must match
    the frame too and cannot; the framing search finds the 8x8 box and matches it."""
    torch.manual_seed(0)
    G = tiny_search_generator(16)
    face = reachable_targets(G, 1, seed=5, factor=2)  # [1, 3, 8, 8]
    frame = torch.full((1, 3, 10, 10), 0.5)
    frame[..., 1:9, 1:9] = face
    plain = upscale(frame, generator=G, restarts=4, steps=60, seed=1, return_result=True, device="cpu")
    found = upscale(frame, generator=G, restarts=4, steps=60, seed=1, return_result=True, device="cpu",
                    framing_search=True)
    assert found.frame_box == {"left": 1, "top": 1, "side": 8}
    assert len(found.framing_probe) == len(candidate_boxes(10, 10))
    assert found.converged[0] and not any(plain.converged) and found.l2[0] < plain.l2[0]
    torch.testing.assert_close(found.low_res_input, frame)
    assert found.candidates[0].size == (16, 16)
    with pytest.raises(ValueError, match="framing_search .* needs downscale='area'"):
        upscale(torch.rand(1, 3, 8, 8), generator=G, steps=2, framing_search=True, downscale="bicubic")

"""The realism check (pulse_ext.realism) and the diagnosis of a search (pulse_ext.diagnosis)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_ext import diagnosis as dg
from pulse_ext.realism import REALISM_THRESHOLD, realism_scores, realism_unavailable_reason

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
requires_dlib = pytest.mark.skipif(realism_unavailable_reason() is not None,
                                   reason=f"the realism check needs dlib: {realism_unavailable_reason()}")


def test_advice_follows_the_kind_of_input():
    assert dg.choose_advice((16, 16)) == dg.FRAMING_ADVICE
    assert dg.choose_advice((16, 16), framing_search=True) == dg.GENERIC_ADVICE
    assert dg.choose_advice((16, 16), aligned=True) == dg.GENERIC_ADVICE
    assert dg.choose_advice((640, 480)) == dg.ALIGN_ADVICE
    assert dg.choose_advice((640, 480), framing_search=True) == dg.ALIGN_ADVICE
    assert dg.choose_advice((dg.PHOTO_MIN_SIDE - 1, 640)) == dg.FRAMING_ADVICE
    assert dg.choose_advice((64, 64), aligned=True) == dg.GENERIC_ADVICE


def test_diagnosis_without_the_realism_check():
    image = torch.rand(3, 8, 8)
    good = dg.diagnose(met_eps=True, best_l2=1e-3, eps=2e-3, best_image=image, input_size=(16, 16),
                       realism_check="off")
    assert good.ok and good.message() is None and good.advice is None
    assert good.realism_score is None and good.face_like is None and "off" in good.realism_check
    bad = dg.diagnose(met_eps=False, best_l2=0.05, eps=2e-3, best_image=image, input_size=(16, 16),
                      realism_check=False)
    assert not bad.ok and bad.advice == dg.FRAMING_ADVICE
    assert "no restart met eps=0.002" in bad.message() and "0.05" in bad.message()
    record = bad.as_dict()
    assert record["ok"] is False and record["met_eps"] is False and record["problems"] == bad.problems


def test_realism_option_is_checked():
    with pytest.raises(ValueError, match=r"realism_check must be one of \('auto', 'on', 'off'\).*'sometimes'"):
        dg.check_realism_option("sometimes")
    assert dg.check_realism_option(False) == "off"
    assert dg.check_realism_option("auto") == "auto"


@pytest.mark.skipif(realism_unavailable_reason() is None, reason="dlib is installed: the missing-dlib path cannot run")
def test_realism_check_on_without_dlib_is_an_error():
    with pytest.raises(RuntimeError, match="needs dlib"):
        dg.check_realism_option("on")
    auto = dg.diagnose(met_eps=True, best_l2=1e-3, eps=2e-3, best_image=torch.rand(3, 8, 8), input_size=(16, 16))
    assert auto.face_like is None and auto.realism_check.startswith("skipped: dlib")


@requires_dlib
def test_realism_scores_a_real_face_above_and_non_faces_below_the_threshold():
    face = Image.open(os.path.join(EXAMPLES, "astronaut64.png"))
    array = np.asarray(face)
    gray = np.full((64, 64), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
    scores = realism_scores([face, array, tensor, gray, noise, array[::-1].copy()])
    assert scores[0] >= REALISM_THRESHOLD
    assert scores[1] == pytest.approx(scores[0]) and scores[2] == pytest.approx(scores[0])
    assert all(s < REALISM_THRESHOLD for s in scores[3:]), scores  # flat, noise, upside down


@requires_dlib
def test_diagnosis_flags_a_non_face_that_met_eps():
    gray = np.full((64, 64, 3), 128, np.uint8)
    result = dg.diagnose(met_eps=True, best_l2=1e-3, eps=2e-3, best_image=gray, input_size=(16, 16))
    assert result.face_like is False and result.realism_score < REALISM_THRESHOLD
    assert not result.ok and "does not look like a face" in result.message()
    assert result.advice == dg.FRAMING_ADVICE
    face = Image.open(os.path.join(EXAMPLES, "astronaut64.png"))
    assert dg.diagnose(met_eps=True, best_l2=1e-3, eps=2e-3, best_image=face, input_size=(16, 16)).ok


def test_realism_rejects_bad_arrays():
    if realism_unavailable_reason():
        pytest.skip(f"the realism check needs dlib: {realism_unavailable_reason()}")
    with pytest.raises(ValueError, match="uint8"):
        realism_scores([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="HxW"):
        realism_scores([np.zeros((8, 8, 2), np.uint8)])

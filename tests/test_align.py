"""Face alignment: geometry from given landmarks (numpy + PIL only, always runs) and, where dlib and its
model are installed, detection on the public-domain astronaut photo and ``pulse-ext align``."""
import importlib.util
import os
import sys

import numpy as np
import pytest
from PIL import Image

from pulse_ext import align
from pulse_ext.align import (FRAMINGS, AlignError, Framing, align_from_landmarks, area_downscale, crop_quad,
                             default_hr_size, face_quad, frame_in_quad_coordinates)
from pulse_ext.cli import main


def synthetic_landmarks(eye_left=(40.0, 50.0), eye_right=(80.0, 50.0), mouth_y=100.0, angle=0.0, centre=None):
    """68 points whose eye centres and mouth corners are the given ones (the rest are filler), rotated."""
    lm = np.zeros((68, 2))
    lm[:] = (60.0, 75.0)
    lm[36:42] = eye_left
    lm[42:48] = eye_right
    mx = (eye_left[0] + eye_right[0]) / 2
    lm[48] = (mx - 15, mouth_y)
    lm[54] = (mx + 15, mouth_y)
    if angle:
        centre = np.array(centre if centre is not None else (mx, (eye_left[1] + mouth_y) / 2))
        c, s = np.cos(angle), np.sin(angle)
        lm = (lm - centre) @ np.array([[c, s], [-s, c]]) + centre
    return lm


def test_ffhq_quad_geometry():
    # eye distance 40, eye-to-mouth 50: side = 2 * max(2*40, 1.8*50) = 180, centre 0.1*50 below the eyes.
    quad = face_quad(synthetic_landmarks(), "ffhq")
    np.testing.assert_allclose(quad.mean(0), (60, 55), atol=1e-9)
    np.testing.assert_allclose(quad, [[-30, -35], [-30, 145], [150, 145], [150, -35]], atol=1e-9)


def test_quad_follows_rotation():
    angle = np.deg2rad(20)
    upright = face_quad(synthetic_landmarks(), "utkface")
    tilted = face_quad(synthetic_landmarks(angle=angle, centre=(60, 75)), "utkface")
    c, s = np.cos(angle), np.sin(angle)
    np.testing.assert_allclose(tilted, (upright - (60, 75)) @ np.array([[c, s], [-s, c]]) + (60, 75), atol=1e-9)


def test_framing_scale_and_shift():
    lm = synthetic_landmarks()
    base = face_quad(lm, "ffhq")
    frame = face_quad(lm, Framing(0.5, 0.2, -0.1))
    half = 90.0  # half-side of the FFHQ square above
    np.testing.assert_allclose(frame.mean(0), base.mean(0) + (0.2 * half, -0.1 * half), atol=1e-9)
    np.testing.assert_allclose(np.hypot(*(frame[3] - frame[0])), 0.5 * 180, atol=1e-9)


def test_frame_measurement_inverts_the_framing():
    lm = synthetic_landmarks(eye_left=(70, 80), eye_right=(130, 80), mouth_y=150)
    measured = Framing(*frame_in_quad_coordinates(lm, 200, 200))
    np.testing.assert_allclose(face_quad(lm, measured), [[0, 0], [0, 200], [200, 200], [200, 0]], atol=1e-9)


def test_utkface_framing_is_tighter_than_ffhq():
    utk, ffhq = FRAMINGS["utkface"], FRAMINGS["ffhq"]
    assert 0.5 < utk.scale < 0.8 and ffhq.scale == 1.0 and utk.shift_y > 0
    assert align.DEFAULT_FRAMING == "utkface"


def test_crop_quad_axis_aligned_equals_a_crop():
    # Quads are in pixel-index coordinates (pixel centres on integers, like dlib's landmarks).
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8))
    quad = np.array([[64, 32], [64, 160], [192, 160], [192, 32]], dtype=float) - 0.5  # 128 x 128 at (64, 32)
    out = np.asarray(crop_quad(image, quad, 128, supersample=1))
    np.testing.assert_array_equal(out, np.asarray(image.crop((64, 32, 192, 160))))
    # Downscaling: close to a box-filtered crop on a smooth image.
    yy, xx = np.mgrid[:256, :256]
    smooth = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)
    image = Image.fromarray(smooth)
    out = np.asarray(crop_quad(image, quad, 32), dtype=float)
    expected = np.asarray(image.crop((64, 32, 192, 160)).resize((32, 32), Image.Resampling.BOX), dtype=float)
    assert np.abs(out - expected).max() < 2.5


def test_crop_quad_pads_outside_the_photo_without_black_corners():
    image = Image.new("RGB", (100, 100), (200, 150, 100))
    quad = np.array([[-50, -50], [-50, 150], [150, 150], [150, -50]], dtype=float)
    out = np.asarray(crop_quad(image, quad, 40), dtype=float)
    np.testing.assert_allclose(out, np.broadcast_to([200, 150, 100], out.shape), atol=2)


def test_align_from_landmarks_sizes_and_area_downscale():
    rng = np.random.default_rng(1)
    image = Image.fromarray((rng.random((160, 120, 3)) * 255).astype(np.uint8))
    face = align_from_landmarks(image, synthetic_landmarks(), 16)
    assert face.high.size == (256, 256) and face.low.size == (16, 16)
    high = np.asarray(face.high, dtype=float)
    blocks = high.reshape(16, 16, 16, 16, 3).mean(axis=(1, 3))
    assert np.abs(np.asarray(face.low, dtype=float) - blocks).max() <= 1
    assert default_hr_size(16) == 256 and default_hr_size(24) == 264 and default_hr_size(512) == 512
    with pytest.raises(ValueError, match="multiple"):
        align_from_landmarks(image, synthetic_landmarks(), 16, hr_size=100)
    assert area_downscale(face.high, 8).size == (8, 8)


def test_bad_landmarks():
    with pytest.raises(ValueError, match="68"):
        face_quad(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="degenerate"):
        face_quad(np.zeros((68, 2)))


def test_missing_dlib_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(AlignError, match=r"pip install 'pulse_ext\[align\]'"):
        align.import_dlib()
    photo = tmp_path / "p.png"
    Image.new("RGB", (32, 32)).save(photo)
    assert main(["align", str(photo), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pulse-ext: error: ") and "pulse_ext[align]" in err[0]


def test_landmarks_model_lookup(tmp_path, monkeypatch):
    with pytest.raises(AlignError, match="no such file"):
        align.find_landmarks_model(str(tmp_path / "missing.dat"))
    given = tmp_path / "m.dat"
    given.write_bytes(b"x")
    assert align.find_landmarks_model(str(given)) == str(given)
    fake_pkg = tmp_path / "site" / "face_recognition_models"
    (fake_pkg / "models").mkdir(parents=True)
    (fake_pkg / "__init__.py").write_text("import pkg_resources_that_does_not_exist\n")  # never imported
    (fake_pkg / "models" / align.LANDMARKS_FILE).write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "face_recognition_models", raising=False)
    assert align.find_landmarks_model() == str(fake_pkg / "models" / align.LANDMARKS_FILE)


# --------------------------------------------------------------------------------------------------
# with dlib

def _dlib_skip_reason():
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install 'pulse_ext[align]')"
    try:
        align.find_landmarks_model()
    except AlignError:
        return "dlib's 68-point landmark model is not installed (face-recognition-models)"
    return None


def _astronaut():
    """skimage's public-domain astronaut.png: from an installed scikit-image or $PULSE_EXT_ASTRONAUT."""
    path = os.environ.get("PULSE_EXT_ASTRONAUT")
    if path and os.path.isfile(path):
        return path
    spec = importlib.util.find_spec("skimage")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(location, "data", "astronaut.png")
        if os.path.isfile(candidate):
            return candidate
    pytest.skip("astronaut.png not available (install scikit-image or set PULSE_EXT_ASTRONAUT)")


requires_dlib = pytest.mark.skipif(_dlib_skip_reason() is not None, reason=_dlib_skip_reason() or "")


@requires_dlib
def test_astronaut_one_face_with_eyes_where_utkface_has_them():
    aligner = align.FaceAligner()
    image = Image.open(_astronaut())
    faces = aligner.align(image, 16)
    assert len(faces) == 1  # the mission patch (dlib score 0.12) is dropped
    face = faces[0]
    assert face.high.size == (256, 256) and face.low.size == (16, 16)
    (_, points), = aligner.landmarks(face.high)  # landmarks found again in the aligned crop
    left, right = points[36:42].mean(0) / 256, points[42:48].mean(0) / 256
    # UTKFace crops (measured): eyes at (0.30, 0.30) and (0.69, 0.30).
    np.testing.assert_allclose(left, (0.30, 0.30), atol=0.04)
    np.testing.assert_allclose(right, (0.69, 0.30), atol=0.04)
    loose = aligner.align(image, 16, framing="ffhq")[0]
    (_, points), = aligner.landmarks(loose.high)
    assert 0.2 < np.hypot(*(points[42:48].mean(0) - points[36:42].mean(0))) / 256 < 0.3


@requires_dlib
@pytest.mark.parametrize("framing, stem", [("utkface", "astronaut"), ("ffhq", "astronaut-ffhq")])
def test_the_readme_examples_are_the_aligned_astronaut(framing, stem):
    """examples/astronaut{16,64}.png (framed like the default generator's training data) and
    examples/astronaut-ffhq{16,64}.png (the README's loosely framed input) are what examples/README.md's
    `pulse-ext align` commands make of the photo."""
    aligner = align.FaceAligner()
    image = Image.open(_astronaut())
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    for size in (16, 64):
        (face,) = aligner.align(image, size, framing=framing)
        with Image.open(os.path.join(examples, f"{stem}{size}.png")) as shipped:
            expected = np.asarray(shipped.convert("RGB"), dtype=np.int16)
        made = np.asarray(face.low, dtype=np.int16)
        assert made.shape == expected.shape == (size, size, 3)
        # a few uint8 levels of slack for other dlib / Pillow builds
        assert np.abs(made - expected).max() <= 8 and np.abs(made - expected).mean() <= 1.0


@requires_dlib
def test_no_face_is_per_image(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)
    astronaut = _astronaut()
    code = main(["align", str(blank), astronaut, "-o", str(tmp_path / "out"), "--size", "8", "-q"])
    assert code == 1
    assert "no face found" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut_face0.hr.png", "astronaut_face0.png"]
    with Image.open(tmp_path / "out" / "astronaut_face0.png") as small:
        assert small.size == (8, 8)


@requires_dlib
def test_the_framing_evaluation_cuts_a_users_photo_like_pulse_ext_align(tmp_path):
    """python/evaluate_framing.py --photos: every face of the photo, cut in the five framings; its tight
    and ffhq cuts are the README examples' crops (to resampling), and a photo without a face is skipped."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    evaluate_framing = pytest.importorskip("evaluate_framing")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)
    logged = []
    faces, names = evaluate_framing.photo_faces([str(blank), _astronaut()], 30, 64, 0, logged.append)
    assert names == ["astronaut.png#face0"] and any("no face found" in line for line in logged)
    assert set(faces) == {"tight", "ffhq", "wide", "offcentre", "random"}
    assert all(v.shape == (1, 64, 64, 3) and v.dtype == np.uint8 for v in faces.values())
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    for framing, stem in (("tight", "astronaut"), ("ffhq", "astronaut-ffhq")):
        with Image.open(os.path.join(examples, f"{stem}64.png")) as shipped:
            expected = np.asarray(shipped.convert("RGB"), dtype=np.int16)
        assert np.abs(faces[framing][0].astype(np.int16) - expected).mean() < 4  # one resize vs area-downscale
    assert np.abs(faces["tight"][0].astype(np.int16) - faces["ffhq"][0]).mean() > 10  # the framings differ
    with pytest.raises(SystemExit, match="no face found in any"):
        evaluate_framing.photo_faces([str(blank)], 30, 64, 0, logged.append)

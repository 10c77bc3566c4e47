"""Face alignment for real photographs: detect faces, find 68 landmarks, crop each face the way the
generator's training data was cropped, and make its low-resolution version (area downscale).

The geometry follows the FFHQ alignment the original PULSE used (``align_face.py`` / NVIDIA's
ffhq-dataset): from the eye centres and mouth corners it builds an oriented square ("quad") around
the face — rotation from the eye line and the eye-to-mouth vector, side from the larger of
2 x eye distance and 1.8 x eye-to-mouth distance, centre 0.1 eye-to-mouth below the eyes — and
resamples that square to the output size, padding with a blurred reflection where the square leaves
the photo.

A *framing* rescales and shifts that square, expressed in the square's own axes, so that the crop
matches a data set's framing:

- ``ffhq``: the FFHQ square unchanged (loose: hair, ears, some background);
- ``utkface``: the tight framing of UTKFace's "aligned & cropped" 200x200 faces, on which the default
  generator is trained (measured by aligning UTKFace crops with this code: see docs/jobs.md).

Only detection needs dlib (an optional extra: ``pip install 'pulse_ext[align]'``); the geometry
(:func:`face_quad`, :func:`crop_quad`, :func:`align_from_landmarks`) works on given landmarks with
numpy and PIL alone.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

INSTALL_HINT = "pip install 'pulse_ext[align]'"
LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
# Where Debian / Ubuntu's libdlib-data package puts the model.
SYSTEM_LANDMARKS = ("/usr/share/dlib/" + LANDMARKS_FILE,)


@dataclass(frozen=True)
class Framing:
    """The crop square relative to the FFHQ square: side x ``scale``, centre moved by
    ``shift_x`` / ``shift_y`` half-sides of the FFHQ square along its own axes (x right, y down)."""
    scale: float
    shift_x: float = 0.0
    shift_y: float = 0.0


FRAMINGS = {
    "ffhq": Framing(1.0, 0.0, 0.0),
    # Measured on 222 UTKFace 200x200 crops (dlib detector + 68-point model, medians; see docs/jobs.md):
    # the UTKFace frame is 0.639 x the FFHQ square (IQR 0.618-0.661), its centre 0.207 half-sides below
    # the FFHQ centre (IQR 0.195-0.219); sideways 0.010 (IQR -0.001-0.023), taken as 0.
    "utkface": Framing(0.639, 0.0, 0.207),
}
DEFAULT_FRAMING = "utkface"
# dlib HOG detector score below which a detection is dropped (dlib's own threshold is 0; on the
# astronaut photo the mission patch scores 0.12 and the face 1.16).
DEFAULT_MIN_SCORE = 0.3


class AlignError(Exception):
    """Alignment cannot run (dlib or its landmark model missing) — a user-facing one-line message."""


class NoFaceError(Exception):
    """No face found in one image (a per-image error)."""


# --------------------------------------------------------------------------------------------------
# geometry (no dlib)

def face_quad(landmarks, framing="utkface"):
    """The crop square of one face from its 68 dlib landmarks ([68, 2], x/y in pixels).

    Returns a [4, 2] float64 array: upper-left, lower-left, lower-right, upper-right corners (PIL's
    QUAD order), for the FFHQ square scaled and shifted by ``framing`` (a name or a :class:`Framing`).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2] (dlib's 68-point layout), got {list(lm.shape)}")
    frame = FRAMINGS[framing] if isinstance(framing, str) else framing
    eye_left = lm[36:42].mean(0)
    eye_right = lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # FFHQ's oriented square: x along the eye line tilted by the eye-mouth direction, y perpendicular.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not norm > 0:
        raise ValueError("degenerate landmarks (eyes and mouth coincide)")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    c = c + frame.shift_x * x + frame.shift_y * y
    x, y = x * frame.scale, y * frame.scale
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def frame_in_quad_coordinates(landmarks, width, height):
    """Where an image's own frame sits relative to the FFHQ square of the face in it.

    Returns (scale, shift_x, shift_y) such that ``Framing(scale, shift_x, shift_y)`` reproduces the
    image frame (for an upright face): used to measure a data set's framing from its crops.
    """
    quad = face_quad(landmarks, "ffhq")
    c = quad.mean(0)
    x = (quad[2] + quad[3]) / 2 - c  # half-side vector to the right
    y = (quad[1] + quad[2]) / 2 - c  # half-side vector downwards
    half = np.hypot(*x)
    d = np.array([width / 2, height / 2]) - c
    return (float(np.sqrt(width * height) / 2 / half), float(d @ x / half ** 2), float(d @ y / half ** 2))


def _blur(array, sigma):
    """Separable Gaussian blur of an [H, W, C] float array (reflect at the edges), numpy only."""
    sigma = float(sigma)
    if sigma <= 0:
        return array.copy()
    radius = max(int(np.ceil(3 * sigma)), 1)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    out = array.astype(np.float32)
    for axis in (0, 1):
        n = out.shape[axis]
        r = min(radius, n - 1)
        k = kernel[radius - r:radius + r + 1] / kernel[radius - r:radius + r + 1].sum()
        widths = [(0, 0)] * out.ndim
        widths[axis] = (r, r)
        padded = np.pad(out, widths, "reflect" if r > 0 else "edge")
        acc = np.zeros_like(out)
        for i, weight in enumerate(k):
            acc += np.float32(weight) * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def crop_quad(image, quad, size, *, supersample=4, pad=True):
    """Resample the square ``quad`` ([4, 2], PIL QUAD order) of a PIL image to ``size`` x ``size``.

    ``quad`` is in pixel-index coordinates (pixel centres on integers, as dlib's landmarks), hence the
    +0.5 to PIL's continuous coordinates (as the FFHQ script).

    As FFHQ: shrink large photos first, crop to the quad plus a border, pad with a blurred reflection
    where the quad leaves the photo (so no black corners), then a bilinear quad transform at
    ``supersample`` x the size and an antialiased resize down.
    """
    from PIL import Image

    image = image.convert("RGB")
    quad = np.array(quad, dtype=np.float64)
    qsize = np.hypot(*(quad[3] - quad[0]))
    # Shrink.
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(image.size[0] / shrink)), int(np.rint(image.size[1] / shrink)))
        image = image.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, image.size[0]), min(crop[3] + border, image.size[1]))
    if crop[2] - crop[0] < image.size[0] or crop[3] - crop[1] < image.size[1]:
        image = image.crop(crop)
        quad -= crop[0:2]
    # Pad.
    lo = np.floor(quad.min(0)).astype(int)
    hi = np.ceil(quad.max(0)).astype(int)
    padding = (max(-lo[0] + border, 0), max(-lo[1] + border, 0),
               max(hi[0] - image.size[0] + border, 0), max(hi[1] - image.size[1] + border, 0))
    if pad and max(padding) > border - 4:
        padding = np.maximum(padding, int(np.rint(qsize * 0.3)))
        array = np.float32(image)
        mode = "reflect" if min(array.shape[:2]) > 1 else "edge"
        array = np.pad(array, ((padding[1], padding[3]), (padding[0], padding[2]), (0, 0)), mode)
        h, w, _ = array.shape
        yy, xx = np.ogrid[:h, :w]
        with np.errstate(divide="ignore", invalid="ignore"):
            mask = np.maximum(1.0 - np.minimum(np.float32(xx) / max(padding[0], 1), np.float32(w - 1 - xx) / max(padding[2], 1)),
                              1.0 - np.minimum(np.float32(yy) / max(padding[1], 1), np.float32(h - 1 - yy) / max(padding[3], 1)))
        mask = mask[:, :, None]
        array += (_blur(array, qsize * 0.02) - array) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        array += (np.median(array, axis=(0, 1)) - array) * np.clip(mask, 0.0, 1.0)
        image = Image.fromarray(np.uint8(np.clip(np.rint(array), 0, 255)), "RGB")
        quad += padding[:2]
    # Transform.
    big = int(size) * max(int(supersample), 1)
    out = image.transform((big, big), Image.Transform.QUAD, tuple((quad + 0.5).flatten()), Image.Resampling.BILINEAR)
    if big != size:
        out = out.resize((int(size), int(size)), Image.Resampling.LANCZOS)
    return out


def area_downscale(image, size):
    """Block-mean (area) downscale of a square PIL image to ``size`` x ``size`` (PIL's BOX filter)."""
    from PIL import Image

    return image.resize((int(size), int(size)), Image.Resampling.BOX)


def default_hr_size(size, at_least=256):
    """The smallest multiple of ``size`` that is >= ``at_least`` (so the area downscale is exact)."""
    size = int(size)
    return size * max(1, -(-int(at_least) // size))


@dataclass
class AlignedFace:
    """One aligned face: ``high`` (PIL, hr_size^2), ``low`` (PIL, size^2, area downscale of ``high``),
    ``quad`` ([4, 2] in the photo's pixels), ``landmarks`` ([68, 2]), ``box`` (detector box l, t, r, b)."""
    high: object
    low: object
    quad: np.ndarray
    landmarks: np.ndarray
    box: Optional[Sequence[int]] = None


def align_from_landmarks(image, landmarks, size=16, *, hr_size=None, framing=DEFAULT_FRAMING, box=None):
    """Align one face of a PIL image from its 68 landmarks: the high-res crop and its ``size`` version."""
    hr_size = default_hr_size(size) if hr_size is None else int(hr_size)
    if hr_size % int(size):
        raise ValueError(f"hr_size {hr_size} must be a multiple of size {size} (for an exact area downscale)")
    quad = face_quad(landmarks, framing)
    high = crop_quad(image, quad, hr_size)
    return AlignedFace(high=high, low=area_downscale(high, size), quad=quad,
                       landmarks=np.asarray(landmarks, dtype=np.float64), box=box)


# --------------------------------------------------------------------------------------------------
# detection (dlib)

def import_dlib():
    try:
        import dlib
    except ImportError:
        raise AlignError(f"face alignment needs dlib and its landmark model, which are not installed: "
                         f"{INSTALL_HINT}") from None
    return dlib


def find_landmarks_model(path=None):
    """The 68-point shape predictor file: ``path`` if given, else face-recognition-models' copy (found
    without importing it: its __init__ needs pkg_resources), else Debian's libdlib-data one."""
    if path is not None:
        if not os.path.isfile(path):
            raise AlignError(f"--landmarks {path}: no such file")
        return str(path)
    candidates = []
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidates.append(os.path.join(location, "models", LANDMARKS_FILE))
    candidates.extend(SYSTEM_LANDMARKS)
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise AlignError(f"face alignment needs dlib's 68-point landmark model ({LANDMARKS_FILE}), which was not "
                     f"found: {INSTALL_HINT} (or apt install libdlib-data, or pass --landmarks PATH)")


class FaceAligner:
    """dlib's HOG frontal face detector + 68-point landmarks + :func:`align_from_landmarks`.

    Build once (loading the model takes ~1 s) and call :meth:`align` per photo.
    """

    def __init__(self, landmarks_path=None, *, upsample=1, min_score=DEFAULT_MIN_SCORE):
        dlib = import_dlib()
        self.landmarks_path = find_landmarks_model(landmarks_path)
        self.detector = dlib.get_frontal_face_detector()
        try:
            self.predictor = dlib.shape_predictor(self.landmarks_path)
        except RuntimeError as exc:
            raise AlignError(f"cannot load landmark model {self.landmarks_path}: {exc}") from None
        self.upsample = int(upsample)
        self.min_score = float(min_score)

    def landmarks(self, image):
        """[(box, [68, 2] landmarks)] for every face dlib finds in a PIL image (detector score >=
        ``min_score``), left to right."""
        array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        found = []
        boxes, scores, _ = self.detector.run(array, self.upsample, min(self.min_score, 0.0))
        for det, score in zip(boxes, scores):
            if score < self.min_score:
                continue
            shape = self.predictor(array, det)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            found.append(((det.left(), det.top(), det.right(), det.bottom()), points))
        found.sort(key=lambda item: (item[0][0], item[0][1]))
        return found

    def align(self, image, size=16, *, hr_size=None, framing=DEFAULT_FRAMING) -> List[AlignedFace]:
        """Every face of a PIL image, aligned; raises :class:`NoFaceError` when there is none."""
        faces = [align_from_landmarks(image, points, size, hr_size=hr_size, framing=framing, box=box)
                 for box, points in self.landmarks(image)]
        if not faces:
            raise NoFaceError("no face found")
        return faces


def align_path(path, aligner, size=16, **kwargs) -> List[AlignedFace]:
    """Read ``path`` as ``pulse-ext upscale`` does (EXIF rotation, any mode) and align its faces."""
    from pulse_ext.io import read_image

    return aligner.align(read_image(path), size, **kwargs)


def face_names(stem, count):
    """Output stems for the faces of one photo: ``stem_face0``, ``stem_face1``, …"""
    return [f"{Path(stem).name}_face{i}" for i in range(count)]

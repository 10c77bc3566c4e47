"""Face-quality metrics for pulse_ext's generators: FD-dlib and KID on dlib face embeddings, plus grid writers.

FD-dlib is a Fréchet distance (as in FID) between Gaussians fitted to 128-D dlib face descriptors
(``dlib_face_recognition_resnet_model_v1.dat`` from ``face-recognition-models==0.3.0``, run by
``dlib-bin==20.0.1.post1``). The recipe (docs in ``/work/shared/data/README.md``, "A face-quality metric"):

    64-px RGB uint8 -> resize to 200x200 bicubic -> HOG frontal detector ``det.run(img, 0, 0.0)``
    -> best box, else the mean UTKFace box (11, 8, 190, 189) so every image counts
    -> 5-point landmarks -> ``dlib.get_face_chip(img, shape, 150, 0.25)`` -> ``compute_face_descriptor``

dlib needs contiguous uint8 HxWx3 *RGB* (BGR gives wrong embeddings silently). FD depends on N: compare
only at equal N and always report the real-vs-real floor at that N.

Everything except ``DlibEmbedder`` is numpy-only (tested without dlib in tests/test_face_metrics.py).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import zipfile
from typing import Optional, Tuple

import numpy as np

DLIB_INSTALL_HINT = ("FD-dlib needs the optional dev dependencies dlib and face-recognition-models:\n"
                     "    pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0")

MEAN_UTKFACE_BOX = (11, 8, 190, 189)  # left, top, right, bottom in the 200x200 frame
EMBED_SIZE = 200


# ----------------------------------------------------------------------------------------- statistics

def gaussian_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of features [N, D], in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((a + a.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) for covariance matrices S1, S2 (PSD).

    Tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2), so no complex sqrtm and no scipy.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets [N, D] and [M, D]."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def kid(features_a: np.ndarray, features_b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> Tuple[float, float]:
    """Kernel Inception Distance on any features: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3.

    Averaged over ``num_subsets`` random subsets of m = min(subset_size, N, M) rows of each set (drawn
    without replacement within a subset, seeded). Returns (mean, std over subsets). Unbiased: about 0
    (can be slightly negative) for two samples of one distribution, at any m.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {a.shape} and {b.shape}")
    d = a.shape[1]
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 rows in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(num_subsets)):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2 * kxy.mean())
        values.append(mmd)
    values = np.asarray(values)
    return float(values.mean()), float(values.std())


# ----------------------------------------------------------------------------------------- image grids

def make_grid(images: np.ndarray, ncols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 images [N, H, W, 3] -> one uint8 grid [rows*(H+pad)+pad, ncols*(W+pad)+pad, 3], row-major.

    Cells beyond N (the last row's tail) are left at ``pad_value``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C] with C in (1, 3), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    ncols = max(1, int(ncols))
    rows = max(1, -(-n // ncols))
    grid = np.full((rows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def nearest_upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """[N, h, w, C] -> [N, h*factor, w*factor, C] by pixel repetition (for displaying tiny inputs)."""
    return np.repeat(np.repeat(np.asarray(images), factor, axis=1), factor, axis=2)


def area_downscale(images: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, H/f, W/f, C] by block means (the "area" downscaler PULSE matches), rounded."""
    x = np.asarray(images, np.float64)
    n, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"size {h}x{w} is not divisible by {factor}")
    x = x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str, palette: bool = False) -> int:
    """Write a uint8 HxWx3 array as an optimised PNG; returns its size in bytes.

    palette=True stores a 256-colour adaptive palette (median cut): ~2x smaller for committed figures,
    visually close; metrics are never computed from the written files."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image = Image.fromarray(np.asarray(array))
    if palette:
        image = image.quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True, compress_level=9)
    return os.path.getsize(path)


# ----------------------------------------------------------------------------------------- dlib

def dlib_models_dir() -> Optional[str]:
    """The ``models/`` folder of face_recognition_models, found without importing it (its __init__ needs
    pkg_resources, which current setuptools no longer ships). None when not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "models")
        if os.path.isdir(candidate):
            return candidate
    return None


def dlib_missing_reason() -> Optional[str]:
    """None when dlib and the model files are usable, else a message saying what to install."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed. " + DLIB_INSTALL_HINT
    models = dlib_models_dir()
    if models is None:
        return "face_recognition_models is not installed. " + DLIB_INSTALL_HINT
    for name in ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"):
        if not os.path.isfile(os.path.join(models, name)):
            return f"{name} is missing from {models}. " + DLIB_INSTALL_HINT
    return None


# Part of the cache key: change it whenever embed_one's recipe changes, so older cache files are not reused.
EMBED_RECIPE = f"resize{EMBED_SIZE}-bicubic|hog0|fallback{MEAN_UTKFACE_BOX}|landmarks5|chip150/0.25|resnet_v1"


def embedding_key(images: np.ndarray, versions: str) -> str:
    """A hash naming one set of images embedded by EMBED_RECIPE with these library/model versions."""
    h = hashlib.sha256()
    h.update(f"{images.dtype}|{images.shape}|{EMBED_RECIPE}|{versions}|".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:24]


class DlibEmbedder:
    """128-D dlib face descriptors for small face images, by the FD-dlib recipe (see the module docstring)."""

    def __init__(self):
        reason = dlib_missing_reason()
        if reason is not None:
            raise RuntimeError(reason)
        import dlib

        models = dlib_models_dir()
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat"))
        self.encoder = dlib.face_recognition_model_v1(os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat"))
        self.fallback_box = dlib.rectangle(*MEAN_UTKFACE_BOX)
        import PIL

        sizes = [os.path.getsize(os.path.join(models, name)) for name in
                 ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")]
        self.versions = f"dlib {dlib.__version__}|Pillow {PIL.__version__}|models {sizes}"

    def embed_one(self, image: np.ndarray) -> Tuple[np.ndarray, bool]:
        """uint8 HxWx3 RGB -> (descriptor [128] float64, whether the HOG detector found a face)."""
        from PIL import Image

        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
        big = Image.fromarray(image, "RGB").resize((EMBED_SIZE, EMBED_SIZE), Image.BICUBIC)
        img = np.ascontiguousarray(np.asarray(big, dtype=np.uint8))
        boxes, scores, _ = self.detector.run(img, 0, 0.0)
        if len(boxes):
            box, found = boxes[int(np.argmax(scores))], True
        else:
            box, found = self.fallback_box, False
        shape = self.shape_predictor(img, box)
        chip = self._dlib.get_face_chip(img, shape, 150, 0.25)
        descriptor = np.asarray(self.encoder.compute_face_descriptor(np.ascontiguousarray(chip)), np.float64)
        return descriptor, found

    def embed(self, images: np.ndarray, progress: Optional[str] = None,
              cache_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
        """uint8 [N, H, W, 3] RGB -> (descriptors [N, 128], detected [N] bool).

        cache_dir: keep the result in ``<cache_dir>/<key>.npz``, the key a hash of the images' bytes and
        shape, the recipe and the dlib version, and reuse it when the same images come again (the real
        face sets of an evaluation are the same every time; embedding costs ~0.1 s per image).
        """
        images = np.ascontiguousarray(images)
        path = None
        if cache_dir:
            path = os.path.join(cache_dir, f"dlib-{embedding_key(images, self.versions)}.npz")
            cached = _read_cached_embeddings(path, len(images))
            if cached is not None:
                return cached
        features, detected = [], []
        iterator = images
        if progress:
            try:
                from tqdm import tqdm
                iterator = tqdm(images, desc=progress, leave=False, mininterval=5)
            except ImportError:
                pass
        for image in iterator:
            f, ok = self.embed_one(image)
            features.append(f)
            detected.append(ok)
        features, detected = np.stack(features), np.asarray(detected, bool)
        if path:
            _write_cached_embeddings(path, features, detected)
        return features, detected


def _read_cached_embeddings(path: str, n: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(features [n, 128], detected [n]) from a cache file, or None when it is missing or unusable
    (an unreadable or malformed file is removed, so it is rebuilt)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as cached:
            features, detected = cached["features"], cached["detected"]
        if features.shape == (n, 128) and detected.shape == (n,) and detected.dtype == bool:
            return features, detected
        problem = f"shapes {features.shape} / {detected.shape}"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        problem = f"{type(e).__name__}: {e}"
    print(f"embedding cache: ignoring {path} ({problem}); embedding again", file=sys.stderr)
    try:
        os.remove(path)
    except OSError:
        pass
    return None


def _write_cached_embeddings(path: str, features: np.ndarray, detected: np.ndarray) -> None:
    """Atomically write a cache file; a failure (read-only folder, full disk) only costs the cache."""
    partial = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".partial.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, features=features, detected=detected)
        os.replace(partial, path)  # a reader never sees a half-written file
        partial = None
    except OSError as e:
        print(f"embedding cache: could not write {path} ({e}); continuing without it", file=sys.stderr)
    finally:
        if partial is not None and os.path.exists(partial):
            os.remove(partial)

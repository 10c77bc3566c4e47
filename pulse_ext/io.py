"""Reading images: the one reader behind ``pulse_ext.upscale()``, alignment and the command line.

Library code: errors are :class:`ImageReadError` (a ``ValueError``) naming the file and the problem;
the command line turns them into one-line messages and exit codes.
"""
from __future__ import annotations

import os
import warnings


class ImageReadError(ValueError):
    """An input image that cannot be read: missing, a folder, not an image, corrupt, or too large."""


def open_image(path):
    """Open ``path`` with PIL, fully loaded, with its EXIF orientation applied (a phone photo stored
    sideways comes out upright). Refuses PIL's decompression bombs (more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) instead of warning. Returns a PIL image in the file's mode."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(f"input not found: {path}")
    if os.path.isdir(path):
        raise ImageReadError(f"input is a folder, not an image: {path}")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are a refusal here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                if image is opened:
                    image = opened.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageReadError(f"cannot read {path}: more than {Image.MAX_IMAGE_PIXELS} pixels (PIL's "
                             f"decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS); shrink it first") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read {path}: not an image format PIL knows") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt files, unreadable files
        raise ImageReadError(f"cannot read {path}: {exc}") from None
    return image


def to_rgb_or_gray(image, channels: int = 3):
    """A PIL image of any mode as RGB (channels=3) or L (channels=1), 8 bits per channel.

    High bit-depth gray (I, I;16*, F) is scaled by its range (0..65535 when any value exceeds 255,
    else 0..255) instead of being clipped by PIL's convert, which turns a 16-bit photo nearly white;
    palette and alpha images honour their transparency before the alpha is dropped.
    """
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") and channels == 3:
        image = image.convert("RGBA")  # honour palette transparency; alpha is then dropped
    target = "RGB" if channels == 3 else "L"
    return image if image.mode == target else image.convert(target)


def read_image(path, channels: int = 3):
    """``open_image`` then ``to_rgb_or_gray``: the file at ``path`` as an RGB (or L) PIL image."""
    return to_rgb_or_gray(open_image(path), channels)

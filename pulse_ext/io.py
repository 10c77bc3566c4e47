"""Images in and out: the one reader behind ``pulse_ext.upscale()``, alignment, folder jobs, the demo
and the command line, and the atomic writers of their outputs.

Library code: errors are :class:`ImageReadError` (reading) and :class:`~pulse_ext.errors.UserError`
(writing), both ``ValueError`` subclasses naming the file and the problem; the command line turns them
into one-line messages and exit codes, the demo into a message in the page.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

from pulse_ext.errors import UserError

# Output file extensions PIL can write (checked again against PIL's registry at run time).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")


class ImageReadError(UserError):
    """An input image that cannot be read: missing, a folder, not an image, corrupt, or too large."""


def open_image(source, name=None):
    """Open an image file (a path) or an image held in memory (``bytes``, e.g. an upload) with PIL,
    fully loaded, with its EXIF orientation applied (a phone photo stored sideways comes out upright).
    Refuses PIL's decompression bombs (more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) instead of
    warning. ``name`` stands for the image in messages (default: the path, or "upload"). Returns a PIL
    image in the file's mode; raises :class:`ImageReadError`."""
    import io as _io

    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "upload"
        if not len(source):
            raise ImageReadError(f"cannot read {name}: it is empty (0 bytes)")
        stream = _io.BytesIO(bytes(source))
    else:
        source = os.fspath(source)
        name = name or source
        if not os.path.exists(source):
            raise ImageReadError(f"input not found: {source}")
        if os.path.isdir(source):
            raise ImageReadError(f"input is a folder, not an image: {source}")
        stream = source
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are a refusal here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                if image is opened:
                    image = opened.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageReadError(f"cannot read {name}: more than {Image.MAX_IMAGE_PIXELS} pixels (PIL's "
                             f"decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS); shrink it first") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read {name}: not an image format PIL knows") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt files, unreadable files
        raise ImageReadError(f"cannot read {name}: {exc}") from None
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


def read_image(source, channels: int = 3, name=None):
    """``open_image`` then ``to_rgb_or_gray``: a file (path) or encoded bytes as an RGB (or L) PIL image."""
    return to_rgb_or_gray(open_image(source, name), channels)


# --------------------------------------------------------------------------------------------------
# writing

def image_format(suffix):
    """PIL's format name for writing files ending in ``suffix`` (".png"), or None if PIL cannot write it."""
    from PIL import Image

    fmt = Image.registered_extensions().get(suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        return None
    return fmt


def probe_writable(directory, what):
    """Create and remove a temporary file in ``directory``; UserError "cannot write {what}: …" if that fails."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".pulse-ext-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write {what}: {directory}: {exc.strerror or exc}") from None


def make_output_folder(folder):
    """``mkdir -p folder`` (nothing for None); UserError naming the folder if it cannot be made."""
    if folder is not None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """``write(tmp_path)`` into a temporary file beside ``path``, then rename it to ``path``.

    Whatever goes wrong (an exception, Ctrl-C), the temporary file is removed and ``path`` is left as
    it was. An OSError (disk full, permissions) becomes a one-line :class:`UserError`.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def save_image(image, path):
    """Write a PIL image atomically, in the format of ``path``'s extension (JPEG at quality 95)."""
    fmt = image_format(Path(path).suffix)
    if fmt is None:
        raise UserError(f"cannot write {path}: PIL cannot write {Path(path).suffix or 'extension-less'} files")
    if fmt == "JPEG":
        atomic_write(path, lambda tmp: image.save(tmp, format=fmt, quality=95))
    else:
        atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def save_gif(frames, path, frame_ms=120):
    """Write PIL ``frames`` as a looping animated GIF, atomically."""
    def write(tmp):
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    atomic_write(path, write)


def save_json(data, path):
    """Write ``data`` as indented JSON, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    atomic_write(path, write)

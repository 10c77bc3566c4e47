"""pulse_ext.io: the one image reader. upscale() and the command line must see the same tensor for
the same file, whatever its mode, bit depth or EXIF orientation."""
import numpy as np
import pytest
import torch
from PIL import Image

from pulse_ext import io
from pulse_ext.cli import UsageError
from pulse_ext.cli_upscale import read_image as cli_read_image
from pulse_ext.upscale import image_to_tensor


def _cli_tensor(path, channels=3):
    return image_to_tensor(cli_read_image(str(path), channels), channels)


def test_16_bit_gray_png_reaches_upscale_as_the_cli_reads_it(tmp_path):
    """A 16-bit gray PNG of mean ~0.536 used to reach the search through upscale() as ~0.999 (PIL's
    convert clips 16-bit values at 255)."""
    values = np.linspace(0.07, 1.0, 16 * 16).reshape(16, 16)
    path = tmp_path / "gray16.png"
    Image.fromarray((values * 65535).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    x = image_to_tensor(str(path))
    assert x.shape == (1, 3, 16, 16)
    assert abs(float(x.mean()) - values.mean()) < 0.01
    torch.testing.assert_close(x, _cli_tensor(path))
    # ... and the same image opened by the caller as a PIL image
    torch.testing.assert_close(image_to_tensor(Image.open(path)), x)


def test_exif_orientation_is_applied_by_upscale_too(tmp_path):
    array = np.zeros((8, 16, 3), dtype=np.uint8)
    array[:, :8] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 degrees clockwise to display"
    path = tmp_path / "sideways.jpg"
    image.save(path, exif=exif, quality=95)
    x = image_to_tensor(path)
    assert x.shape == (1, 3, 16, 8)  # upright: the stored 16-wide image displays 8 wide
    torch.testing.assert_close(x, _cli_tensor(path))


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "L", "RGB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_gives_the_same_tensor_through_upscale_and_the_cli(tmp_path, mode, channels):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"img-{mode}.png"
    image.save(path)
    torch.testing.assert_close(image_to_tensor(path, channels), _cli_tensor(path, channels))


def test_unreadable_inputs_are_library_errors_and_cli_usage_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "folder").mkdir()
    cases = [(tmp_path / "missing.png", "input not found"), (tmp_path / "folder", "is a folder"),
             (tmp_path / "broken.png", "cannot read")]
    for path, message in cases:
        with pytest.raises(io.ImageReadError, match=message):
            image_to_tensor(path)
        with pytest.raises(UsageError, match=message):
            cli_read_image(str(path))


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(io.ImageReadError, match="decompression-bomb limit"):
        io.read_image(path)

"""pulse_ext.io: the one image reader. upscale() and the command line must see the same tensor for
the same file, whatever its mode, bit depth or EXIF orientation."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_ext import io
from pulse_ext.errors import UserError
from pulse_ext.upscale import image_to_tensor


class _Captured(Exception):
    def __init__(self, image):
        self.image = image


_GRAY_GENERATOR = {}


def _gray_generator(folder):
    """A tiny 1-channel generator saved once, so that the CLI reads inputs as a gray generator needs."""
    if "path" not in _GRAY_GENERATOR:
        from pulse_ext.checkpoints import save_generator
        from pulse_ext.stylegan2 import Generator

        torch.manual_seed(0)
        G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=1,
                      mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=8))
        path = Path(folder) / "gray16.safetensors"
        save_generator(G, path)
        _GRAY_GENERATOR["path"] = path
    return _GRAY_GENERATOR["path"]


def _cli_tensor(path, channels=3):
    """The tensor ``pulse-ext upscale PATH`` searches for with a ``channels``-channel generator: main()
    runs up to the search, whose image is captured (a stand-in upscale() raises with it), then
    converted as upscale() converts PIL images."""
    import pulse_ext.files as files
    from pulse_ext.cli import main

    generator = ["--generator", str(_gray_generator(Path(path).parent))] if channels == 1 else []

    def capture(image, **kwargs):
        raise _Captured(image)

    real = files.upscale
    files.upscale = capture
    try:
        with pytest.raises(_Captured) as caught:
            main(["upscale", str(path), "-o", str(Path(path).parent / "out"), "--resize", "-q", *generator])
    finally:
        files.upscale = real
    return image_to_tensor(caught.value.image, channels)


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


def test_unreadable_inputs_are_library_errors_and_cli_usage_errors(tmp_path, capsys):
    from pulse_ext.cli import main

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "folder").mkdir()
    cases = [(tmp_path / "missing.png", "input not found"), (tmp_path / "folder", "is a folder"),
             (tmp_path / "broken.png", "cannot read")]
    for path, message in cases:
        with pytest.raises(io.ImageReadError, match=message):
            image_to_tensor(path)
        assert issubclass(io.ImageReadError, UserError)
        if path.is_dir():  # the command line takes a folder as a folder job
            continue
        assert main(["upscale", str(path), "-o", str(tmp_path / "out.png"), "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
        assert not (tmp_path / "out.png").exists()


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(io.ImageReadError, match="decompression-bomb limit"):
        io.read_image(path)


def test_every_input_kind_gives_the_same_tensor(tmp_path):
    """A path, the file's bytes, the PIL image, its numpy array and a uint8 tensor are one image."""
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (11, 13, 3), dtype=np.uint8)
    path = tmp_path / "face.png"
    Image.fromarray(array).save(path)
    expected = _cli_tensor(path)
    kinds = [path, str(path), path.read_bytes(), bytearray(path.read_bytes()), Image.open(path), array,
             torch.from_numpy(array).permute(2, 0, 1)]
    for kind in kinds:
        torch.testing.assert_close(image_to_tensor(kind), expected, msg=f"input kind {type(kind).__name__}")


def test_uploaded_bytes_get_the_file_checks(monkeypatch):
    with pytest.raises(io.ImageReadError, match="cannot read photo.jpg: it is empty"):
        io.read_image(b"", name="photo.jpg")
    with pytest.raises(io.ImageReadError, match="cannot read upload: not an image format"):
        io.read_image(b"GIF89a? no, just text")
    buffer = __import__("io").BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(io.ImageReadError, match="decompression-bomb"):
        io.read_image(buffer.getvalue())


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.png"

    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError):
        io.atomic_write(target, broken)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="cannot write .*missing"):
        io.save_image(Image.new("RGB", (2, 2)), tmp_path / "missing" / "x.png")
    with pytest.raises(UserError, match="PIL cannot write .xyz"):
        io.save_image(Image.new("RGB", (2, 2)), tmp_path / "x.xyz")


def test_no_library_module_imports_the_command_line():
    """Arrows point down: the CLI modules (pulse_ext.cli*, and the modules registered as subcommands)
    import the library, never the other way round. Checked from every import statement, including those
    inside functions."""
    import ast

    import pulse_ext
    from pulse_ext.cli import SUBCOMMANDS

    root = Path(pulse_ext.__file__).parent
    cli_modules = {target.partition(":")[0] for target in SUBCOMMANDS.values()} | {"pulse_ext.__main__"}
    cli_modules |= {f"pulse_ext.{p.stem}" for p in root.glob("cli*.py")}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("pulse_ext",) + path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if module in cli_modules:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            offenders += [f"{module} imports {name}" for name in names if name in cli_modules]
    assert "pulse_ext.cli_upscale" in cli_modules and "pulse_ext.checkpoints.commands" in cli_modules
    assert not offenders, offenders

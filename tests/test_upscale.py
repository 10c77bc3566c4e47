"""pulse_ext.upscale: input conversion and validation, candidates, warnings, generator resolution."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reachable_targets, tiny_search_generator
from pulse_ext.upscale import (PulseConvergenceWarning, PulseMemoryWarning, UpscaleResult, image_to_tensor, upscale,
                               valid_input_sizes)

FAST = dict(stats_samples=1000, realism_check="off")  # the random test generator draws no faces


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def G():
    return tiny_search_generator()


@pytest.fixture(scope="module")
def face(G):
    """A 4x4 input the generator can produce, [3, 4, 4] in [0, 1]."""
    return reachable_targets(G, 1)[0]


def test_image_to_tensor_conversions():
    rgb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float().unsqueeze(0) / 255
    torch.testing.assert_close(image_to_tensor(rgb), expected)
    torch.testing.assert_close(image_to_tensor(Image.fromarray(rgb)), expected)
    torch.testing.assert_close(image_to_tensor(Image.fromarray(rgb).convert("RGBA")), expected)
    torch.testing.assert_close(image_to_tensor(torch.from_numpy(rgb).permute(2, 0, 1)), expected)
    torch.testing.assert_close(image_to_tensor(expected), expected)
    torch.testing.assert_close(image_to_tensor(expected[0]), expected)
    torch.testing.assert_close(image_to_tensor(rgb.astype(np.float64) / 255), expected)
    gray = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    assert torch.equal(image_to_tensor(gray), torch.from_numpy(gray).expand(1, 3, 4, 4))
    luma = image_to_tensor(expected, channels=1)
    torch.testing.assert_close(luma[0, 0], 0.299 * expected[0, 0] + 0.587 * expected[0, 1] + 0.114 * expected[0, 2])


@pytest.mark.parametrize("bad, error, message", [
    (np.full((4, 4, 3), 2.0), ValueError, r"values in \[0, 1\].*pass uint8"),
    (torch.full((3, 4, 4), -0.5), ValueError, r"values in \[0, 1\]"),
    (torch.rand(2, 3, 4, 4), ValueError, "one image"),
    (np.zeros((4, 4, 3), dtype=np.int32), ValueError, "uint8"),
    (np.zeros((4, 4, 5), dtype=np.uint8), ValueError, "HxWxC"),
    ([[0.5]], TypeError, "PIL image, numpy array or torch tensor"),
])
def test_image_to_tensor_errors(bad, error, message):
    with pytest.raises(error, match=message):
        image_to_tensor(bad)


@pytest.mark.parametrize("kind", ["pil", "pil_gray", "uint8", "float", "chw", "nchw"])
def test_upscale_accepts_input_types(G, face, kind):
    array = (face.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = {"pil": Image.fromarray(array), "pil_gray": Image.fromarray(array).convert("L"), "uint8": array,
             "float": face.permute(1, 2, 0).numpy(), "chw": face, "nchw": face[None]}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PulseConvergenceWarning)
        out = upscale(image, generator=G, restarts=1, steps=2, seed=0, **FAST)
    assert isinstance(out, Image.Image) and out.size == (16, 16) and out.mode == "RGB"


def test_upscale_input_sizes(G):
    assert valid_input_sizes(16) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match=r"image size 17x17 does not fit the 16x16 generator: the input \(17x17\) "
                                         r"must not be larger"):
        upscale(torch.rand(3, 17, 17), generator=G, restarts=1, steps=1)
    with pytest.raises(ValueError, match="bicubic downscaling needs one integer factor for both sides"):
        upscale(torch.rand(3, 5, 5), generator=G, restarts=1, steps=1, downscale="bicubic")
    with pytest.raises(ValueError, match="bicubic downscaling needs an input of at least 2x2"):
        upscale(torch.rand(3, 1, 1), generator=G, restarts=1, steps=1, downscale="bicubic")
    with pytest.raises(ValueError, match=r"^downscale must be one of"):  # the option, not the size
        upscale(torch.rand(3, 4, 4), generator=G, restarts=1, steps=1, downscale="nearest")
    with pytest.raises(ValueError, match="num_outputs must be between 1 and restarts=2"):
        upscale(torch.rand(3, 4, 4), generator=G, restarts=2, num_outputs=3)


def test_upscale_of_a_size_that_does_not_divide_the_resolution_converges(G):
    """A 6x6 input for the 16-px generator (factor 2.67): compared by exact area averaging; a face the
    generator made, downscaled that way, is found again within eps."""
    from pulse_ext.pulse import area_resample

    with torch.no_grad():
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(5))
        small = area_resample(((G(z, noise_mode="const") + 1) / 2).clamp(0, 1), (6, 6))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PulseConvergenceWarning)
        result = upscale(small, generator=G, restarts=3, steps=100, seed=1, return_result=True, **FAST)
    assert result.candidates[0].size == (16, 16) and all(result.converged) and max(result.l2) < 2e-3
    # the reported L2 is the area-averaged one of the search's (unclamped) best image
    best = result.search.images[0, result.best_index]
    l2 = float((area_resample(best.unsqueeze(0), (6, 6))[0] - small).square().mean())
    assert l2 == pytest.approx(result.l2[0], rel=1e-5)


def test_upscale_converges_and_returns_ranked_distinct_candidates(G, face):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PulseConvergenceWarning)
        result = upscale(face, generator=G, restarts=3, steps=100, num_outputs=3, seed=1, return_result=True, **FAST)
    assert isinstance(result, UpscaleResult) and result.seed == 1
    assert len(result.candidates) == 3 and all(c.size == (16, 16) for c in result.candidates)
    assert all(result.converged) and max(result.l2) < 2e-3
    assert sorted(result.restart_indices) == [0, 1, 2] and result.best_index == result.restart_indices[0]
    losses = [float(result.search.loss[0, r]) for r in result.restart_indices]
    assert losses == sorted(losses)
    arrays = [np.asarray(c) for c in result.candidates]
    assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[1], arrays[2])
    assert result.image is result.candidates[0]
    assert {"load_s", "stats_s", "search_s", "seconds_per_step", "total_s"} <= set(result.timings)
    assert result.tensors.shape == (3, 3, 16, 16) and 0 <= float(result.tensors.min()) <= float(result.tensors.max()) <= 1
    # Same seed, same picture (every restart searched to the end, as for 3 outputs).
    again = upscale(face, generator=G, restarts=3, steps=100, seed=1, enough_converged=None, **FAST)
    assert np.array_equal(np.asarray(again), arrays[0])


@pytest.mark.parametrize("num_outputs", [1, 2])
def test_upscale_stops_once_num_outputs_restarts_converged(face, num_outputs):
    """By default the search ends at the first read (every 5 steps) that sees num_outputs converged
    restarts: fewer steps, and the candidates are converged restarts with the images the full search
    gives them (float64: other batch sizes round differently in float32)."""
    G64 = tiny_search_generator(dtype=torch.float64)
    options = dict(generator=G64, restarts=6, steps=100, seed=4, num_outputs=num_outputs, return_result=True, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PulseConvergenceWarning)
        full = upscale(face, enough_converged=None, **options)
        quick = upscale(face, **options)
    assert full.search.converged.all() and quick.steps_run < full.steps_run
    assert all(quick.converged) and num_outputs <= int(quick.search.converged.sum()) < 6
    for r in quick.restart_indices:
        torch.testing.assert_close(quick.search.images[0, r], full.search.images[0, r], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="enough_converged works with plain searches only"):
        upscale(face, precision="bf16", enough_converged=1, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PulseConvergenceWarning)  # 10 steps: not meant to converge
        staged = upscale(face, precision="bf16", **{**options, "steps": 10, "num_outputs": 1})  # no rule: runs
    assert staged.search.converged.shape == (1, 6)


def test_upscale_without_convergence_warns_and_returns_the_best(G, face):
    with pytest.warns(PulseConvergenceWarning, match=r"no restart of 3 reached L2 < eps.*Try: .*--framing-search"):
        result = upscale(face, generator=G, restarts=3, steps=3, eps=1e-12, seed=2, return_result=True,
                         progress=True, **FAST)
    assert not any(result.converged)
    assert result.best_index == int(result.search.loss[0].argmin())
    expected = (result.search.images[0, result.best_index].clamp(0, 1) * 255).round().to(torch.uint8)
    assert np.array_equal(np.asarray(result.image), expected.permute(1, 2, 0).numpy())
    with pytest.warns(PulseConvergenceWarning):
        images = upscale(face, generator=G, restarts=3, steps=3, eps=1e-12, seed=2, num_outputs=2, **FAST)
    assert isinstance(images, list) and len(images) == 2


def test_upscale_resolves_generator_names_through_checkpoints(G, face, monkeypatch):
    import pulse_ext.checkpoints as checkpoints

    calls = []

    def fake_load_generator(path_or_name, device="cpu"):
        calls.append((path_or_name, str(device)))
        return G

    monkeypatch.setattr(checkpoints, "load_generator", fake_load_generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PulseConvergenceWarning)
        upscale(face, restarts=1, steps=1, device="cpu", **FAST)
        upscale(face, generator="some/file.safetensors", restarts=1, steps=1, device="cpu", **FAST)
    assert calls == [("default", "cpu"), ("some/file.safetensors", "cpu")]
    with pytest.raises(TypeError, match="generator must be"):
        upscale(face, generator=42, restarts=1, steps=1)


def test_restarts_that_do_not_fit_the_memory_are_searched_in_batches_with_the_same_results(face, monkeypatch):
    """On the CPU the restarts' memory is estimated before the search: when they do not fit what is
    available, they run in batches (a PulseMemoryWarning says so) and give the same images (float64: in
    float32 library convolutions round differently per batch size)."""
    from pulse_ext.pulse import batching

    G = tiny_search_generator(dtype=torch.float64)
    options = dict(generator=G, restarts=5, steps=6, eps=1e-12, seed=3, num_outputs=5, return_result=True, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PulseConvergenceWarning)
        whole = upscale(face, **options)
        monkeypatch.setattr(batching, "available_cpu_bytes", lambda: int(2.5 * batching.cpu_row_bytes(G) / 0.8))
        with pytest.warns(PulseMemoryWarning, match="5 restarts need about .* and 2 fit the memory available now"):
            parts = upscale(face, **options)
    assert parts.search.timings["splits"] == 2 and parts.search.seeds == whole.search.seeds
    torch.testing.assert_close(parts.search.images, whole.search.images, rtol=1e-9, atol=1e-9)
    assert parts.restart_indices == whole.restart_indices


def test_cpu_batches_larger_than_the_efficient_size_are_searched_in_parts_silently(face, monkeypatch):
    """Beyond cpu_efficient_rows a CPU step gets slower per restart (config-f 1024 px: 2 rows): such
    searches run in parts of that size, with the same images and no memory warning."""
    from pulse_ext.pulse import batching

    G = tiny_search_generator(dtype=torch.float64)
    options = dict(generator=G, restarts=5, steps=6, eps=1e-12, seed=3, num_outputs=5, return_result=True, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PulseConvergenceWarning)
        whole = upscale(face, **options)
        monkeypatch.setattr(batching, "CPU_EFFICIENT_BATCH_BYTES", 2 * batching.activation_bytes(G))
        assert batching.cpu_efficient_rows(G) == 2
        warnings.simplefilter("error", PulseMemoryWarning)
        parts = upscale(face, **options)
    assert "splits" not in whole.search.timings
    assert parts.search.timings["splits"] == 2 and parts.search.seeds == whole.search.seeds
    torch.testing.assert_close(parts.search.images, whole.search.images, rtol=1e-9, atol=1e-9)
    assert parts.restart_indices == whole.restart_indices
    monkeypatch.setattr(batching, "CPU_EFFICIENT_BATCH_BYTES", 0)
    assert batching.cpu_efficient_rows(G) == 1  # never below one row


def test_upscale_reports_a_diagnosis(G, face):
    result = upscale(face, generator=G, restarts=2, steps=3, eps=1e-12, seed=2, return_result=True,
                     stats_samples=1000, realism_check="off")
    assert result.diagnosis.met_eps is False and result.diagnosis.best_l2 == result.l2[0]
    assert "--framing-search" in result.diagnosis.advice  # a 4x4 input: a tiny one
    photo = upscale(face, generator=G, restarts=2, steps=3, eps=1e-12, seed=2, return_result=True,
                    stats_samples=1000, realism_check="off", original_size=(640, 480))
    assert "--align" in photo.diagnosis.advice
    with pytest.raises(ValueError, match="realism_check"):
        upscale(face, generator=G, realism_check="sometimes")

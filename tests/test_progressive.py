"""Staged search: progressive search resolution (PULSE(search_resolution=...)) and bf16 convolutions
(PULSE(precision="bf16")): truncated synthesis, validation, end to end."""
import pytest
import torch
import torch.nn.functional as F

from pulse_ext.pulse import PULSE
from pulse_ext.pulse.progressive import check_search_resolution, truncated_synthesis

from conftest import reachable_targets, tiny_search_generator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def G():
    return tiny_search_generator()


@pytest.fixture(scope="module")
def target(G):
    return reachable_targets(G, 1)


def test_truncated_synthesis_at_full_resolution_is_the_network(G):
    ws = torch.randn(2, G.num_ws, G.w_dim)
    noise = [torch.randn(2, 1, r, r) for _, r in G.synthesis.noise_shapes()]
    with torch.no_grad():
        full = G.synthesis(ws, noise_mode="const", noise=noise)
        assert torch.equal(truncated_synthesis(G.synthesis, ws, 16, noise=noise), full)
        coarse = truncated_synthesis(G.synthesis, ws, 8, noise=noise)
    assert coarse.shape == (2, 3, 8, 8)


def test_search_resolution_validation(G):
    assert check_search_resolution(G, None) is None
    assert check_search_resolution(G, 16) is None  # full resolution = ordinary search
    assert check_search_resolution(G, 8) == 8
    for bad in (3, 6, 32):
        with pytest.raises(ValueError, match="search_resolution"):
            PULSE(G, search_resolution=bad)
    with pytest.raises(ValueError, match="refine_steps"):
        PULSE(G, search_resolution=8, refine_steps=-1)


@pytest.mark.parametrize("search_resolution", [4, 8])  # below and above the 6x6 target size
def test_progressive_search_with_a_size_that_does_not_divide(G, target, search_resolution):
    """A 6x6 target: the coarse image is upsampled to at least 6 px and compared by exact area
    averaging, and so is the full-resolution result."""
    from pulse_ext.pulse import area_resample

    target6 = F.interpolate(target, size=(6, 6), mode="bilinear")
    options = dict(steps=6, eps=1e-9, latent_stats=dict(mean=torch.zeros(32), std=torch.ones(32)))
    result = PULSE(G, search_resolution=search_resolution, refine_steps=2, **options).search(target6, restarts=2, seed=3)
    assert result.images.shape == (1, 2, 3, 16, 16)
    l2 = (area_resample(result.images[0], (6, 6)) - target6).square().mean((1, 2, 3))
    torch.testing.assert_close(result.l2[0], l2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("search_resolution", [4, 8])  # below and at/above the 4x4 target size
def test_progressive_search_returns_full_resolution_results(G, target, search_resolution):
    options = dict(steps=6, eps=1e-9, latent_stats=dict(mean=torch.zeros(32), std=torch.ones(32)))
    result = PULSE(G, search_resolution=search_resolution, refine_steps=2, **options).search(target, restarts=2, seed=3)
    assert result.images.shape == (1, 2, 3, 16, 16)
    assert result.steps_run == 6 + 3 and result.timings["full_resolution_steps"] == 3
    # L2 describes the full-resolution image, area-downscaled
    l2 = (F.avg_pool2d(result.images[0], 4) - target).square().mean((1, 2, 3))
    torch.testing.assert_close(result.l2[0], l2, rtol=1e-4, atol=1e-7)
    # deterministic
    again = PULSE(G, search_resolution=search_resolution, refine_steps=2, **options).search(target, restarts=2, seed=3)
    assert torch.equal(again.images, result.images)


def test_progressive_converged_rows_are_checked_at_full_resolution(G, target):
    # A huge eps: everything converges in the coarse phase, then the full-resolution check (step 0 of the
    # refinement) confirms it and no refinement step runs.
    options = dict(steps=5, eps=10.0, latent_stats=dict(mean=torch.zeros(32), std=torch.ones(32)))
    result = PULSE(G, search_resolution=8, refine_steps=4, **options).search(target, restarts=2, seed=1)
    assert bool(result.converged.all())
    assert result.timings["full_resolution_steps"] == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_upscale_forwards_search_resolution(G, target):
    from pulse_ext.upscale import upscale
    out = upscale(target[0], generator=G, restarts=2, steps=3, seed=0, search_resolution=8, refine_steps=1,
                  eps=1e-9, latent_stats=dict(mean=torch.zeros(32), std=torch.ones(32)), return_result=True)
    assert out.tensors.shape == (1, 3, 16, 16) and out.steps_run == 3 + 2


def test_precision_validation(G):
    with pytest.raises(ValueError, match="precision must be one of"):
        PULSE(G, precision="fp16")


@pytest.mark.parametrize("search_resolution", [None, 8])
def test_bf16_search_then_fp32_check(G, target, monkeypatch, search_resolution):
    from pulse_ext import ops

    seen = []
    real = ops.modulated_conv2d

    def recording(*args, conv_dtype=None, **kwargs):
        seen.append(conv_dtype)
        return real(*args, conv_dtype=conv_dtype, **kwargs)

    monkeypatch.setattr(ops, "modulated_conv2d", recording)
    options = dict(steps=4, eps=1e-9, latent_stats=dict(mean=torch.zeros(32), std=torch.ones(32)))
    result = PULSE(G, precision="bf16", search_resolution=search_resolution, refine_steps=2,
                   **options).search(target, restarts=2, seed=3)
    assert G.conv_dtype is None  # restored
    assert result.timings["coarse_steps"] == 4 and result.timings["full_resolution_steps"] == 3
    # The search phase ran its 3x3 convolutions in bf16; the final check and refinement in fp32.
    convs_per_pass = len([m for m in G.modules() if type(m).__name__ == "SynthesisLayer"])
    assert torch.bfloat16 in seen and seen[-convs_per_pass:] == [None] * convs_per_pass
    # Results describe the fp32 full-resolution image.
    assert result.images.dtype == torch.float32 and result.images.shape == (1, 2, 3, 16, 16)
    l2 = (F.avg_pool2d(result.images[0], 4) - target).square().mean((1, 2, 3))
    torch.testing.assert_close(result.l2[0], l2, rtol=1e-4, atol=1e-7)


def test_bf16_search_reaches_the_fp32_search_l2(G, target):
    # Not bit-identical trajectories, but the same optimisation: the best L2 reached in 30 steps must be
    # of the same size (bf16 rounds each convolution to ~3 significant digits).
    options = dict(steps=30, eps=1e-9, latent_stats=dict(mean=torch.zeros(32), std=torch.ones(32)))
    fp32 = PULSE(G, **options).search(target, restarts=4, seed=2)
    bf16 = PULSE(G, precision="bf16", refine_steps=0, **options).search(target, restarts=4, seed=2)
    best32, best16 = float(fp32.l2.min()), float(bf16.l2.min())
    assert best16 < 2 * best32 + 1e-4, (best16, best32)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_upscale_forwards_precision(G, target):
    from pulse_ext.upscale import upscale
    out = upscale(target[0], generator=G, restarts=2, steps=3, seed=0, precision="bf16", refine_steps=1,
                  eps=1e-9, latent_stats=dict(mean=torch.zeros(32), std=torch.ones(32)), return_result=True)
    assert out.steps_run == 3 + 2

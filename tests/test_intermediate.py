"""The intermediate-layer search (pulse_ext.pulse.intermediate): the l1-ball projection against a
brute-force oracle, the block-range synthesis, batched == one by one, convergence where the latent
search cannot, the ball constraint, and bad options."""
import pytest
import torch

from pulse_ext.pulse import PULSE
from pulse_ext.pulse.intermediate import project_l1_ball
from pulse_ext.upscale import upscale
from conftest import reachable_targets, tiny_search_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def oracle_l1_projection(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Projection of one flat float64 vector onto the l1 ball by bisection on the soft threshold theta
    (||soft(v, theta)||_1 falls continuously from ||v||_1 at 0 to 0 at max|v|): not the sort-based method."""
    if v.abs().sum() <= radius:
        return v.clone()
    if radius <= 0:
        return torch.zeros_like(v)
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if (v.abs() - mid).clamp(min=0).sum() > radius:
            lo = mid
        else:
            hi = mid
    return v.sign() * (v.abs() - hi).clamp(min=0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3, 2, 3), (4, 33)])
def test_l1_projection_matches_the_oracle(shape):
    g = torch.Generator().manual_seed(sum(shape))
    v = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    norms = v.abs().flatten(1).sum(1)
    # Inside, on the edge, outside, zero radius, and (where there are rows) everything else in between.
    choices = torch.stack([norms * 2, norms, norms * 0.3, torch.zeros_like(norms), norms * 0.01])
    radius = choices[torch.arange(shape[0]) % 5, torch.arange(shape[0])]
    got = project_l1_ball(v, radius)
    assert got.shape == v.shape
    for i in range(shape[0]):
        expected = oracle_l1_projection(v[i].flatten(), float(radius[i])).reshape(v[i].shape)
        torch.testing.assert_close(got[i], expected, rtol=1e-9, atol=1e-9)
        assert float(got[i].abs().sum()) <= float(radius[i]) * (1 + 1e-12) + 1e-12


def test_l1_projection_is_the_nearest_point_of_the_ball():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 12, generator=g, dtype=torch.float64)
    radius = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    p = project_l1_ball(v, radius)
    for _ in range(200):  # random points of each ball are never nearer to v than the projection
        y = torch.randn(3, 12, generator=g, dtype=torch.float64)
        y = y / y.abs().sum(1, keepdim=True) * radius.unsqueeze(1) * torch.rand(3, 1, generator=g, dtype=torch.float64)
        assert ((v - p).norm(dim=1) <= (v - y).norm(dim=1) + 1e-12).all()


def test_l1_projection_float32_non_contiguous():
    v = torch.randn(6, 4, 5).transpose(1, 2)
    radius = torch.full((6,), 2.0)
    got = project_l1_ball(v, radius)
    torch.testing.assert_close(got, project_l1_ball(v.contiguous(), radius))
    assert (got.abs().flatten(1).sum(1) <= 2.0 + 1e-5).all()


def test_block_ranges_compose_to_the_whole_synthesis():
    G = tiny_search_generator(dtype=torch.float64)
    ws = G.mapping(torch.randn(3, G.z_dim, dtype=torch.float64), None)
    whole = G.synthesis(ws, noise_mode="const")
    x, img = G.synthesis.forward_blocks(ws, last=8, noise_mode="const")
    assert x.shape[-1] == 8 and img.shape[-1] == 8
    _, again = G.synthesis.forward_blocks(ws, x=x, img=img, first=16, noise_mode="const")
    torch.testing.assert_close(again, whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match="x .* must be given exactly when first > 4"):
        G.synthesis.forward_blocks(ws, first=8)
    with pytest.raises(ValueError, match="not a range"):
        G.synthesis.forward_blocks(ws, x=x, img=img, first=16, last=8)


OPTIONS = dict(steps=12, stats_samples=1000, eps=1e-9, intermediate_resolutions=(8, 16), intermediate_steps=6)


def test_batched_intermediate_search_equals_one_by_one():
    G64 = tiny_search_generator(dtype=torch.float64)
    targets = reachable_targets(G64, 2).double()
    batched = PULSE(G64, **OPTIONS).search(targets, restarts=2, seed=5)
    assert batched.steps_run == 12 + 6 + 6
    for b in range(2):
        for r in range(2):
            solo = PULSE(G64, **OPTIONS).search(targets[b:b + 1], seeds=[[batched.seeds[b][r]]])
            torch.testing.assert_close(solo.images[0, 0], batched.images[b, r], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(solo.l2[0, 0], batched.l2[b, r], rtol=1e-9, atol=1e-12)


def test_intermediate_search_reaches_what_the_latent_search_cannot_and_stays_in_the_ball():
    G = tiny_search_generator()
    targets = reachable_targets(G, 2)
    latent_only = PULSE(G, steps=20, stats_samples=1000, eps=5e-4).search(targets, restarts=3, seed=0)
    assert not latent_only.converged.any()  # 20 latent steps leave every restart above eps=5e-4 ...
    radius = 0.1
    both = PULSE(G, steps=20, stats_samples=1000, eps=5e-4, intermediate_resolutions=(8, 16), intermediate_steps=20,
                 intermediate_radius=radius).search(targets, restarts=3, seed=0)
    assert both.converged.all(dim=1).all()  # ... the feature search brings every input below it
    assert (both.l2 <= latent_only.l2 + 1e-7).all()  # each restart starts from its latent result
    phases = both.timings["intermediate"]
    assert phases[8]["delta_l1_ratio_max"] > 0  # (rows that converge in phase 8 leave phase 16 at once)
    for phase in phases.values():
        assert phase["delta_l1_ratio_max"] <= radius * (1 + 1e-5)
    # A zero radius keeps the features: only the later latents and noise move, and less is reached.
    none = PULSE(G, steps=20, stats_samples=1000, eps=5e-4, intermediate_resolutions=(8,), intermediate_steps=20,
                 intermediate_radius=0.0).search(targets, restarts=3, seed=0)
    assert none.timings["intermediate"][8]["delta_l1_ratio_max"] == 0


def test_intermediate_search_through_upscale():
    G = tiny_search_generator()
    face = reachable_targets(G, 1)[0]
    result = upscale(face, generator=G, restarts=2, steps=10, seed=1, return_result=True, stats_samples=1000,
                     realism_check="off", intermediate_resolutions=(16,), intermediate_steps=5)
    assert result.steps_run == 15 and set(result.search.timings["intermediate"]) == {16}
    framed = upscale(face, generator=G, restarts=2, steps=10, seed=1, return_result=True, stats_samples=1000,
                     realism_check="off", intermediate_resolutions=(16,), intermediate_steps=5, framing_search=True)
    assert framed.frame_box is not None and framed.steps_run == 15


@pytest.mark.parametrize("options, message", [
    (dict(intermediate_resolutions=(4,)), r"4 is not a block resolution .*choose from \[8, 16\]"),
    (dict(intermediate_resolutions=(12,)), r"12 is not a block resolution"),
    (dict(intermediate_resolutions=(32,)), r"32 is not a block resolution of this 16-px generator"),
    (dict(intermediate_resolutions=(8, 8)), r"must not repeat"),
    (dict(intermediate_resolutions=(8,), intermediate_steps=0), r"intermediate_steps must be >= 1, got 0"),
    (dict(intermediate_resolutions=(8,), intermediate_radius=-1.0), r"intermediate_radius must be .* got -1.0"),
    (dict(intermediate_resolutions=(8,), intermediate_radius=float("inf")), r"intermediate_radius must be"),
])
def test_bad_intermediate_options(options, message):
    with pytest.raises(ValueError, match=message):
        PULSE(tiny_search_generator(), **options)


"""PULSE search: loss parsing, GEOCROSS, schedules, sphere projection, optimiser parity, batching, convergence."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pulse_ext.pulse import (PULSE, SphericalOptimizer, area_resample, area_weights, bicubic_downscale, bicubic_kernel,
                             downscale, downscale_losses, fit_latent_stats, geocross, latent_to_w, lr_factor,
                             parse_loss, per_restart_loss, project_to_sphere, restart_seed, sphere_radius,
                             target_size_problem)
from pulse_ext.pulse import latent as latent_module
from pulse_ext.pulse.latent import latent_stats_records, load_latent_stats_records, mapping_fingerprint
from pulse_ext.pulse import cuda_graph
from pulse_ext.pulse.losses import LossTerm

from conftest import CUDA_SKIP_REASON, reachable_targets, tiny_search_generator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def G():
    return tiny_search_generator()


@pytest.fixture(scope="module")
def targets(G):
    """Two 4x4 targets the generator can produce: area-downscaled samples."""
    return reachable_targets(G, 2)


# ---------------------------------------------------------------- loss string

def test_parse_loss_default_and_variants():
    assert parse_loss("100*L2+0.05*GEOCROSS") == [LossTerm(100.0, "L2"), LossTerm(0.05, "GEOCROSS")]
    assert parse_loss(" l2 + 1e+2 * l1 ") == [LossTerm(1.0, "L2"), LossTerm(100.0, "L1")]
    assert parse_loss(".5*GEOCROSS+2.*L2") == [LossTerm(0.5, "GEOCROSS"), LossTerm(2.0, "L2")]


@pytest.mark.parametrize("spec, message", [
    ("", "non-empty"),
    ("100*L3", "unknown term 'L3'"),
    ("100*L2+L2", "more than once"),
    ("100*", "cannot parse"),
    ("-1*L2", "cannot parse"),
    ("100*L2+", "cannot parse"),
    ("2*3*L2", "cannot parse"),
])
def test_parse_loss_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_loss(spec)


def test_per_restart_loss_clamps_and_weights():
    l2 = torch.tensor([1e-4, 0.5])
    l1 = torch.tensor([0.2, 1e-5])
    w = torch.randn(2, 3, 4)
    loss = per_restart_loss(parse_loss("100*L2+2*L1"), l2, l1, w, eps=2e-3)
    expected = 100 * torch.tensor([2e-3, 0.5]) + 2 * 10 * torch.tensor([0.2, 2e-3])
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------- GEOCROSS

def test_geocross_hand_computed():
    # Rows of equal norm: orthogonal (angle pi/2) and antipodal (angle pi); D = 4.
    d = 4
    orthogonal = torch.tensor([[[2.0, 0, 0, 0], [0, 2.0, 0, 0]]])
    antipodal = torch.tensor([[[0, 0, 3.0, 0], [0, 0, -3.0, 0]]])
    # mean over the 2x2 pair matrix: two off-diagonal entries with angle^2, diagonals ~0; times D / 8.
    expected = torch.tensor([2 * (math.pi / 2) ** 2 / 4 * d / 8, 2 * math.pi ** 2 / 4 * d / 8])
    got = geocross(torch.cat([orthogonal, antipodal]))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert geocross(torch.randn(3, 1, 8)).tolist() == [0.0, 0.0, 0.0]


def _geocross_literal(w):
    """The original PULSE's form: all [N, L, L, D] pairwise sums and differences."""
    x, y = w.unsqueeze(1), w.unsqueeze(2)
    a = ((x - y).pow(2).sum(-1) + 1e-9).sqrt()
    b = ((x + y).pow(2).sum(-1) + 1e-9).sqrt()
    return (2 * torch.atan2(a, b)).pow(2).mean((1, 2)) * (w.shape[-1] / 8.0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_geocross_equals_the_originals_pairwise_form(dtype, tol):
    """The Gram-matrix form against the original's literal one, value and gradient, on latents of
    PULSE's scale (rows on the sqrt(D) sphere), near-equal rows (where the clamp matters) included."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 10, 512, generator=g, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True) * 512 ** 0.5
    w[1, 3] = w[1, 2] + 1e-6 * torch.randn(512, generator=g, dtype=torch.float64)  # near-equal rows
    w[2, 5] = w[2, 4]  # equal rows
    w = w.to(dtype).requires_grad_(True)
    got, expected = geocross(w), _geocross_literal(w)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    grad_got, = torch.autograd.grad(got.sum(), w)
    grad_expected, = torch.autograd.grad(expected.sum(), w)
    assert torch.isfinite(grad_got).all()
    torch.testing.assert_close(grad_got, grad_expected, rtol=tol * 10, atol=tol * 10)


def test_geocross_gradcheck():
    w = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(geocross, (w,))


def test_geocross_is_per_restart():
    w = torch.randn(3, 5, 8)
    torch.testing.assert_close(geocross(w), torch.cat([geocross(w[i:i + 1]) for i in range(3)]))


# ---------------------------------------------------------------- schedules

def test_lr_schedules_hand_values():
    assert lr_factor("fixed", 37, 100) == 1.0
    assert [lr_factor("linear1cycle", s, 100) for s in (0, 25, 50, 75)] == pytest.approx([0.1, 0.55, 1.0, 0.55])
    drop = [lr_factor("linear1cycledrop", s, 100) for s in (0, 45, 90, 95, 99)]
    assert drop == pytest.approx([0.1, 1.0, 0.1, 0.1 + 0.5 * (0.001 - 0.1), 0.1 + 0.9 * (0.001 - 0.1)])
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        lr_factor("cosine", 0, 10)


# ---------------------------------------------------------------- sphere and optimiser

def test_sphere_projection_hand_computed():
    x = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]])
    torch.testing.assert_close(sphere_radius(x), torch.tensor([[[5.0], [2.0]]]))
    torch.testing.assert_close(project_to_sphere(x, torch.tensor(10.0)), torch.tensor([[[6.0, 8.0, 0], [0, 0, 10.0]]]))
    noise = torch.full((2, 1, 2, 2), 3.0)  # one sphere per [restart, channel] map: radius 6
    torch.testing.assert_close(sphere_radius(noise), torch.full((2, 1, 1, 1), 6.0))


def _original_spherical_step(opt, params, radii):
    opt.step()
    with torch.no_grad():
        for p, r in zip(params, radii):
            p.div_((p.pow(2).sum(tuple(range(2, p.ndim)), keepdim=True) + 1e-9).sqrt()).mul_(r)


@pytest.mark.parametrize("name, torch_opt", [
    ("adam", lambda ps: torch.optim.Adam(ps, lr=0.4)),
    ("adamax", lambda ps: torch.optim.Adamax(ps, lr=0.4)),
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.4)),
    ("sgdm", lambda ps: torch.optim.SGD(ps, lr=0.4, momentum=0.9)),
])
def test_spherical_optimizer_matches_torch_optim_plus_projection(name, torch_opt):
    torch.manual_seed(0)
    start = [torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 1, 2, 2, dtype=torch.float64)]
    target = [torch.randn_like(s) for s in start]
    ours = [s.clone().requires_grad_() for s in start]
    theirs = [s.clone().requires_grad_() for s in start]
    opt = SphericalOptimizer(ours, name, lr=0.4)
    ref = torch_opt(theirs)
    radii = [sphere_radius(p).detach() for p in theirs]
    for step in range(4):
        for params in (ours, theirs):
            sum(((p - t) ** 3).abs().sum() for p, t in zip(params, target)).backward()
        opt.step()
        opt.zero_grad()
        _original_spherical_step(ref, theirs, radii)
        ref.zero_grad()
    for a, b, r in zip(ours, theirs, radii):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(sphere_radius(a), r)


def test_spherical_optimizer_freezes_inactive_rows_and_keeps():
    p = torch.randn(3, 2, 4, requires_grad=True)
    before = p.detach().clone()
    opt = SphericalOptimizer([p], "adam", lr=0.1)
    p.sum().backward()
    opt.step(active=torch.tensor([True, False, True]))
    assert torch.equal(p[1], before[1]) and not torch.equal(p[0], before[0])
    kept = opt.keep(torch.tensor([0, 2]))[0]
    assert kept.shape == (2, 2, 4) and kept.requires_grad and opt.state[0]["exp_avg"].shape == (2, 2, 4)


@pytest.mark.parametrize("name", ["adam", "adamax", "sgdm"])
def test_spherical_optimizer_with_tensor_step_values_equals_plain_numbers(name):
    """The form a CUDA graph replays: learning-rate factor and step count as 0-dim tensors, the caller
    counting the steps, gives the same trajectory as plain numbers."""
    torch.manual_seed(1)
    start = torch.randn(3, 2, 4, dtype=torch.float64)
    runs = []
    for as_tensors in (False, True):
        p = start.clone().requires_grad_()
        opt = SphericalOptimizer([p], name, lr=0.3)
        for step in range(5):
            (p ** 3).sum().backward()
            active = torch.tensor([True, step < 3, True])
            if as_tensors:
                opt.num_steps += 1
                opt.step(torch.tensor(0.5 + step / 10, dtype=torch.float64), active=active,
                         t=torch.tensor(float(opt.num_steps), dtype=torch.float64))
            else:
                opt.step(0.5 + step / 10, active=active)
            opt.zero_grad()
        runs.append(p.detach())
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-12, atol=1e-12)


def test_spherical_adam_over_several_parameters_equals_each_alone_bit_for_bit():
    """Adam steps all parameters (a latent and noise maps) in multi-tensor ops; the trajectory equals
    stepping each parameter with an optimiser of its own exactly, with frozen rows and a restart dropped."""
    torch.manual_seed(2)
    start = [torch.randn(4, 3, 8), torch.randn(4, 1, 4, 4), torch.randn(4, 1, 8, 8)]
    together = [s.clone().requires_grad_() for s in start]
    alone = [s.clone().requires_grad_() for s in start]
    opt = SphericalOptimizer(together, "adam", lr=0.4)
    opts = [SphericalOptimizer([p], "adam", lr=0.4) for p in alone]
    for step in range(6):
        active = torch.tensor([True, step < 2, True, True][:together[0].shape[0]])
        sum((p ** 3).sum() for p in together).backward()
        opt.step(0.3 + step / 10, active=active)
        opt.zero_grad()
        for p, o in zip(alone, opts):
            (p ** 3).sum().backward()
            o.step(0.3 + step / 10, active=active)
            o.zero_grad()
        if step == 3:
            together = opt.keep(torch.tensor([0, 1, 3]))
            alone = [o.keep(torch.tensor([0, 1, 3]))[0] for o in opts]
    for a, b in zip(together, alone):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- downscalers

def test_bicubic_kernel_hand_computed():
    # factor 1: taps at -1.5, -0.5, 0.5, 1.5 of the a=-0.5 cubic: w(0.5) = 0.5625, w(1.5) = -0.0625 (sum 1)
    torch.testing.assert_close(bicubic_kernel(1), torch.tensor([-0.0625, 0.5625, 0.5625, -0.0625]))
    k4 = bicubic_kernel(4)
    assert k4.numel() == 16 and abs(float(k4.sum()) - 1) < 1e-6 and torch.equal(k4, k4.flip(0))


def test_bicubic_downscale_shape_constant_and_losses():
    img = torch.full((2, 3, 16, 16), 0.25)
    out = bicubic_downscale(img, 4)
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
    l2, l1 = downscale_losses(img, torch.full((1, 3, 4, 4), 0.75), "bicubic")
    torch.testing.assert_close(l2, torch.full((2,), 0.25))
    torch.testing.assert_close(l1, torch.full((2,), 0.5))


def _area_oracle(img, h, w):
    """Exact area averaging, computed another way: repeat every pixel h (w) times along the rows (columns),
    so both grids share a common refinement, then take block means."""
    hh, ww = img.shape[-2:]
    rows = F.avg_pool2d(img.repeat_interleave(h, dim=-2), (hh, 1))  # one axis at a time keeps it small
    return F.avg_pool2d(rows.repeat_interleave(w, dim=-1), (1, ww))


@pytest.mark.parametrize("size_in,size_out", [((16, 16), (6, 6)), ((16, 16), (4, 4)), ((64, 64), (24, 24)),
                                              ((16, 16), (5, 11)), ((16, 16), (16, 16)), ((16, 16), (1, 1)),
                                              ((1024, 1024), (24, 20))])
def test_area_resample_is_exact_area_averaging(size_in, size_out):
    batch = (1, 1) if size_in[0] > 64 else (2, 3)  # the oracle's fine grid of a 1024 image is ~200 MB
    img = torch.rand(*batch, *size_in, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = area_resample(img, size_out)
    assert out.shape == (*batch, *size_out)
    torch.testing.assert_close(out, _area_oracle(img, *size_out), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.mean((2, 3)), img.mean((2, 3)), rtol=1e-12, atol=1e-12)  # mass is kept
    weights = area_weights(size_in[0], size_out[0])
    torch.testing.assert_close(weights.sum(1), torch.ones(size_out[0], dtype=torch.float64))
    assert bool((weights >= 0).all())


def test_area_downscale_losses_any_size_match_the_block_mean_where_both_apply():
    img = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    fused = downscale_losses(img, target, "area")
    diff = area_resample(img, (4, 4)) - target
    torch.testing.assert_close(fused[0], diff.square().mean((1, 2, 3)))
    torch.testing.assert_close(fused[1], diff.abs().mean((1, 2, 3)))
    target = torch.rand(3, 3, 6, 5, generator=torch.Generator().manual_seed(3))  # per-sample, factors 2.67 x 3.2
    l2, l1 = downscale_losses(img, target, "area")
    diff = _area_oracle(img, 6, 5) - target
    torch.testing.assert_close(l2, diff.square().mean((1, 2, 3)))
    torch.testing.assert_close(l1, diff.abs().mean((1, 2, 3)))
    torch.testing.assert_close(downscale(img, (6, 5)), _area_oracle(img, 6, 5))


def test_cached_filters_first_built_in_inference_mode_still_allow_backward():
    """The shared weight/filter tensors are cached on first use; one first built under inference_mode
    (e.g. downscale() for display) must not break a later differentiable search step."""
    from pulse_ext.ops import reference
    from pulse_ext.pulse import losses

    for cache in (losses._shared_area_weights, losses._shared_bicubic_kernel, reference._shared_fir_filter_2d):
        cache.cache_clear()
    img = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    with torch.inference_mode():
        downscale(img, (9, 9))
        downscale(img, (6, 6), "bicubic")
        reference.fir_filter_2d(torch.float64, torch.device("cpu"))
    x = img.clone().requires_grad_(True)
    (downscale_losses(x, torch.rand(1, 3, 9, 9, dtype=torch.float64))[0].sum()
     + downscale_losses(x, torch.rand(1, 3, 6, 6, dtype=torch.float64), "bicubic")[0].sum()
     + reference.upsample2d(x).sum()).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_area_downscale_losses_any_size_gradcheck():
    img = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 3, 3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: downscale_losses(x, target, "area"), (img,))


def test_target_size_problem():
    assert target_size_problem((16, 16), (6, 5), "area") is None
    assert target_size_problem((16, 16), (4, 4), "bicubic") is None
    assert "must not be larger" in target_size_problem((16, 16), (17, 4), "area")
    assert "at least 1x1, got 4x0" in target_size_problem((16, 16), (0, 4), "area")
    assert "at least 2x2" in target_size_problem((16, 16), (1, 1), "bicubic")
    assert target_size_problem((16, 16), (1, 1), "area") is None
    assert "integer factor" in target_size_problem((16, 16), (6, 6), "bicubic")
    assert "integer factor" in target_size_problem((16, 16), (4, 8), "bicubic")
    assert "downscale must be one of" in target_size_problem((16, 16), (4, 4), "nearest")


# ---------------------------------------------------------------- mapping statistics

def test_latent_stats_invert_the_mapping_lrelu(G):
    # NVIDIA's final lrelu has gain sqrt(2); positive homogeneity keeps lrelu(lrelu(w, 5), 0.2) == w.
    with torch.no_grad():
        w = G.mapping(torch.randn(64, G.z_dim), None, skip_w_avg_update=True)[:, 0]
        torch.testing.assert_close(F.leaky_relu(F.leaky_relu(w, 5.0), 0.2), w)
        stats = fit_latent_stats(G, 4000, seed=1)
        x = F.leaky_relu(G.mapping(torch.randn(4000, G.z_dim), None, skip_w_avg_update=True)[:, 0], 5.0)
        torch.testing.assert_close(stats.mean, x.mean(0), atol=0.15, rtol=0)
        torch.testing.assert_close(stats.std, x.std(0), atol=0.15, rtol=0.1)
        assert latent_to_w(torch.zeros(1, 1, G.w_dim), stats, G.num_ws).shape == (1, G.num_ws, G.w_dim)


def test_latent_stats_are_cached_per_mapping_weights(monkeypatch):
    G = tiny_search_generator(seed=3)
    stats = fit_latent_stats(G, 2000, seed=2)
    calls = []
    real_forward = G.mapping.forward
    monkeypatch.setattr(G.mapping, "forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k))
    again = fit_latent_stats(G, 2000, seed=2)
    assert not calls  # served from the cache
    torch.testing.assert_close(again.mean, stats.mean, rtol=0, atol=0)
    torch.testing.assert_close(again.std, stats.std, rtol=0, atol=0)
    copy = tiny_search_generator(seed=3)  # the same weights in another module: same fingerprint
    assert mapping_fingerprint(copy) == mapping_fingerprint(G)
    with torch.no_grad():
        G.mapping.fc0.weight.add_(0.5)  # changed weights: a stale fit must not be reused
    assert mapping_fingerprint(G) != mapping_fingerprint(copy)
    changed = fit_latent_stats(G, 2000, seed=2)
    assert calls and not torch.equal(changed.mean, stats.mean)


def test_latent_stats_records_round_trip_only_for_matching_weights():
    G = tiny_search_generator(seed=4, dtype=torch.float64)
    stats = fit_latent_stats(G, 1000, seed=5)
    records = latent_stats_records(G)
    assert [(r["num_samples"], r["seed"]) for r in records] == [(1000, 5)]
    latent_module._STATS_CACHE.clear()
    other = tiny_search_generator(seed=6, dtype=torch.float64)
    assert load_latent_stats_records(other, records) == 0  # fitted for different weights
    assert load_latent_stats_records(G, records) == 1
    G.mapping.forward = None  # a fit would fail: the stored one must be used
    loaded = fit_latent_stats(G, 1000, seed=5)
    torch.testing.assert_close(loaded.mean, stats.mean, rtol=0, atol=0)  # exact through JSON
    torch.testing.assert_close(loaded.std, stats.std, rtol=0, atol=0)


def test_restart_seeds_are_distinct_and_stable():
    seeds = {restart_seed(7, b, r) for b in range(3) for r in range(4)}
    assert len(seeds) == 12 and restart_seed(7, 1, 2) == restart_seed(7, 1, 2) < 2 ** 63


# ---------------------------------------------------------------- the search

def test_search_reaches_eps_on_generator_samples(G, targets):
    """The default loss and eps (2e-3) are reached on inputs the generator can produce (~40 steps)."""
    result = PULSE(G, steps=100, stats_samples=2000).search(targets, restarts=2, seed=1)
    assert result.images.shape == (2, 2, 3, 16, 16) and result.latents.shape == (2, 2, G.num_ws, G.w_dim)
    assert result.converged.all(), result.l2
    assert (result.l2 < 2e-3).all() and (result.converged_step >= 0).all()
    assert result.steps_run < 100  # stopped early once every restart converged
    # The stored image is the one its stored L2 describes.
    l2, _ = downscale_losses(result.images.flatten(0, 1), targets.repeat_interleave(2, 0))
    torch.testing.assert_close(l2, result.l2.flatten(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("noise_type, tile", [("trainable", False), ("fixed", True), ("zero", False)])
def test_batched_restarts_equal_one_by_one(targets, noise_type, tile):
    G64 = tiny_search_generator(dtype=torch.float64)
    options = dict(steps=6, stats_samples=1000, noise_type=noise_type, tile_latent=tile, eps=1e-9)
    batched = PULSE(G64, **options).search(targets.double(), restarts=3, seed=11)
    for b in range(2):
        for r in range(3):
            solo = PULSE(G64, **options).search(targets[b:b + 1].double(), seeds=[[batched.seeds[b][r]]])
            torch.testing.assert_close(solo.images[0, 0], batched.images[b, r], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(solo.latents[0, 0], batched.latents[b, r], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(solo.l2[0, 0], batched.l2[b, r], rtol=1e-9, atol=1e-12)


def test_converged_restarts_freeze_and_dropping_them_changes_nothing(targets):
    # float64: in float32 the library convolutions round differently for different batch sizes, and
    # 8 steps of a chaotic search amplify that to ~1e-6; in float64 dropping rows must change nothing.
    G64, target = tiny_search_generator(dtype=torch.float64), targets[:1].double()
    # eps between the restarts' initial L2s: some converge at step 0 and must keep their step-0 image.
    probe = PULSE(G64, steps=1, stats_samples=2000, eps=1e-9).search(target, restarts=4, seed=3)
    eps = float(probe.l2[0].median())
    runs = [PULSE(G64, steps=8, stats_samples=2000, eps=eps, drop_converged=drop, sync_every=2)
            .search(target, restarts=4, seed=3) for drop in (True, False)]
    first = probe.l2[0] < eps
    assert first.any() and not first.all()
    for run in runs:
        assert (run.converged_step[0][first] == 0).all()
        torch.testing.assert_close(run.images[0][first], probe.images[0][first])
    torch.testing.assert_close(runs[0].images, runs[1].images, rtol=1e-9, atol=1e-9)
    assert torch.equal(runs[0].converged, runs[1].converged)


@pytest.fixture(scope="module")
def converging_search():
    """A float64 search in which each input's 4 restarts converge at different steps: (G64, targets,
    options, the search with every restart to the end)."""
    G64 = tiny_search_generator(dtype=torch.float64)
    target = reachable_targets(G64, 2, seed=9).double()
    options = dict(steps=60, stats_samples=2000, sync_every=2)
    return G64, target, options, PULSE(G64, **options).search(target, restarts=4, seed=2)


@pytest.mark.parametrize("enough", [1, 2, 5])
def test_enough_converged_stops_each_input_at_its_kth_converged_restart(converging_search, enough):
    """An input stops at the first host read that sees `enough` converged restarts: the restarts converged
    by then are exactly the full search's (same steps, same images up to float64 rounding of other batch
    sizes), the others count as not converged,
    and the top candidates are the full search's converged-by-then ones in loss order."""
    G64, target, options, whole = converging_search
    quota = PULSE(G64, enough_converged=enough, **options).quota()
    points = quota.stop_points(whole.converged_step)
    if enough <= 2:
        assert all(p is not None for p in points) and max(points) < whole.steps_run  # stopping saves steps
    else:
        assert points == [None, None]  # more than the 4 restarts: never enough, the full search
    part = PULSE(G64, enough_converged=enough, **options).search(target, restarts=4, seed=2)
    assert part.steps_run == (whole.steps_run if None in points else max(points))
    seen = quota.seen_at(whole.converged_step)
    for b, point in enumerate(points):
        kept = (seen[b] >= 0) & (seen[b] <= (point if point is not None else 10 ** 9))
        assert torch.equal(part.converged[b], kept)
        assert torch.equal(part.converged_step[b], torch.where(kept, whole.converged_step[b], -1))
        torch.testing.assert_close(part.images[b][kept], whole.images[b][kept], rtol=1e-9, atol=1e-9)
        top = sorted(kept.nonzero().flatten().tolist(), key=lambda r: float(whole.loss[b, r]))
        assert part.ranking(b)[:len(top)] == top
        if point is not None:
            assert int(kept.sum()) >= enough


def test_enough_converged_in_parts_returns_the_unsplit_candidates(converging_search):
    """Split into parts of 1 row, the later parts run no longer than the earlier parts' stop point
    (max_steps) and the merged result has the unsplit search's converged restarts and candidates."""
    from pulse_ext.pulse.batching import searcher_split

    G64, target, options, whole = converging_search
    # The restart that converges last goes first: the first part then stops later than the unsplit
    # search, and its restart must be marked as stopped (ConvergedQuota.apply).
    steps = whole.converged_step[0].tolist()
    order = sorted(range(4), key=lambda r: -(steps[r] if steps[r] >= 0 else 10 ** 9))
    seeds = [[whole.seeds[0][r] for r in order]]
    searcher = PULSE(G64, enough_converged=1, **options)
    unsplit = searcher.search(target[:1], seeds=seeds)
    assert 0 < int(unsplit.converged.sum()) < 4
    caps = []
    search = searcher.search

    def recording(t, seeds, max_steps=None, **kwargs):
        caps.append(max_steps)
        return search(t, seeds=seeds, max_steps=max_steps, **kwargs)

    searcher.search = recording
    split = searcher_split(searcher, target[:1], seeds, max_rows=1)
    assert len(caps) == 4 and caps[0] is None and all(c is not None and c <= 60 for c in caps[1:])
    assert torch.equal(split.converged, unsplit.converged)
    assert split.ranking(0)[:int(unsplit.converged.sum())] == unsplit.ranking(0)[:int(unsplit.converged.sum())]
    conv = unsplit.converged[0]
    torch.testing.assert_close(split.images[0][conv], unsplit.images[0][conv], rtol=1e-9, atol=1e-9)


def test_max_steps_ends_the_search_on_the_full_schedule(converging_search):
    """max_steps=k gives what the k-th step of the full search had (the schedule spans `steps`)."""
    G64, target, options, _ = converging_search
    snapshots = {}

    def keep(progress):
        snapshots[progress.step] = progress

    PULSE(G64, **{**options, "eps": 1e-12}).search(target, restarts=2, seed=5, callback=keep)
    short = PULSE(G64, **{**options, "eps": 1e-12}).search(target, restarts=2, seed=5, max_steps=7)
    assert short.steps_run == 7
    torch.testing.assert_close(short.images, snapshots[7].images, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(short.loss, snapshots[7].loss, rtol=1e-9, atol=1e-9)


def test_enough_converged_callback_flags_and_option_errors(converging_search, G, targets):
    G64, target, options, _ = converging_search
    final = []
    result = PULSE(G64, enough_converged=1, **options).search(
        target, restarts=4, seed=2, callback=lambda p: final.append(p) if p.final else None, callback_every=3)
    assert len(final) == 1 and torch.equal(final[0].converged, result.converged)
    for bad in (0, -1, 1.5, True, "1", float("nan"), float("inf")):
        with pytest.raises(ValueError, match="enough_converged must be None or an integer >= 1"):
            PULSE(G, enough_converged=bad)
    with pytest.raises(ValueError, match="enough_converged works with plain searches only.*precision='bf16'"):
        PULSE(G, enough_converged=1, precision="bf16")
    with pytest.raises(ValueError, match="enough_converged works with plain searches only.*search_resolution=8"):
        PULSE(G, enough_converged=1, search_resolution=8)
    with pytest.raises(ValueError, match="max_steps must be None or >= 1, got 0"):
        PULSE(G, stats_samples=100).search(targets[:1], max_steps=0)
    with pytest.raises(ValueError, match="max_steps works with plain searches only"):
        PULSE(G, stats_samples=100, search_resolution=8).search(targets[:1], max_steps=3)
    assert PULSE(G).quota() is None and PULSE(G, enough_converged=2, sync_every=3, steps=9).quota().count == 2


def test_search_is_deterministic_and_best_is_lowest_loss(G, targets):
    a = PULSE(G, steps=5, stats_samples=2000, eps=1e-9).search(targets[:1], restarts=2, seed=4)
    b = PULSE(G, steps=5, stats_samples=2000, eps=1e-9).search(targets[:1], restarts=2, seed=4)
    assert torch.equal(a.images, b.images) and a.seeds == b.seeds
    assert not a.converged.any() and a.steps_run == 5
    assert a.ranking(0)[0] == int(a.loss[0].argmin()) == a.best_index[0]


def test_bicubic_search_runs(G, targets):
    result = PULSE(G, steps=3, stats_samples=2000, downscale="bicubic").search(targets[:1], restarts=1, seed=0)
    assert torch.isfinite(result.l2).all()


def test_search_option_errors(G, targets):
    with pytest.raises(ValueError, match="noise_type must be one of"):
        PULSE(G, noise_type="random")
    with pytest.raises(ValueError, match="out of range"):
        PULSE(G, bad_noise_layers=[99])
    with pytest.raises(ValueError, match="downscale must be one of"):
        PULSE(G, downscale="nearest")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        PULSE(G, optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"target of size 17x5 .*must not be larger than the generator's images \(16x16\)"):
        PULSE(G, stats_samples=100).search(torch.rand(1, 3, 5, 17))
    with pytest.raises(ValueError, match="bicubic downscaling needs one integer factor for both sides"):
        PULSE(G, stats_samples=100, downscale="bicubic").search(torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match="cuda_graph=True needs a generator on a CUDA device, got one on cpu"):
        PULSE(G, stats_samples=100, cuda_graph=True).search(targets[:1])
    assert PULSE(G, bad_noise_layers="0.4").bad_noise_layers == [0, 4]
    kinds = PULSE(G, num_trainable_noise_layers=2).layer_kinds()
    assert kinds == ["trainable", "trainable", "fixed", "fixed", "zero"]  # last layer zero by default


class ReplayOnCPU(cuda_graph.GraphedStep):
    """GraphedStep with its three CUDA parts replaced: eager steps run as they are, and a 'capture' keeps
    the call a replay makes -- the step with the 0-dim tensor arguments the shared logic fills in."""

    def _eager(self, step, lr_scale):
        self.step_fn(step, lr_scale)

    def _capture(self):
        return SimpleNamespace(replay=lambda: self.step_fn(self.step_index, self.lr_scale, self.t))

    def _replay(self):
        self.graph.replay()


@pytest.mark.parametrize("side", [4, 6])  # 6: a size that does not divide 16 (area_resample)
def test_the_replayed_form_of_the_step_equals_the_eager_search(targets, monkeypatch, side):
    """What cuda_graph=True replays -- the step with tensor arguments, warm-up and re-capture after
    compaction, the optimiser's step count kept outside -- follows the eager search exactly (float64,
    CPU; the CUDA test below runs the real graph)."""
    monkeypatch.setattr(cuda_graph, "check_device", lambda device: None)
    monkeypatch.setattr(cuda_graph, "GraphedStep", ReplayOnCPU)
    G64 = tiny_search_generator(dtype=torch.float64)
    target = F.interpolate(targets[:1].double(), size=(side, side), mode="bilinear")
    probe = PULSE(G64, steps=1, stats_samples=2000, eps=1e-9).search(target, restarts=6, seed=3)
    eps = float(probe.l2[0].median()) / 8  # restarts converge at different steps: the batch is compacted
    eager, replayed = [PULSE(G64, steps=30, stats_samples=2000, eps=eps, sync_every=3, cuda_graph=graph)
                       .search(target, restarts=6, seed=3) for graph in (False, True)]
    assert len(set(eager.converged_step.flatten().tolist())) > 2
    # captured again after compaction, replayed in between
    assert replayed.timings["cuda_graph_captures"] >= 2 and replayed.timings["cuda_graph_replays"] >= 4
    assert replayed.steps_run == eager.steps_run
    assert torch.equal(replayed.converged, eager.converged)
    assert torch.equal(replayed.converged_step, eager.converged_step)
    torch.testing.assert_close(replayed.images, eager.images, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(replayed.latents, eager.latents, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
@pytest.mark.parametrize("downscale,side", [("area", 4), ("bicubic", 4), ("area", 6)])  # 6: area_resample
def test_cuda_graph_search_equals_the_eager_search(targets, downscale, side, monkeypatch):
    """cuda_graph=True replays captured steps (captured again after each compaction) and finds what
    the eager loop finds: same convergence, same images up to rounding. (float64 and deterministic
    cuDNN: the replayed step computes its step-size factors on the device, the eager one on the host,
    and a chaotic search must not amplify that past the comparison.)"""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    Gc = tiny_search_generator(dtype=torch.float64).cuda()
    target = F.interpolate(targets[:1].double(), size=(side, side), mode="bilinear").cuda()
    probe = PULSE(Gc, steps=1, stats_samples=2000, eps=1e-9, downscale=downscale).search(target, restarts=6, seed=3)
    eps = float(probe.l2[0].median()) / 8  # restarts converge at different steps, so rows are dropped
    runs = [PULSE(Gc, steps=30, stats_samples=2000, eps=eps, sync_every=3, downscale=downscale, cuda_graph=graph)
            .search(target, restarts=6, seed=3) for graph in (False, True)]
    eager, graphed = runs
    assert graphed.timings["cuda_graph_replays"] > 0 and graphed.timings["cuda_graph_captures"] >= 1
    assert "cuda_graph_replays" not in eager.timings
    assert graphed.steps_run == eager.steps_run
    assert torch.equal(graphed.converged, eager.converged) and torch.equal(graphed.converged_step, eager.converged_step)
    torch.testing.assert_close(graphed.images, eager.images, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(graphed.l2, eager.l2, rtol=1e-7, atol=1e-12)

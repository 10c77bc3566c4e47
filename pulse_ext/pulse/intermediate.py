"""Intermediate-layer search: after the latent search, search the features entering a synthesis block.

The latent search can only reach images the generator makes from a latent. When the input lies
outside that range (a framing the generator never learned, an unusual face), the best latent is a
compromise, or the search melts the face to match. ILO (Daras et al., "Intermediate Layer
Optimization for Inverse Problems using Deep Generative Models", ICML 2021) widens the range a step at
a time: it optimises the *output of an intermediate layer* instead of the latent, kept within a small
l1 ball around what the layers before it produced, so the result stays close to the generator's range.

Here, with ``PULSE(..., intermediate_resolutions=(8, 16), ...)``, after the latent search (and its
staged refinement, if any), one phase per resolution r, in increasing order:

- f0: the features entering block b{r} (the output x of the block before, [N, C, r/2, r/2]) and the
  skip image so far, rendered from every restart's best latent and noise (and, for the second and
  later phases, the best features of the phase before);
- the phase optimises x = f0 + delta with ||delta||_1 <= radius * ||f0||_1 per restart (radius:
  ``intermediate_radius``; :func:`project_l1_ball` after every step), together with the latent (only
  its rows for b{r} and later have an effect) and the trainable noise maps, for
  ``intermediate_steps`` steps, with the same loss, eps, convergence and best-image rules as the
  latent search (``PULSE._run``), batched over restarts exactly like it;
- the skip image entering b{r} stays as the earlier blocks made it.

delta is optimised as u = delta / DELTA_SCALE with the latent's optimiser and learning rate: Adam's
step is about the learning rate per element, which is the right size for a latent on its sphere but
far too large for features of unit scale; the scale makes delta's step DELTA_SCALE times smaller.
Restarts that met eps in the latent search stay as they are (their step-0 image is the same, so they
converge at once and are frozen).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

DELTA_SCALE = 0.1  # delta = DELTA_SCALE * u, u optimised at the search's learning rate (see the module docstring)


def project_l1_ball(v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row v[i] onto the l1 ball {x : ||x||_1 <= radius[i]}.

    v: [N, ...] any float dtype and device; radius: [N] (or broadcastable to it) >= 0. Rows already
    inside are returned unchanged; others are soft-thresholded, sign(v) * max(|v| - theta, 0), with the
    theta that puts them on the sphere (Duchi et al., ICML 2008: sort, cumulative sums, one pass).
    """
    n = v.shape[0]
    flat = v.reshape(n, -1)
    radius = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).reshape(-1).expand(n)
    magnitude = flat.abs()
    inside = magnitude.sum(1) <= radius
    mu = magnitude.sort(1, descending=True).values
    excess = mu.cumsum(1) - radius.unsqueeze(1)
    index = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    # rho: the number of entries that stay non-zero (at least 1 for a positive radius outside the ball).
    rho = (mu * index > excess).sum(1).clamp(min=1)
    theta = excess.gather(1, (rho - 1).unsqueeze(1)) / rho.unsqueeze(1).to(flat.dtype)
    projected = flat.sign() * (magnitude - theta.clamp(min=0)).clamp(min=0)
    projected = torch.where((radius <= 0).unsqueeze(1), torch.zeros_like(flat), projected)
    return torch.where(inside.unsqueeze(1), flat, projected).reshape(v.shape)


def check_intermediate_resolutions(generator, resolutions: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """Validate ``intermediate_resolutions``: block resolutions above 4 (b4 starts from a constant) and
    at most the generator's, each once; returned sorted."""
    if resolutions is None:
        return ()
    if isinstance(resolutions, int):
        resolutions = (resolutions,)
    res = generator.img_resolution
    blocks = [r for r in generator.synthesis.block_resolutions if r > 4]
    out = []
    for r in resolutions:
        if int(r) != r or int(r) not in blocks:
            raise ValueError(f"intermediate_resolutions: {r!r} is not a block resolution of this {res}-px generator "
                             f"(choose from {blocks}; 4 starts from a constant and has no input features)")
        out.append(int(r))
    if len(set(out)) != len(out):
        raise ValueError(f"intermediate_resolutions must not repeat a resolution, got {list(resolutions)}")
    return tuple(sorted(out))


def intermediate_run(pulse, first, target, seeds, n, num_images, num_restarts, stats, stats_seconds, device, dtype,
                     progress, callback=None, callback_every=1):
    """The phases of the module docstring after the latent search's result ``first`` (a SearchResult with
    its trainable noise maps); the other arguments as ``PULSE._run``. Returns the last phase's
    SearchResult with steps, seconds and timings summed over all phases."""
    G = pulse.generator
    synthesis = G.synthesis
    trainable = [i for i, kind in enumerate(pulse.layer_kinds()) if kind == "trainable"]
    latent = first.latents.reshape(n, *first.latents.shape[2:])
    noise = {i: t.reshape(n, *t.shape[2:]) for i, t in zip(trainable, first.noises)}
    features = None  # (resolution, best x entering it) from the phase before
    result = first
    phases = {}
    label = progress if isinstance(progress, str) else "PULSE"
    for r in pulse.intermediate_resolutions:
        with torch.no_grad():
            w = _latent_w(latent, stats, G.num_ws)
            full_noise = search_noise(pulse, seeds, noise, device, dtype)
            if features is None:
                x0, img0 = synthesis.forward_blocks(w, last=r // 2, noise_mode="const", noise=full_noise)
            else:
                x_prev, img_prev, r_prev = features
                x0, img0 = synthesis.forward_blocks(w, x=x_prev, img=img_prev, first=r_prev, last=r // 2,
                                                    noise_mode="const", noise=full_noise)
            radius = pulse.intermediate_radius * x0.abs().flatten(1).sum(1) / DELTA_SCALE

        def synthesize(w, noise_maps, extras, rows, x0=x0, img0=img0, r=r):
            # rows: the global rows in the batch (restarts leave it as they converge); x0 / img0 follow.
            x = x0.index_select(0, rows) + DELTA_SCALE * extras[0]
            _, img = synthesis.forward_blocks(w, x=x, img=img0.index_select(0, rows), first=r, noise_mode="const",
                                              noise=noise_maps)
            return img

        result = pulse._run(target, seeds, n, num_images, num_restarts, stats, stats_seconds, device, dtype,
                            f"{label} features@{r}px" if progress else False, callback, callback_every,
                            steps=pulse.intermediate_steps, synthesize=synthesize, init=(latent, noise),
                            track_noise=True, cuda_graph=False,
                            extra=[(torch.zeros_like(x0), radius.view(-1, 1, 1, 1), _l1_projection)])
        latent = result.latents.reshape(n, *result.latents.shape[2:])
        noise = {i: t.reshape(n, *t.shape[2:]) for i, t in zip(trainable, result.noises)}
        delta = result.extras[0].reshape(n, *result.extras[0].shape[2:])
        ratio = (DELTA_SCALE * delta).abs().flatten(1).sum(1) / x0.abs().flatten(1).sum(1).clamp(min=1e-30)
        phases[r] = {"steps": result.steps_run, "seconds": result.seconds, "best_l2": float(result.l2.min()),
                     "converged": int(result.converged.sum()), "delta_l1_ratio_max": float(ratio.max())}
        features = (x0 + DELTA_SCALE * delta, img0, r)
        total_steps = first.steps_run + sum(p["steps"] for p in phases.values())
        total_seconds = first.seconds + sum(p["seconds"] for p in phases.values())
    result.converged_step = torch.where(result.converged_step >= 0, result.converged_step + total_steps -
                                        result.steps_run, result.converged_step)
    result.timings.update({"latent_search_s": first.seconds, "latent_steps": first.steps_run,
                           "latent_best_l2": float(first.l2.min()), "latent_converged": int(first.converged.sum()),
                           "intermediate": phases})
    result.steps_run = total_steps
    result.seconds = total_seconds
    result.timings.update(search_s=total_seconds, seconds_per_step=total_seconds / max(total_steps, 1))
    result.noises = None
    result.extras = None
    return result


def _l1_projection(u: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    return project_l1_ball(u, radius.reshape(-1))


def _latent_w(latent, stats, num_ws):
    from pulse_ext.pulse.latent import latent_to_w

    return latent_to_w(latent, stats, num_ws)


def search_noise(pulse, seeds, trainable_noise, device, dtype):
    """The noise list the search renders with: the fixed maps drawn from each restart's seed and zero
    layers exactly as ``PULSE._init_rows`` makes them, with ``trainable_noise`` {layer: [N, 1, r, r]} in
    place of the trainable ones."""
    _, noise, _ = pulse._init_rows([s for row in seeds for s in row], device, dtype)
    for i, t in trainable_noise.items():
        noise[i] = t.to(device=device, dtype=dtype)
    return noise

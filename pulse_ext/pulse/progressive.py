"""Staged search: a cheaper search phase, then a full-resolution, full-precision check and refinement.

Two options make the search phase cheaper, alone or together: a lower search resolution
(``search_resolution``, below) and bfloat16 convolutions (``precision="bf16"``: the generator's 3x3
convolutions, nearly all of its FLOPs, run in bf16 — 2-3x faster on CPUs with AVX512-BF16/AMX and on
tensor-core GPUs — while latents, noise, the loss and the optimiser stay fp32). Either way the result
is rendered and checked at full resolution in the generator's own dtype at the end (below).

Progressive search resolution: run the PULSE search on a truncated synthesis network, render full size last.

With ``PULSE(..., search_resolution=s)`` (or ``upscale(..., search_resolution=s)``) the search runs only
the synthesis blocks up to resolution s and uses that block's skip image (the 'skip' architecture sums
upsampled toRGB outputs, so the image at block s is the coarse part of the final image; the later blocks
add detail above s). The L2 is measured on that image, area-downscaled to the target (block means or exact
area averaging, as at full resolution) when s is at least the target size, else first FIR-upsampled (the
generator's own skip upsampling, 2x at a time) to the smallest size at or above the target's. Most of a
generator's work is in its top blocks (config-f 1024: the blocks up to 256 are 60 % of the multiply-adds,
up to 128 are 41 %), so a step costs a fraction of a full one.

Then, once, at full resolution (and full precision): every restart's best latent (and trainable noise) is rendered, its L2
re-checked against eps, and the restarts that do not meet it are refined for up to ``refine_steps``
full-resolution steps (fresh Adam, learning rate falling linearly from 0.1 to 0.001 of the base rate,
as the end of the original's schedule). The result is a normal ``SearchResult`` at full resolution:
images, L2 and convergence always describe the full-resolution, full-precision image.

Caveat: the details above s are not searched; they come from the latent that fits the coarse image.
PULSE's target is tiny (16 or 32 px), so the loss itself sees nothing above the target size, but the
L2 of the full image can differ from the L2 of the skip image at s (the higher toRGB layers add a small
low-frequency part too): the full-resolution check and refinement are what make the result honest.
"""
from __future__ import annotations

from typing import Optional

import torch

from pulse_ext import ops

REFINE_START = 0.1  # refinement learning rate, as a fraction of the base rate, falling linearly to 0.001


def check_search_resolution(generator, search_resolution: Optional[int]) -> Optional[int]:
    """Validate ``search_resolution`` for ``generator``; returns it, or None when it means 'full resolution'."""
    if search_resolution is None:
        return None
    s = int(search_resolution)
    res = generator.img_resolution
    if s < 4 or s & (s - 1) or s > res:
        raise ValueError(f"search_resolution must be a power of two between 4 and the generator resolution {res}, "
                         f"got {search_resolution}")
    if s == res:
        return None
    block = getattr(generator.synthesis, f"b{s}")
    if not block.num_torgb:
        raise ValueError(f"search_resolution={s}: block b{s} has no toRGB layer (architecture "
                         f"{block.architecture!r}); a progressive search needs the 'skip' architecture")
    return s


def truncated_synthesis(synthesis, ws: torch.Tensor, resolution: int, noise_mode: str = "const", noise=None) -> torch.Tensor:
    """The skip image of ``synthesis`` at block ``resolution``: ws [N, num_ws, w_dim] -> [N, C, res, res].

    Runs the blocks up to that resolution exactly as ``SynthesisNetwork.forward`` does (same ws rows and
    noise entries); ``noise`` is the full list of ``noise_shapes()`` (entries above the resolution unused).
    """
    return synthesis.forward_blocks(ws, last=resolution, noise_mode=noise_mode, noise=noise)[1]


# precision -> the dtype of the generator's convolutions during the search phase
SEARCH_CONV_DTYPES = {"fp32": None, "bf16": torch.bfloat16}
PRECISIONS = tuple(SEARCH_CONV_DTYPES)


def staged_run(pulse, target, seeds, n, num_images, num_restarts, stats, stats_seconds, device, dtype, progress,
               callback=None, callback_every=1, track_noise=False):
    """``PULSE.search`` with ``search_resolution`` and/or ``precision="bf16"`` (called by it; same arguments
    as ``PULSE._run``): the search phase, then the full-resolution, full-precision check and refinement."""
    G = pulse.generator
    s = pulse.search_resolution or G.img_resolution
    size = s  # the coarse image is upsampled (2x at a time) to at least the target's size
    while size < max(target.shape[-2:]):
        size *= 2
    impl = getattr(G.synthesis, "impl", "auto")
    synthesize = None  # the full synthesis network
    if s < G.img_resolution:
        def synthesize(w, noise):
            img = truncated_synthesis(G.synthesis, w, s, noise=noise)
            while img.shape[-1] < size:
                img = ops.upsample2d(img, impl=impl)
            return img

    label = progress if isinstance(progress, str) else "PULSE"
    stage = []
    if s < G.img_resolution:
        stage.append(f"@{s}px")
    if pulse.precision != "fp32":
        stage.append(pulse.precision)
    saved_conv_dtype = G.conv_dtype
    search_conv_dtype = SEARCH_CONV_DTYPES[pulse.precision]
    try:
        if search_conv_dtype is not None:
            G.set_conv_dtype(search_conv_dtype)
        coarse_result = pulse._run(target, seeds, n, num_images, num_restarts, stats, stats_seconds, device, dtype,
                                   f"{label} {' '.join(stage)}" if progress else False, None, callback_every,
                                   synthesize=synthesize, image_size=size, track_noise=True)
    finally:
        G.set_conv_dtype(saved_conv_dtype)

    # Full resolution and precision: step 0 renders and checks every restart's best; the others refine what
    # misses eps.
    trainable = [i for i, kind in enumerate(pulse.layer_kinds()) if kind == "trainable"]
    latent = coarse_result.latents.reshape(n, *coarse_result.latents.shape[2:])
    noise = {i: t.reshape(n, *t.shape[2:]) for i, t in zip(trainable, coarse_result.noises)}

    def refine_schedule(step, total):
        return REFINE_START + (0.001 - REFINE_START) * step / max(total - 1, 1)

    final = pulse._run(target, seeds, n, num_images, num_restarts, stats, stats_seconds, device, dtype,
                       f"{label} @{G.img_resolution}px" if progress else False, callback, callback_every,
                       steps=1 + pulse.refine_steps, init=(latent, noise), lr_schedule=refine_schedule,
                       sync_every=1, cuda_graph=False,  # a few steps, compacted after each: not worth capturing
                       track_noise=track_noise)
    final.converged_step = torch.where(final.converged_step >= 0, final.converged_step + coarse_result.steps_run,
                                       final.converged_step)
    final.steps_run += coarse_result.steps_run
    final.seconds += coarse_result.seconds
    final.timings.update(search_s=final.seconds, seconds_per_step=final.seconds / max(final.steps_run, 1),
                         coarse_search_s=coarse_result.seconds, coarse_steps=coarse_result.steps_run,
                         full_resolution_steps=final.steps_run - coarse_result.steps_run,
                         coarse_best_l2=float(coarse_result.l2.min()),
                         coarse_converged=int(coarse_result.converged.sum()))
    return final

"""``upscale()``: one low-resolution face in, the generator's plausible high-resolution faces out.

Input conversion (PIL / numpy / tensor -> [1, C, h, w] in [0, 1]), generator resolution checks, the
batched PULSE search, and candidate selection (converged first, by loss, distinct images).
"""
from __future__ import annotations

import os
import secrets
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from pulse_ext.allocator import freed_memory_kept
from pulse_ext.diagnosis import Diagnosis, check_realism_option, diagnose
from pulse_ext.pulse.batching import search_in_parts
from pulse_ext.pulse.latent import restart_seed
from pulse_ext.pulse.losses import target_size_problem
from pulse_ext.pulse.search import PULSE, SearchResult

# ITU-R 601-2 luma, as PIL's convert("L").
_LUMA = (0.299, 0.587, 0.114)


class PulseConvergenceWarning(UserWarning):
    """No restart (or fewer than num_outputs restarts) reached L2 < eps; the best found is returned."""


class PulseRealismWarning(UserWarning):
    """The best output met eps but does not look like a face (``pulse_ext.realism``); the message says what to try."""


class PulseMemoryWarning(UserWarning):
    """The restarts did not fit the memory available at once and were searched in batches (same results)."""


@dataclass
class UpscaleResult:
    """What ``upscale(..., return_result=True)`` returns.

    candidates: K PIL images, best first (converged before not converged, then by loss).
    tensors: [K, C, H, W] float32 CPU in [0, 1], the same images. l2 / converged / restart_indices:
    per candidate. best_index: the restart that gave candidates[0]. seed: the seed actually used (pass
    it back to reproduce). timings: seconds for load, stats, search (and per step), total.
    search: the full ``SearchResult`` (every restart). low_res_input: the input as [1, C, h, w] in [0, 1].
    frame_box: with ``framing_search``, the square of the input searched ({"left", "top", "side"} in
    input pixels; l2 and the outputs' downscales refer to it); framing_probe: every box tried, with the
    L2 its short search reached. diagnosis: did the best output meet eps, does it look like a face
    (dlib, when installed), and what to try if not (``pulse_ext.diagnosis.Diagnosis``).
    """
    candidates: List["object"]
    tensors: torch.Tensor
    l2: List[float]
    converged: List[bool]
    restart_indices: List[int]
    best_index: int
    seed: int
    steps_run: int
    timings: Dict[str, float] = field(default_factory=dict)
    search: Optional[SearchResult] = None
    low_res_input: Optional[torch.Tensor] = None
    frame_box: Optional[Dict[str, int]] = None
    framing_probe: Optional[List[dict]] = None
    diagnosis: Optional[Diagnosis] = None

    @property
    def image(self):
        """The best candidate (PIL)."""
        return self.candidates[0]


def valid_input_sizes(resolution: int) -> List[int]:
    """Side lengths s that divide the generator resolution (the s x s inputs the bicubic downscaler takes
    are those with s >= 2; the area downscaler takes any size up to the resolution)."""
    return [s for s in range(1, resolution + 1) if resolution % s == 0]


def nearest_valid_size(size, resolution: int) -> int:
    """The side s >= 2 dividing ``resolution`` nearest (in log scale) to a (width, height) image's size,
    ties going up: what bicubic downscaling takes."""
    import math

    w, h = size
    target = math.log(math.sqrt(w * h))
    sides = [s for s in valid_input_sizes(resolution) if s >= 2] or [resolution]
    return min(reversed(sides), key=lambda s: abs(math.log(s) - target))


def size_problem(size, resolution: int, downscale: str = "area"):
    """None when a (width, height) input fits a resolution x resolution generator with this downscaler,
    else the reason (``pulse_ext.pulse.losses.target_size_problem``)."""
    w, h = size
    return target_size_problem((resolution, resolution), (h, w), downscale)


def resized_size(size, resolution: int, downscale: str = "area"):
    """The (width, height) an input that does not fit is resized to. Area: shrunk, keeping the aspect
    ratio, until it is no larger than the generator. Bicubic: the nearest s x s with s dividing it."""
    w, h = size
    if downscale == "area":
        scale = min(1.0, resolution / max(w, h))
        return max(1, min(resolution, round(w * scale))), max(1, min(resolution, round(h * scale)))
    side = nearest_valid_size(size, resolution)
    return side, side


def fit_size(image, resolution: int, downscale: str = "area"):
    """A PIL ``image`` resized to :func:`resized_size` (area averaging down, bicubic up)."""
    from PIL import Image

    new = resized_size(image.size, resolution, downscale)
    if new == image.size:
        return image
    shrink = new[0] <= image.size[0] and new[1] <= image.size[1]
    return image.resize(new, Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[C, h, w] -> [channels, h, w]: drop alpha, gray -> RGB by repetition, RGB -> gray by luma."""
    c = x.shape[0]
    if c in (2, 4):  # gray+alpha, RGBA: drop the alpha channel
        x, c = x[:c - 1], c - 1
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(3, -1, -1)
    if c == 3 and channels == 1:
        luma = torch.tensor(_LUMA, dtype=x.dtype).view(3, 1, 1)
        return (x * luma).sum(0, keepdim=True)
    raise ValueError(f"image has {c} channels; the generator makes {channels}-channel images")


def image_to_tensor(image, channels: int = 3) -> torch.Tensor:
    """Convert one image to a float32 CPU tensor [1, channels, h, w] in [0, 1].

    Accepts a file path, the bytes of an image file (e.g. an upload), a PIL image, a numpy array (uint8 HxW / HxWxC, or float HxW / HxWxC in
    [0, 1]), or a tensor [C, h, w] / [1, C, h, w] (uint8, or float in [0, 1]). Files are read by
    ``pulse_ext.io.read_image``, as the command line reads them (EXIF orientation, 16-bit and palette
    images, PIL's decompression-bomb guard; ``ImageReadError`` otherwise); PIL images of other modes go
    through ``pulse_ext.io.to_rgb_or_gray``. Alpha is dropped, gray is repeated to RGB, RGB is reduced
    to luma for a 1-channel generator.
    """
    from PIL import Image

    from pulse_ext.io import read_image, to_rgb_or_gray

    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        image = read_image(image, channels)  # as the command line reads it: EXIF, bit depths, bomb guard
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "L"):  # RGB and L go on as they are (luma below for 1 channel)
            image = to_rgb_or_gray(image, channels)
        image = np.array(image)  # a writable copy
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"numpy image must be HxW or HxWxC with C in 1..4, got shape {image.shape}")
        if image.dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        elif np.issubdtype(image.dtype, np.floating):
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
            _check_float_range(x, "numpy float image")
        else:
            raise ValueError(f"numpy image must be uint8 (0..255) or float (0..1), got dtype {image.dtype}")
    elif isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        if x.dim() == 4:
            if x.shape[0] != 1:
                raise ValueError(f"upscale takes one image: tensor must be [C, h, w] or [1, C, h, w], got "
                                 f"{list(x.shape)} (use pulse_ext.pulse.PULSE to search a batch)")
            x = x[0]
        if x.dim() != 3 or x.shape[0] not in (1, 2, 3, 4):
            raise ValueError(f"tensor image must be [C, h, w] or [1, C, h, w] with C in 1..4, got {list(image.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255
        elif x.is_floating_point():
            x = x.float()
            _check_float_range(x, "tensor image")
        else:
            raise ValueError(f"tensor image must be uint8 or float in [0, 1], got dtype {x.dtype}")
    else:
        raise TypeError(f"image must be a path, image-file bytes, PIL image, numpy array or torch tensor, got {type(image).__name__}")
    return _match_channels(x, channels).contiguous().unsqueeze(0)


def _check_float_range(x: torch.Tensor, what: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise ValueError(f"{what} must have values in [0, 1], got range [{lo:.4g}, {hi:.4g}] "
                         f"(for 0..255 data pass uint8)")


def tensor_to_pil(x: torch.Tensor):
    """[C, H, W] float in [0, 1] -> PIL image (RGB or L), rounding to uint8."""
    from PIL import Image

    array = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def _resolve_generator(generator, device):
    """A Generator on ``device`` from a Generator, a path/name (pulse_ext.checkpoints), or None ("default")."""
    if generator is None or isinstance(generator, (str, os.PathLike)):
        name = "default" if generator is None else generator
        try:
            from pulse_ext.checkpoints import load_generator
        except ImportError as error:
            raise RuntimeError(f"upscale: cannot load generator {str(name)!r}: pulse_ext.checkpoints is not "
                               f"available ({error}); pass generator=<a pulse_ext.stylegan2.Generator>") from error
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        generator = load_generator(name, device=device)
    if not isinstance(generator, torch.nn.Module) or not hasattr(generator, "synthesis"):
        raise TypeError(f"generator must be a pulse_ext.stylegan2.Generator, a checkpoint path or a name, "
                        f"got {type(generator).__name__}")
    if device is not None:
        generator = generator.to(device)
    return generator


def select_candidates(result: SearchResult, num_outputs: int, input_index: int = 0) -> List[int]:
    """``num_outputs`` restart indices of one input: ranked (converged first, then by loss), images
    identical (as uint8) to an already chosen one last."""
    order = result.ranking(input_index)
    as_bytes = (result.images[input_index].detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    chosen, duplicates, seen = [], [], []
    for r in order:
        if any(torch.equal(as_bytes[r], other) for other in seen):
            duplicates.append(r)
            continue
        chosen.append(r)
        seen.append(as_bytes[r])
    return (chosen + duplicates)[:num_outputs]


# upscale()'s and the command line's step budget: twice the original PULSE's 100. With the shipped
# generator, 100 steps end most searches just above eps (79 of 100 held-out faces met it); the 21 misses
# met it at 200 steps (20 of 21; docs/evaluation.md). Restarts that converge leave the batch, so easy
# inputs stop sooner: the README's aligned example converges in all 8 restarts within ~100 steps.
DEFAULT_STEPS = 200


def stop_at_outputs(searcher, num_outputs: int, options) -> None:
    """upscale()'s and the CLI's default: a plain search stops once ``num_outputs`` restarts met eps
    (``PULSE(enough_converged=num_outputs)``), unless ``options`` set ``enough_converged`` (None: all)."""
    if "enough_converged" not in options and searcher.plain:
        searcher.enough_converged = int(num_outputs)


def upscale(image, *, generator=None, restarts: int = 8, steps: int = DEFAULT_STEPS, num_outputs: int = 1, eps: float = 2e-3,
            loss: str = "100*L2+0.05*GEOCROSS", seed: Optional[int] = None,
            device: Optional[Union[str, torch.device]] = None, progress: Union[bool, str] = False,
            return_result: bool = False, callback=None, callback_every: int = 1, framing_search: bool = False,
            realism_check: Union[str, bool] = "auto", original_size: Optional[Tuple[int, int]] = None, **options):
    """Super-resolve one face image with PULSE on a StyleGAN2 generator.

    Args:
        image: path, PIL image, numpy uint8 HxW(xC) / float in [0, 1], or tensor [C, h, w] / [1, C, h, w]
            in [0, 1]. Any h, w up to the generator resolution: sizes that divide it (16x16 for 1024) are
            compared by block means, others (24x24) by exact area averaging; downscale="bicubic" needs
            one integer factor for both sides. A non-square input is taken to cover the whole square
            frame (so its face is stretched to it).
        generator: a ``pulse_ext.stylegan2.Generator``, a checkpoint path or name (loaded with
            ``pulse_ext.checkpoints.load_generator``), or None for the embedded default generator.
        restarts: independent random restarts, searched as one batch.
        steps, eps, loss: the PULSE search (see ``pulse_ext.pulse.PULSE``); a restart succeeds when
            its downscaled image has mean squared error < eps against the input.
        num_outputs: K distinct candidates to return (converged first, by loss); K <= restarts.
        seed: makes the search deterministic; None draws one (reported in the result).
        device: where to search; None = the generator's device (cuda if available for a loaded one).
            A Generator passed in is moved there in place.
        progress: show a tqdm progress bar with the best L2 so far (a string: the bar's label).
        return_result: return an ``UpscaleResult`` (candidates, L2s, flags, seed, timings) instead of images.
        callback, callback_every: passed to ``PULSE.search``: ``callback(SearchProgress)`` every
            ``callback_every`` steps and after the last (e.g. to record the search); None costs nothing.
        framing_search: for inputs framed looser than the generator's faces (a whole photo, FFHQ-style):
            first probe square boxes of the input with a short search each and search only the best
            (``pulse_ext.pulse.framing``); the output is then the face drawn for that box, and
            ``UpscaleResult.frame_box`` says which. Needs downscale="area"; costs about 2x.
        realism_check: "auto" (default: when dlib is installed), "on" / True (RuntimeError without dlib),
            "off" / False: score the best output with dlib's face detector (``pulse_ext.realism``) and
            warn (``PulseRealismWarning``) when it does not look like a face; ``UpscaleResult.diagnosis``.
        original_size: (width, height) of the image before the caller shrank it to fit the generator, if
            it did: a photo gets different advice (align it) than a tiny input (the framing search).
        **options: forwarded to ``PULSE``: enough_converged (default here: ``num_outputs`` for a plain search,
            so the search stops once that many restarts met eps, after about half the steps on real faces;
            None runs every restart until it converges or the steps end), learning_rate, optimizer, lr_schedule, noise_type,
            num_trainable_noise_layers, bad_noise_layers, tile_latent, downscale ("area" | "bicubic"),
            sync_every, drop_converged, latent_stats, stats_samples, impl, search_resolution,
            refine_steps, precision ("fp32" | "bf16"), cuda_graph.
    Returns:
        A PIL image (num_outputs=1), a list of K PIL images, or an ``UpscaleResult``.
        If no restart reaches eps, the best found is still returned, with a ``PulseConvergenceWarning``
        that says what to try (``pulse_ext.diagnosis``).
        Restarts that do not fit the memory available at once (CPU: estimated from the generator's layer
        shapes; CUDA: on an out-of-memory error) are searched in batches, with a ``PulseMemoryWarning``;
        the results are the same (each restart depends only on its seed), callbacks see each batch in turn.
    """
    start = time.perf_counter()
    if int(num_outputs) < 1 or int(num_outputs) > int(restarts):
        raise ValueError(f"num_outputs must be between 1 and restarts={restarts}, got {num_outputs}")
    realism_check = check_realism_option(realism_check)
    generator = _resolve_generator(generator, device)
    load_seconds = time.perf_counter() - start
    resolution = generator.img_resolution
    x = image_to_tensor(image, generator.img_channels)
    low_res_input = x
    h, w = x.shape[-2:]
    searcher = PULSE(generator, loss=loss, eps=eps, steps=steps, **options)  # (checks the options first)
    stop_at_outputs(searcher, num_outputs, options)
    problem = target_size_problem((resolution, resolution), (h, w), searcher.downscale)
    if problem:
        raise ValueError(f"image size {w}x{h} does not fit the {resolution}x{resolution} generator: {problem}")
    if seed is None:
        seed = secrets.randbits(63)
    search_device = next(generator.parameters()).device

    def split_warning(text):
        warnings.warn(f"PULSE: {text}", PulseMemoryWarning, stacklevel=3)

    # The probes and the search (maybe in parts) share one allocator setting on the CPU: freed buffers
    # stay in the process until the last search ends (pulse_ext.allocator).
    with freed_memory_kept(search_device):
        frame_box, probe = None, None
        if framing_search:
            from pulse_ext.pulse.framing import (DEFAULT_PROBE_RESTARTS, DEFAULT_PROBE_STEPS, candidate_boxes,
                                                 probe_boxes)

            if searcher.downscale != "area":
                raise ValueError(f"framing_search compares boxes of any size, which needs downscale='area', "
                                 f"got downscale={searcher.downscale!r}")
            # probe: latents only, every restart to the end (boxes are ranked by their best L2)
            latent_only = {k: v for k, v in options.items() if not k.startswith("intermediate_")
                           and k != "enough_converged"}
            short = PULSE(generator, loss=loss, eps=eps, steps=min(DEFAULT_PROBE_STEPS, int(steps)), **latent_only)
            box, probe = probe_boxes(
                lambda t, s: search_in_parts(short, t, s, search_device, on_split=split_warning),
                x, candidate_boxes(h, w),
                lambda i: [restart_seed(int(seed), 1 + i, r) for r in range(DEFAULT_PROBE_RESTARTS)])
            frame_box = box.as_dict()
            x = box.crop(x)
        # Restarts that would not fit the memory available are searched in batches (the same results: a
        # restart depends only on its seed), with a PulseMemoryWarning saying so.
        seeds = [[restart_seed(int(seed), 0, r) for r in range(int(restarts))]]
        result = search_in_parts(searcher, x.reshape(1, *x.shape[-3:]).contiguous(), seeds, search_device,
                                 on_split=split_warning, progress=progress, callback=callback,
                                 callback_every=callback_every)

    picked = select_candidates(result, int(num_outputs))
    converged = [bool(result.converged[0, r]) for r in picked]
    l2 = [float(result.l2[0, r]) for r in picked]
    tensors = result.images[0, picked].detach().float().clamp(0, 1).cpu()
    met_eps = any(result.converged[0].tolist())
    diagnosis = diagnose(met_eps=met_eps, best_l2=l2[0], eps=eps, best_image=tensors[0],
                         input_size=tuple(original_size) if original_size is not None else (w, h),
                         framing_search=framing_search, realism_check=realism_check)
    realism = (f" {diagnosis.problems[-1][0].upper()}{diagnosis.problems[-1][1:]}." if diagnosis.face_like is False
               else "")
    if not met_eps:
        warnings.warn(f"PULSE: no restart of {restarts} reached L2 < eps={eps} in {steps} steps (best L2 "
                      f"{min(l2):.3g}); returning the lowest-loss image(s).{realism} Try: {diagnosis.advice}.",
                      PulseConvergenceWarning, stacklevel=2)
    elif diagnosis.face_like is False:
        warnings.warn(f"PULSE: {diagnosis.message()}.", PulseRealismWarning, stacklevel=2)
    if met_eps and not all(converged):
        warnings.warn(f"PULSE: only {sum(result.converged[0].tolist())} of {restarts} restarts reached L2 < eps={eps}; "
                      f"{converged.count(False)} of the {num_outputs} outputs did not converge",
                      PulseConvergenceWarning, stacklevel=2)
    candidates = [tensor_to_pil(t) for t in tensors]
    if not return_result:
        return candidates[0] if num_outputs == 1 else candidates
    # The search's own timings (search_s, seconds_per_step, stats_s, a staged search's phases) + ours.
    timings = {**result.timings, "load_s": load_seconds, "total_s": time.perf_counter() - start}
    return UpscaleResult(candidates=candidates, tensors=tensors, l2=l2, converged=converged, restart_indices=picked,
                         best_index=picked[0], seed=int(seed), steps_run=result.steps_run, timings=timings,
                         search=result, low_res_input=low_res_input, frame_box=frame_box, framing_probe=probe,
                         diagnosis=diagnosis)

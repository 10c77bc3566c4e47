"""``pulse-ext upscale FILE… -o OUT``: the PULSE search on image files, one by one, and their outputs.

The work happens in this order, so that mistakes are reported before any time is spent searching:

1. read every input (any image PIL reads; EXIF orientation applied; converted to RGB / L);
2. plan every output path and check it: not existing (unless ``--overwrite``), in a directory that
   exists (or, for an output folder, can be created) and accepts a test file;
3. load the generator and check the input sizes against its resolution (``--resize`` to fix them);
4. search each input, write its images, the optional GIF of the search, and last its JSON metadata.

Every file is written to a temporary file in the destination directory and renamed over its final
name (``os.replace``), so an interrupted or failed run leaves no half-written file behind.

Folders (and ``--align``) are :mod:`pulse_ext.jobs`; the options are :mod:`pulse_ext.cli_upscale`'s.
"""
from __future__ import annotations

import secrets
import sys
import time
import warnings
from pathlib import Path

from pulse_ext.diagnosis import check_realism_option
from pulse_ext.errors import PROG, UserError
from pulse_ext.io import (IMAGE_SUFFIXES, image_format, make_output_folder, probe_writable, read_image, save_gif,
                          save_image, save_json)
from pulse_ext.jobs import check_search_options, search_options
from pulse_ext.runtime import resolve_device
from pulse_ext.upscale import (PulseConvergenceWarning, PulseMemoryWarning, PulseRealismWarning, fit_size,
                               resized_size, size_problem, tensor_to_pil, upscale)


# --------------------------------------------------------------------------------------------------
# outputs

def plan_outputs(inputs, output, args):
    """Per input: {'prefix', 'images': [K paths], 'all': [R paths], 'gif', 'json'}; raises UserError."""

    per_input = args.num_outputs
    out = Path(output)
    suffix = out.suffix.lower()
    file_mode = not out.is_dir() and suffix in IMAGE_SUFFIXES
    if file_mode and (len(inputs) > 1 or per_input > 1):
        what = f"{len(inputs)} inputs" if len(inputs) > 1 else f"--num-outputs {per_input}"
        raise UserError(f"-o {output} names one image file, but {what} make several images; give a folder")
    if not file_mode and out.exists() and not out.is_dir():
        raise UserError(f"-o {output} exists and is not a folder")
    if not file_mode and suffix and suffix not in IMAGE_SUFFIXES and out.suffix[1:].isalpha() and len(suffix) <= 5:
        raise UserError(f"-o {output}: {suffix} is not an image format pulse-ext writes "
                         f"({', '.join(IMAGE_SUFFIXES)}); for a folder, give a name without an extension")
    if file_mode:
        if image_format(suffix) is None:
            raise UserError(f"-o {output}: PIL cannot write {suffix} files")
        ext = out.suffix
        prefixes = [out.with_suffix("")]
    else:
        ext = ".png"
        stems = [Path(p).stem for p in inputs]
        clashes = sorted({s for s in stems if stems.count(s) > 1})
        if clashes:
            raise UserError(f"inputs share the name {clashes[0]!r} (outputs would collide); "
                             f"rename them or run them separately")
        prefixes = [out / s for s in stems]
    plans = []
    for prefix in prefixes:
        if file_mode:
            images = [out]
        elif per_input == 1:
            images = [Path(f"{prefix}{ext}")]
        else:
            images = [Path(f"{prefix}_{k}{ext}") for k in range(1, per_input + 1)]
        plans.append({
            "prefix": prefix,
            "images": images,
            "all": [Path(f"{prefix}.restart{r:02d}{ext}") for r in range(args.restarts)] if args.save_all else [],
            "gif": Path(f"{prefix}.search.gif") if args.save_intermediate else None,
            "json": Path(f"{prefix}.json"),
        })
    return plans, (None if file_mode else out)


def _plan_paths(plan):
    paths = list(plan["images"]) + list(plan["all"]) + [plan["json"]]
    if plan["gif"] is not None:
        paths.append(plan["gif"])
    return paths


def check_outputs(plans, folder, overwrite):
    """Refuse existing outputs (unless ``overwrite``) and prove each output directory is writable.

    Creates nothing: an output folder that does not exist yet is checked through its nearest existing
    ancestor, and made by :func:`make_output_folder` just before the search.
    """
    paths = [p for plan in plans for p in _plan_paths(plan)]
    if len(set(paths)) != len(paths):
        raise UserError("two outputs would get the same file name; rename the inputs or the output")
    for path in paths:
        if path.is_dir():
            raise UserError(f"output {path} is a folder")
        if path.exists() and not overwrite:
            raise UserError(f"{path} exists (pass --overwrite to replace it)")
    for directory in sorted({p.parent for p in paths}):
        if directory.is_dir():
            probe_writable(directory, "to the output folder")
            continue
        if folder is None or directory != folder:
            kind = "is a file, not a folder" if directory.exists() else "does not exist"
            raise UserError(f"output folder {directory} {kind}")
        ancestor = directory.absolute()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise UserError(f"cannot create output folder {directory}: {ancestor} is a file, not a folder")
        probe_writable(ancestor, f"output folder {directory} (cannot create it in)")


# --------------------------------------------------------------------------------------------------
# the search

def _describe_generator(spec, G):
    from pulse_ext.checkpoints import DEFAULT_PATH

    path = DEFAULT_PATH if spec == "default" else Path(spec)
    return {"checkpoint": str(spec), "path": str(Path(path).resolve()), "resolution": G.img_resolution,
            "img_channels": G.img_channels, "z_dim": G.z_dim, "w_dim": G.w_dim, "num_ws": G.num_ws,
            "parameters": sum(p.numel() for p in G.parameters())}


class _Frames:
    """Callback for ``--save-intermediate``: the best image so far of the (single) input, as PIL frames."""

    def __init__(self):
        self.frames, self.steps = [], []

    def __call__(self, state):
        best = state.ranking(0)[0]
        self.frames.append(tensor_to_pil(state.images[0, best].detach().float().cpu()))
        self.steps.append(state.step)


def upscale_files(args) -> int:
    """``pulse-ext upscale FILE… -o OUT`` for image files (folders and --align go to
    :func:`pulse_ext.jobs.run_job`): the steps of the module docstring. ``args`` is the command's
    argparse namespace. Returns the exit status (1: --strict and some input met no eps)."""
    import torch

    from pulse_ext import __version__
    from pulse_ext.checkpoints import load_generator

    started = time.perf_counter()

    def say(text):
        if not args.quiet:
            print(text, file=sys.stderr)

    def warn(text):
        print(f"{PROG}: warning: {text}", file=sys.stderr)

    # 1. options and inputs, before anything slow.
    check_search_options(args)
    try:
        check_realism_option(args.realism_check)
    except RuntimeError as exc:  # --realism-check on without dlib
        raise UserError(f"--realism-check on: {exc}") from None
    device = resolve_device(args.device, "--device")
    images = [read_image(path) for path in args.inputs]

    # 2. outputs.
    plans, folder = plan_outputs(args.inputs, args.output, args)
    check_outputs(plans, folder, args.overwrite)

    # 3. generator and sizes.
    load_start = time.perf_counter()
    G = load_generator(args.generator, device=device)
    load_seconds = time.perf_counter() - load_start
    resolution = G.img_resolution
    if args.intermediate:
        from pulse_ext.pulse.intermediate import check_intermediate_resolutions
        try:
            check_intermediate_resolutions(G, args.intermediate)
        except ValueError as exc:
            raise UserError(str(exc).replace("intermediate_resolutions", "--intermediate")) from None
    if G.img_channels != 3:
        images = [image.convert("L") for image in images]
    original_sizes = [image.size for image in images]
    for i, (path, image) in enumerate(zip(args.inputs, images)):
        w, h = image.size
        problem = size_problem((w, h), resolution, args.downscale)
        if problem is None:
            continue
        if not args.resize:
            new_w, new_h = resized_size((w, h), resolution, args.downscale)
            raise UserError(f"{path} is {w}x{h}, which does not fit the {resolution}x{resolution} generator: "
                             f"{problem}; pass --resize to resize it to {new_w}x{new_h}")
        images[i] = fit_size(image, resolution, args.downscale)
        say(f"{path}: resized {w}x{h} -> {images[i].size[0]}x{images[i].size[1]}")

    seed = args.seed
    if seed is None:
        seed = secrets.randbits(63)
    options = search_options(args)
    recorded_options = {"restarts": args.restarts, "steps": args.steps, "eps": args.eps, "loss": args.loss,
                        "num_outputs": args.num_outputs, "device": str(device), "lr": args.lr,
                        "optimizer": args.optimizer, "lr_schedule": args.lr_schedule, "noise_type": args.noise_type,
                        "downscale": args.downscale, "precision": args.precision, "save_all": args.save_all,
                        "all_restarts": args.all_restarts,
                        "save_intermediate": args.save_intermediate, "intermediate_every": args.intermediate_every,
                        "strict": args.strict, "resize": args.resize, "overwrite": args.overwrite,
                        "framing_search": args.framing_search, "realism_check": args.realism_check,
                        "intermediate": list(args.intermediate or []), "intermediate_steps": args.intermediate_steps,
                        "intermediate_radius": args.intermediate_radius}
    generator_info = _describe_generator(args.generator, G)
    make_output_folder(folder)

    # 4. search and write, input by input.
    unconverged = []
    for index, (path, image, plan) in enumerate(zip(args.inputs, images, plans)):
        frames = _Frames() if args.save_intermediate else None
        label = Path(path).name if len(args.inputs) == 1 else f"[{index + 1}/{len(args.inputs)}] {Path(path).name}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PulseConvergenceWarning)
            warnings.simplefilter("always", PulseMemoryWarning)
            warnings.simplefilter("always", PulseRealismWarning)
            record = warnings.showwarning  # what catch_warnings(record=True) installed: appends to caught

            def show(message, category, *rest, **kwargs):
                # Batching for memory is decided before the search starts: say so then, not after it.
                if issubclass(category, PulseMemoryWarning):
                    warn(f"{path}: {str(message).removeprefix('PULSE: ')}")
                else:
                    record(message, category, *rest, **kwargs)

            warnings.showwarning = show
            try:
                result = upscale(image, generator=G, restarts=args.restarts, steps=args.steps,
                                 num_outputs=args.num_outputs, eps=args.eps, loss=args.loss, seed=seed, device=device,
                                 progress=False if args.quiet else label, return_result=True, callback=frames,
                                 callback_every=args.intermediate_every, framing_search=args.framing_search,
                                 realism_check=args.realism_check, original_size=original_sizes[index], **options)
            except ValueError as exc:  # an option the search refuses (e.g. a loss the generator cannot use)
                raise UserError(str(exc)) from None
        for warning in caught:
            if issubclass(warning.category, (PulseConvergenceWarning, PulseRealismWarning)):
                warn(f"{path}: {str(warning.message).removeprefix('PULSE: ')}")
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        search = result.search
        if not bool(search.converged[0].any()):
            unconverged.append(path)

        written = []
        for candidate, out_path in zip(result.candidates, plan["images"]):
            save_image(candidate, out_path)
            written.append(str(out_path))
        all_paths = []
        if args.save_all:
            all_images = search.images[0].detach().float().clamp(0, 1).cpu()
            for r, out_path in enumerate(plan["all"]):
                save_image(tensor_to_pil(all_images[r]), out_path)
                all_paths.append(str(out_path))
        if frames is not None and frames.frames:
            save_gif(frames.frames, plan["gif"])
        metadata = {
            "pulse_ext_version": __version__,
            "torch_version": torch.__version__,
            "input": str(path),
            "input_size": list(original_sizes[index]),
            "searched_size": list(image.size),
            "resized": tuple(image.size) != tuple(original_sizes[index]),
            "outputs": written,
            "candidates": [{"path": p, "restart": r, "l2": l2, "converged": c,
                            "converged_step": int(search.converged_step[0, r]),
                            "loss": float(search.loss[0, r])}
                           for p, r, l2, c in zip(written, result.restart_indices, result.l2, result.converged)],
            "restarts": [{"restart": r, "seed": int(search.seeds[0][r]), "l2": float(search.l2[0, r]),
                          "l1": float(search.l1[0, r]), "loss": float(search.loss[0, r]),
                          "converged": bool(search.converged[0, r]),
                          "converged_step": int(search.converged_step[0, r]),
                          **({"path": all_paths[r]} if all_paths else {})}
                         for r in range(args.restarts)],
            "converged": bool(search.converged[0].any()),
            "num_converged": int(search.converged[0].sum()),
            "diagnosis": result.diagnosis.as_dict(),
            "frame_box": result.frame_box,
            "framing_probe": result.framing_probe,
            "intermediate": ({"path": str(plan["gif"]), "frames": len(frames.frames), "steps": frames.steps}
                             if frames is not None and frames.frames else None),
            "seed": int(seed),
            "steps_run": int(result.steps_run),
            "timings": {**{k: v if isinstance(v, dict) else float(v) for k, v in result.timings.items()}, "generator_load_s": load_seconds},
            "generator": generator_info,
            "options": recorded_options,
        }
        save_json(metadata, plan["json"])
        best = ", ".join(f"{v:.3g}" for v in result.l2)
        say(f"wrote {', '.join(written)} (L2 {best}; {metadata['num_converged']}/{args.restarts} restarts converged; "
            f"{result.steps_run} steps, {result.timings['search_s']:.1f}s) and {plan['json']}")

    say(f"done: {len(args.inputs)} input(s), seed {seed}, {time.perf_counter() - started:.1f}s")
    if args.strict and unconverged:
        print(f"{PROG}: error: --strict: no restart met eps={args.eps} for {', '.join(map(str, unconverged))} "
              f"(the best results were written)", file=sys.stderr)
        return 1
    return 0

"""Folder jobs for ``pulse-ext upscale IN_DIR -o OUT_DIR``: many inputs, batched searches, a manifest
that survives crashes, resume, and sharding across ``torchrun`` ranks.

- Inputs: every file of IN_DIR with an image extension PIL knows (not recursive; hidden files skipped),
  plus any files named directly. Each is known by its *name* (file name), which must be unique.
- Seeds: input ``name`` gets ``image_seed(base_seed, name)`` (a hash), and its restarts
  ``restart_seed(that, 0, r)`` — exactly what ``pulse-ext upscale FILE --seed <that>`` uses — so a result
  depends neither on the order of inputs, nor on the batch it was searched in, nor on the sharding.
- Batches: inputs of the same size are searched together, ``--batch`` at a time, as one
  ``PULSE.search`` of [B, C, h, w]. On out-of-memory the batch is split (restarts first, then inputs)
  and retried; the batch is capped beforehand from the memory available and the cost of a search row
  (measured on CUDA, estimated from the generator's layer shapes on the CPU; pulse_ext/pulse/batching.py).
- Outputs are written atomically (temporary file + rename). After an input's outputs are on disk, one
  JSON line is appended to the manifest (flush + fsync): input, outputs, loss, l2, converged, seed,
  time, error. A run that is killed and started again skips inputs the manifest records as done (with
  their outputs present); a partially written last line is ignored and cut off before appending.
  Unreadable inputs (or inputs with no face under ``--align``) are recorded with their error, skipped,
  and not retried on resume unless ``--retry-errors``.
- ``torchrun``: when WORLD_SIZE > 1, ranks init torch.distributed from the environment (nccl on CUDA,
  gloo on CPU), each on device LOCAL_RANK, take every WORLD_SIZE-th input, append to their own
  ``manifest.rank<R>.jsonl``, and after a barrier rank 0 merges all manifests into ``manifest.jsonl``
  (one line per input, sorted by input; written atomically).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from pulse_ext.diagnosis import check_realism_option, diagnose
from pulse_ext.errors import PROG, UserError
from pulse_ext.io import ImageReadError, atomic_write, make_output_folder, probe_writable, read_image, save_image
from pulse_ext.pulse.batching import row_bytes_for, rows_that_fit, searcher_split, speed_capped_rows
from pulse_ext.runtime import resolve_device
from pulse_ext.upscale import fit_size, size_problem, stop_at_outputs

MANIFEST = "manifest.jsonl"
RANK_MANIFEST = "manifest.rank{rank}.jsonl"


# --------------------------------------------------------------------------------------------------
# seeds and inputs

def image_seed(base_seed: int, name: str) -> int:
    """A 63-bit seed for input ``name`` of a job with ``base_seed`` (independent of order and sharding)."""
    digest = hashlib.sha256(f"{int(base_seed)}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _image_suffixes():
    from PIL import Image

    return {suffix.lower() for suffix in Image.registered_extensions()}


def list_inputs(inputs: Sequence[str]) -> List[tuple]:
    """[(name, path)] for the files of folders (sorted, non-recursive, image extensions, no hidden files)
    and files named directly; raises UserError on a missing path or a repeated name or stem."""
    suffixes = _image_suffixes()
    found = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.name.startswith(".") or not child.is_file() or child.suffix.lower() not in suffixes:
                    continue
                found.append((child.name, str(child)))
        elif path.exists():
            found.append((path.name, str(path)))
        else:
            raise UserError(f"input not found: {given}")
    names, stems = {}, {}
    for name, path in found:
        if name in names:
            raise UserError(f"two inputs are named {name!r} ({names[name]}, {path}); rename one")
        stem = Path(name).stem
        if stem in stems:
            raise UserError(f"inputs {stems[stem]} and {path} share the name {stem!r} (outputs would collide); "
                             f"rename one")
        names[name], stems[stem] = path, path
    return found


# --------------------------------------------------------------------------------------------------
# manifest

def read_records(path) -> List[dict]:
    """The JSON records of one manifest file; unparsable lines (a partial last line after a crash) skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("input"), str):
            records.append(record)
    return records


def manifest_files(folder) -> List[Path]:
    folder = Path(folder)
    return [folder / MANIFEST] + sorted(folder.glob("manifest.rank*.jsonl"))


def read_manifests(folder) -> Dict[str, dict]:
    """input name -> its record, over ``manifest.jsonl`` and every per-rank manifest: a successful record
    wins over an error, a later one over an earlier one."""
    merged = {}
    for path in manifest_files(folder):
        for record in read_records(path):
            old = merged.get(record["input"])
            if old is None or record.get("error") is None or old.get("error") is not None:
                merged[record["input"]] = record
    return merged


def is_done(record, folder) -> bool:
    return (record.get("error") is None and bool(record.get("outputs"))
            and all((Path(folder) / out).is_file() for out in record["outputs"]))


class ManifestWriter:
    """Appends one JSON line per record to a manifest, each followed by flush + fsync.

    Opening cuts off a partial last line (a crash mid-write), so the next record starts on its own line.
    """

    def __init__(self, path):
        self.path = Path(path)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
                    f.flush()
                    os.fsync(f.fileno())
        self.file = open(self.path, "ab")

    def append(self, record: dict):
        self.file.write((json.dumps(record, sort_keys=True) + "\n").encode())
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self):
        self.file.close()


def merge_manifests(folder) -> int:
    """Rewrite ``manifest.jsonl`` atomically with one record per input (sorted), from it and every per-rank
    manifest, then remove the per-rank files. Returns the number of records."""
    folder = Path(folder)
    records = read_manifests(folder)

    def write(tmp):
        with open(tmp, "w") as f:
            for name in sorted(records):
                f.write(json.dumps(records[name], sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    atomic_write(folder / MANIFEST, write)
    for path in manifest_files(folder)[1:]:
        path.unlink()
    return len(records)


# --------------------------------------------------------------------------------------------------
# distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, value):
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.started_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device_type: str) -> Dist:
    """From torchrun's environment: init the default process group when WORLD_SIZE > 1 (nccl for CUDA,
    gloo otherwise); rank 0 of 1 without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        started = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")), started_here=started)


# --------------------------------------------------------------------------------------------------
# the job

@dataclass
class _Item:
    name: str
    path: str
    tensors: List[torch.Tensor] = field(default_factory=list)  # one [C, h, w] per face (one without --align)
    seeds: List[int] = field(default_factory=list)
    stems: List[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    started: float = 0.0


def _output_names(stem, num_outputs, ext=".png"):
    return [f"{stem}{ext}"] if num_outputs == 1 else [f"{stem}_{k}{ext}" for k in range(1, num_outputs + 1)]


def check_search_options(options) -> None:
    """UserError for search options that cannot work together. ``options`` has the attributes of
    ``pulse-ext upscale``'s options (num_outputs, restarts, loss, lr, optimizer, lr_schedule, noise_type,
    downscale, precision): its argparse namespace, or the demo's equivalent."""
    from pulse_ext.pulse.losses import parse_loss

    if options.num_outputs > options.restarts:
        raise UserError(f"--num-outputs {options.num_outputs} is more than --restarts {options.restarts}")
    try:
        parse_loss(options.loss)
    except ValueError as exc:
        raise UserError(f"--loss: {exc}") from None


def search_options(options) -> dict:
    """PULSE keyword options besides loss/eps/steps, from an options object (see check_search_options)."""
    found = dict(learning_rate=options.lr, optimizer=options.optimizer, lr_schedule=options.lr_schedule,
                 noise_type=options.noise_type, downscale=options.downscale, precision=options.precision)
    if getattr(options, "intermediate", None):
        found.update(intermediate_resolutions=options.intermediate, intermediate_steps=options.intermediate_steps,
                     intermediate_radius=options.intermediate_radius)
    if getattr(options, "all_restarts", False) or getattr(options, "save_all", False):
        found["enough_converged"] = None  # every restart to the end (else: upscale.stop_at_outputs)
    return found


def _resolve_job_device(text, local_rank):
    if text is None and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    device = resolve_device(text, "--device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def run_job(args) -> int:
    """``pulse-ext upscale`` on folders (or with ``--align``): see the module docstring."""
    started = time.perf_counter()
    for flag, name in ((args.save_all, "--save-all"), (args.save_intermediate, "--save-intermediate"),
                       (getattr(args, "framing_search", False), "--framing-search")):
        if flag:
            raise UserError(f"{name} is not supported for folder jobs (or --align); run single files for it")
    check_search_options(args)
    realism_check = getattr(args, "realism_check", "auto")
    try:
        check_realism_option(realism_check)
    except RuntimeError as exc:  # --realism-check on without dlib
        raise UserError(f"--realism-check on: {exc}") from None
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: folder jobs write to a folder, and {out} is a file")
    if out.suffix.lower() in _image_suffixes() and not out.exists():
        raise UserError(f"-o {out}: folder jobs (a folder input or --align) write to a folder; give a name "
                         f"without an image extension")
    inputs = list_inputs(args.inputs)
    if not inputs:
        raise UserError(f"no image files in {', '.join(args.inputs)}")
    aligner = None
    if args.align:
        from pulse_ext.align import AlignError, FaceAligner
        try:
            aligner = FaceAligner(args.landmarks, min_score=args.min_score)
        except AlignError as exc:
            raise UserError(str(exc)) from None

    # Outputs must be writable before any search starts.
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot create output folder {out}: {ancestor} is a file, not a folder")
    probe_writable(out if out.is_dir() else ancestor, f"output folder {out}")
    resuming = (out / MANIFEST).exists() or bool(manifest_files(out)[1:]) if out.is_dir() else False
    if out.is_dir() and not resuming and not args.overwrite:
        for name, _ in inputs:
            stem = Path(name).stem
            clash = [p for p in out.iterdir() if p.name.startswith(stem) and p.suffix == ".png"
                     and (p.stem == stem or p.stem.startswith(stem + "_"))]
            if clash:
                raise UserError(f"{clash[0]} exists and {out} has no {MANIFEST} to resume from "
                                 f"(pass --overwrite to replace it)")

    if args.device is None and torch.cuda.is_available():
        device_type = "cuda"
    else:
        device_type = resolve_device(args.device, "--device").type
    dist = init_distributed(device_type)
    try:
        return _run_ranked(args, out, inputs, aligner, dist, started)
    finally:
        dist.close()


def _run_ranked(args, out, inputs, aligner, dist, started):
    from pulse_ext.checkpoints import load_generator
    from pulse_ext.pulse.latent import restart_seed
    from pulse_ext.pulse.search import PULSE
    from pulse_ext.upscale import image_to_tensor, select_candidates, tensor_to_pil

    prefix = f"[rank {dist.rank}] " if dist.world > 1 else ""

    def say(text):
        if not args.quiet:
            print(prefix + text, file=sys.stderr)

    def warn(text):
        print(f"{PROG}: warning: {prefix}{text}", file=sys.stderr)

    device = _resolve_job_device(args.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.rank == 0:
        make_output_folder(out)
    dist.barrier()
    records = read_manifests(out) if out.is_dir() else {}

    base_seed = args.seed
    if base_seed is None:
        recorded = [r["base_seed"] for r in records.values() if isinstance(r.get("base_seed"), int)]
        base_seed = recorded[-1] if recorded else secrets.randbits(63)
        base_seed = dist.broadcast(base_seed)
    elif any(r.get("base_seed") not in (None, base_seed) for r in records.values()):
        warn(f"--seed {base_seed} differs from the seed of inputs already done in {out} (they are kept)")

    G = load_generator(args.generator, device=device)
    resolution, channels = G.img_resolution, G.img_channels
    align_size = getattr(args, "align_size", None) or max(resolution // 4, 1)
    realism_check = getattr(args, "realism_check", "auto")
    align_problem = size_problem((align_size, align_size), resolution, args.downscale) if aligner else None
    if align_problem:
        raise UserError(f"--align-size {align_size} does not fit the {resolution}x{resolution} generator: "
                         f"{align_problem}")
    options = search_options(args)
    try:
        searcher = PULSE(G, loss=args.loss, eps=args.eps, steps=args.steps, **options)
    except ValueError as exc:
        raise UserError(str(exc).replace("intermediate_resolutions", "--intermediate")) from None
    stop_at_outputs(searcher, args.num_outputs, options)

    mine = [(i, name, path) for i, (name, path) in enumerate(inputs) if i % dist.world == dist.rank]
    skipped = 0
    todo = []
    for _, name, path in mine:
        record = records.get(name)
        if record is not None and (is_done(record, out) or (record.get("error") is not None
                                                            and not args.retry_errors)):
            skipped += 1
            continue
        todo.append((name, path))
    manifest_path = out / (MANIFEST if dist.world == 1 else RANK_MANIFEST.format(rank=dist.rank))
    writer = ManifestWriter(manifest_path)
    say(f"{len(inputs)} input(s); this process: {len(mine)}, {skipped} already done, {len(todo)} to do; "
        f"base seed {base_seed}; device {device}")

    common = {"base_seed": int(base_seed), "restarts": args.restarts, "steps": args.steps, "rank": dist.rank}
    errors, unconverged = [], []

    def fail(name, path, message, t0):
        errors.append(name)
        warn(message if str(path) in message else f"{path}: {message}")
        writer.append({"input": name, "path": str(path), "outputs": [], "loss": None, "l2": None,
                       "converged": None, "seed": None, "time": time.perf_counter() - t0, "error": message,
                       **common})

    row_bytes = None
    max_rows = None

    def load(name, path):
        t0 = time.perf_counter()
        try:
            image = read_image(path)
        except ImageReadError as exc:
            fail(name, path, str(exc), t0)
            return None
        if channels != 3:
            image = image.convert("L")
        stem = Path(name).stem
        item = _Item(name=name, path=path, started=t0)
        if aligner is not None:
            from pulse_ext.align import NoFaceError, face_names
            try:
                faces = aligner.align(image, align_size, framing=args.framing)
            except NoFaceError as exc:
                fail(name, path, str(exc), t0)
                return None
            for i, (face, face_stem) in enumerate(zip(faces, face_names(stem, len(faces)))):
                low = face.low.convert("L") if channels != 3 else face.low
                item.tensors.append(image_to_tensor(low, channels)[0])
                item.seeds.append(image_seed(base_seed, f"{name}#face{i}"))
                item.stems.append(face_stem)
            item.info = {"faces": len(faces), "framing": args.framing,
                         "quads": [face.quad.round(2).tolist() for face in faces]}
            return item
        w, h = image.size
        problem = size_problem((w, h), resolution, args.downscale)
        if problem:
            if not args.resize:
                fail(name, path, f"{w}x{h} does not fit the {resolution}x{resolution} generator ({problem}; "
                                 f"pass --resize)", t0)
                return None
            image = fit_size(image, resolution, args.downscale)
        item.tensors.append(image_to_tensor(image, channels)[0])
        item.seeds.append(image_seed(base_seed, name))
        item.stems.append(stem)
        item.info = {"size": list(image.size), "input_size": [w, h]}
        return item

    def search_batch(batch):
        nonlocal row_bytes, max_rows
        targets = torch.stack([t for item in batch for t in item.tensors])
        seeds = [[restart_seed(s, 0, r) for r in range(args.restarts)] for item in batch for s in item.seeds]
        if device.type in ("cuda", "cpu") and row_bytes is None:
            # CUDA: measured once; CPU: estimated from the layer shapes (the kernel kills a process that
            # over-asks instead of raising an error), against the memory available when the job starts.
            row_bytes = row_bytes_for(searcher, tuple(targets.shape[1:]), device)
            max_rows = rows_that_fit(row_bytes, device)
            if max_rows is not None:
                how = "measured" if device.type == "cuda" else "estimated"
                say(f"about {row_bytes / 2 ** 20:.1f} MiB per restart ({how}): at most {max_rows} restarts per batch")
            memory_rows = max_rows
            max_rows = speed_capped_rows(memory_rows, searcher.generator, device)
            if max_rows != memory_rows:
                say(f"at most {max_rows} restarts per batch: larger batches are slower per restart on the CPU")
        t0 = time.perf_counter()
        result = searcher_split(searcher, targets, seeds, max_rows, on_split=lambda text: say(text))
        search_seconds = time.perf_counter() - t0
        index = 0
        for item in batch:
            outputs, faces = [], []
            for face_index, (stem, seed) in enumerate(zip(item.stems, item.seeds)):
                b = index + face_index
                picked = select_candidates(result, args.num_outputs, b)
                names = _output_names(stem, args.num_outputs)
                for r, out_name in zip(picked, names):
                    save_image(tensor_to_pil(result.images[b, r].detach().float().clamp(0, 1).cpu()), out / out_name)
                outputs.extend(names)
                best = picked[0]
                diagnosis = diagnose(met_eps=bool(result.converged[b].any()), best_l2=float(result.l2[b, best]),
                                     eps=args.eps, best_image=result.images[b, best],
                                     input_size=item.info.get("input_size", targets.shape[-1:-3:-1]),
                                     aligned=aligner is not None, realism_check=realism_check)
                faces.append({"outputs": names, "seed": seed, "loss": float(result.loss[b, best]),
                              "l2": float(result.l2[b, best]), "converged": bool(result.converged[b].any()),
                              "num_converged": int(result.converged[b].sum()), "restart": best,
                              "losses": [float(result.loss[b, r]) for r in picked],
                              "l2s": [float(result.l2[b, r]) for r in picked],
                              "diagnosis": diagnosis.as_dict()})
            index += len(item.stems)
            share = search_seconds * len(item.stems) / max(targets.shape[0], 1)
            record = {"input": item.name, "path": str(item.path), "outputs": outputs,
                      "loss": faces[0]["loss"] if len(faces) == 1 else [f["loss"] for f in faces],
                      "l2": faces[0]["l2"] if len(faces) == 1 else [f["l2"] for f in faces],
                      "converged": all(f["converged"] for f in faces),
                      "seed": faces[0]["seed"] if len(faces) == 1 else [f["seed"] for f in faces],
                      "time": share + (t0 - item.started if item.started else 0.0), "search_s": share,
                      "error": None, **item.info, **common,
                      "diagnosis": faces[0]["diagnosis"] if len(faces) == 1 else [f["diagnosis"] for f in faces]}
            if aligner is not None:
                record["faces_detail"] = faces
            writer.append(record)
            if not record["converged"]:
                unconverged.append(item.name)
            for face_stem, face in zip(item.stems, faces):
                if not face["diagnosis"]["ok"]:
                    which = f" ({face_stem})" if len(faces) > 1 else ""
                    problems = "; ".join(face["diagnosis"]["problems"])
                    warn(f"{item.path}{which}: {problems}; the best was written. Try: {face['diagnosis']['advice']}")
            l2_text = ", ".join(f"{f['l2']:.3g}" for f in faces)
            say(f"wrote {', '.join(outputs)} (L2 {l2_text}, {share:.1f}s)")

    try:
        groups: Dict[tuple, List[_Item]] = {}
        for name, path in todo:
            item = load(name, path)
            if item is None:
                continue
            key = tuple(item.tensors[0].shape)
            groups.setdefault(key, []).append(item)
            if sum(len(i.tensors) for i in groups[key]) >= args.batch:
                search_batch(groups.pop(key))
        for key in list(groups):
            search_batch(groups.pop(key))
    except ValueError as exc:  # an option the search refuses
        raise UserError(str(exc)) from None
    finally:
        writer.close()

    dist.barrier()
    if dist.rank == 0:
        count = merge_manifests(out)
        say(f"done: {count} record(s) in {out / MANIFEST}, {time.perf_counter() - started:.1f}s")
    if errors:
        return 1
    if args.strict and unconverged:
        print(f"{PROG}: error: --strict: no restart met eps={args.eps} for {', '.join(unconverged)} "
              f"(the best results were written)", file=sys.stderr)
        return 1
    return 0

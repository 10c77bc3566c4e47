"""The framing evaluation: PULSE on real 16x16 faces cut the ways people's tiny faces come, from
CelebA identities held out of every training run.

    python python/evaluate_framing.py [--generator default] [--per-framing 30] [--doc docs/evaluation.md]

Faces: one photo per identity of ``celeba/celeb_<id>`` for ids >= --heldout-from (default 120: ids
120-149 are never trained on; a framing-mixture training run takes ids < 120), the first photo in which
dlib finds a face. Each face is cut five ways from its 68 landmarks (pulse_ext.align's geometry,
relative to the FFHQ square of the face):

- tight:     the UTKFace frame (what the shipped default generator was trained on)
- ffhq:      the FFHQ frame (hair, some background)
- wide:      the whole width of the photo, a square centred on the face (upright, not aligned)
- offcentre: FFHQ-sized, its centre moved by a quarter of the FFHQ half-side in x and y (signs drawn)
- random:    scale 0.6-1.3 of FFHQ, centre within +-0.3 half-sides (15 % of the side), rotation +-8 deg

each at the generator's resolution (the "original") and area-downscaled to 16x16 (the input).

Per framing: eps rate (any restart with L2 < eps, upscale()'s defaults), realism of the best output
and of the original (``pulse_ext.realism``: dlib's HOG detector scores the 200-px bicubic enlargement
>= 0.5), dlib identity distance between the best output and the original (< 0.6 is dlib's "same person"), KID of the outputs'
dlib embeddings against the originals' of the same framing (x 1e3; N is small, so no FD), and a grid
figure (docs/figures/framing-<name><variant>.png: original | input | best output, per face; the variant
names the options and, for another generator than the default, the generator).
With --framing-search each face goes through ``upscale(..., framing_search=True)`` (its own seed,
``--seed`` + face index): the output is the face drawn for the box of the input the probe picked, and
the figure's middle column outlines that box. Identity distance and KID still compare against the whole
original (the dlib embedder finds and aligns the face in either framing).
With --photos PHOTO... the faces come from those photos instead (every face dlib finds, cut the same
five ways): CelebA's held-out identities share their photos' source with a framing-mixture run's
training photos, so a generator should also be judged on faces from elsewhere. Results, figures and the
doc block then carry "-photos" in their names.
Needs dlib (pip install 'pulse_ext[align]'); writes metrics JSON to --out.
"""
import argparse
import datetime
import json
import math
import os
import sys
import tarfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import face_metrics as fm  # noqa: E402
from evaluate_generator import run_pulse, sha256_file, write_doc  # noqa: E402
from prepare_framing import celeba_photos  # noqa: E402

from pulse_ext.realism import REALISM_THRESHOLD, realism_scores  # noqa: E402

FRAMING_NAMES = ("tight", "ffhq", "wide", "offcentre", "random")
# Each variant (plain, -search, -ilo8_16, ...: variant_suffix) has its own block in --doc.
RESULTS_START = "<!-- framing{suffix}:start (written by python/evaluate_framing.py) -->"
RESULTS_END = "<!-- framing{suffix}:end -->"


def rotate_quad(quad, degrees):
    c = quad.mean(0)
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return (quad - c) @ rot.T + c


def framing_quads(landmarks, photo_size, rng):
    """name -> [4, 2] crop quad (PIL QUAD order) for one face."""
    from pulse_ext.align import FRAMINGS, Framing, face_quad

    ffhq = face_quad(landmarks, "ffhq")
    w, h = photo_size
    cy = ffhq.mean(0)[1]
    top = min(max(cy - w / 2, 0), max(h - w, 0))
    sx, sy = rng.choice([-1, 1], 2)
    scale = rng.uniform(0.6, 1.3)
    return {
        "tight": face_quad(landmarks, FRAMINGS["utkface"]),
        "ffhq": ffhq,
        "wide": np.array([[0, top], [0, top + w], [w, top + w], [w, top]], dtype=np.float64) - 0.5,
        "offcentre": face_quad(landmarks, Framing(1.0, 0.25 * sx, 0.25 * sy)),
        "random": rotate_quad(face_quad(landmarks, Framing(scale, *rng.uniform(-0.3, 0.3, 2))),
                              rng.uniform(-8, 8)),
    }


def cut_framings(crops, image, landmarks, resolution, rng):
    """Append one face of a PIL image, cut in every framing at resolution x resolution, to crops[framing]."""
    from pulse_ext.align import crop_quad

    for name, quad in framing_quads(landmarks, image.size, rng).items():
        crops[name].append(np.asarray(crop_quad(image, quad, resolution), dtype=np.uint8))


def heldout_faces(tar_path, heldout_from, count, resolution, seed, log):
    """{framing: uint8 [N, R, R, 3]} and the photo names, from the first usable photo of each identity."""
    from PIL import Image

    from pulse_ext.align import FaceAligner

    aligner = FaceAligner()
    rng = np.random.default_rng(seed)
    crops = {name: [] for name in FRAMING_NAMES}
    names = []
    with tarfile.open(tar_path) as tar:
        by_id = {}
        for ident, m in celeba_photos(tar):
            if ident >= heldout_from:
                by_id.setdefault(ident, []).append(m)
        for ident in sorted(by_id):
            if len(names) == count:
                break
            for m in by_id[ident]:
                image = Image.open(tar.extractfile(m)).convert("RGB")
                found = aligner.landmarks(image)
                if len(found) != 1:
                    continue
                cut_framings(crops, image, found[0][1], resolution, rng)
                names.append(m.name)
                break
    log(f"{len(names)} held-out identities (ids >= {heldout_from}), one photo each")
    return {k: np.stack(v) for k, v in crops.items()}, names


def photo_faces(paths, count_per_photo, resolution, seed, log):
    """{framing: uint8 [N, R, R, 3]} and names from photos of the user's (not CelebA): every face dlib
    finds in each photo (up to count_per_photo, left to right), cut in the same framings. For judging a
    generator on faces from another source than its training photos."""
    from PIL import Image

    from pulse_ext.align import FaceAligner

    aligner = FaceAligner()
    rng = np.random.default_rng(seed)
    crops = {name: [] for name in FRAMING_NAMES}
    names = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as error:  # not an image, or truncated
            raise SystemExit(f"--photos: cannot read {path}: {error}")
        found = aligner.landmarks(image)
        if not found:
            log(f"{path}: no face found, skipped")
            continue
        for k, (_, points) in enumerate(found[:count_per_photo]):
            cut_framings(crops, image, points, resolution, rng)
            names.append(f"{os.path.basename(path)}#face{k}")
    if not names:
        raise SystemExit("--photos: no face found in any of the photos")
    log(f"{len(names)} face(s) from {len(paths)} photo(s)")
    return {k: np.stack(v) for k, v in crops.items()}, names


def run_framing_search(G, faces, factor, seed, restarts, steps, log, **options):
    """``upscale(framing_search=True)`` on each face's area-downscaled input. Returns the inputs, best
    outputs [N, R, R, 3], best L2s, eps flags, chosen boxes (input pixels) and probe seconds per face."""
    import torch

    from pulse_ext.upscale import upscale

    small = fm.area_downscale(faces, factor)
    outputs, best_l2, converged, boxes = [], [], [], []
    start = time.perf_counter()
    for i in range(len(faces)):
        x = torch.from_numpy(small[i]).permute(2, 0, 1).float() / 255
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the no-eps warning: counted in the eps rate instead
            result = upscale(x, generator=G, restarts=restarts, steps=steps, seed=seed + i, framing_search=True,
                             return_result=True, realism_check="off", **options)
        outputs.append((result.tensors[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        best_l2.append(result.l2[0])
        converged.append(result.converged[0])
        boxes.append(result.frame_box)
        log(f"  framing search {i + 1}/{len(faces)} faces, box {result.frame_box}, "
            f"{time.perf_counter() - start:.0f} s")
    return small, np.stack(outputs), np.asarray(best_l2), np.asarray(converged), boxes


def variant_suffix(framing_search, options):
    """File-name suffix of a run's variant: '' (plain), '-search', '-ilo8_16', '-search-ilo8_16'."""
    suffix = "-search" if framing_search else ""
    if options:
        suffix += "-ilo" + "_".join(str(r) for r in options["intermediate_resolutions"])
    return suffix


def outline_boxes(tiles, boxes, scale):
    """Draw each chosen box (input pixels; tiles are the input enlarged ``scale`` times) in red."""
    tiles = tiles.copy()
    for tile, box in zip(tiles, boxes):
        l, t, s = (box[k] * scale for k in ("left", "top", "side"))
        r, b = min(l + s, tile.shape[1]) - 1, min(t + s, tile.shape[0]) - 1
        tile[t:b + 1, [l, r]] = (255, 0, 0)
        tile[[t, b], l:r + 1] = (255, 0, 0)
    return tiles


def describe_intermediate(intermediate):
    if not intermediate:
        return ""
    blocks = ",".join(str(r) for r in intermediate["resolutions"])
    return (f" + intermediate-layer search (blocks {blocks}, {intermediate['steps']} steps each, "
            f"radius {intermediate['radius']:g})")


def markdown_summary(m):
    lines = [f"Generator `{m['snapshot']['generator']}` ({m['snapshot']['resolution']} px, sha256 "
             f"{m['snapshot']['sha256'][:12]}); {m['n']} "
             f"{'face(s) from --photos' if m.get('source') == 'photos' else 'held-out CelebA identities'} per framing, 16x16 inputs, "
             f"{m['restarts']} restarts x {m['steps']} steps"
             f"{' with the framing search' if m.get('framing_search') else ''}"
             f"{describe_intermediate(m.get('intermediate'))}; {m['date']}, {m['hardware']}, {m['seconds']:.0f} s.",
             "", "| framing | meet eps | realistic outputs | realistic originals | identity distance (median) "
             "| same person (< 0.6) | KID x1e3 vs originals | s / face |", "|---|---|---|---|---|---|---|---|"]
    for name, r in m["framings"].items():
        lines.append(f"| {name} | {r['eps_rate']:.0%} | {r['realistic_outputs']:.0%} | {r['realistic_originals']:.0%} "
                     f"| {r['identity_distance_median']:.3f} | {r['same_person']:.0%} "
                     f"| {'n/a' if r['kid_x1e3'] is None else format(r['kid_x1e3'], '.1f')} "
                     f"| {r['seconds_per_face']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="default")
    ap.add_argument("--celeba", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                     "celeba-ids000-149.tar"))
    ap.add_argument("--heldout-from", type=int, default=120)
    ap.add_argument("--per-framing", type=int, default=30, help="held-out identities (one face each)")
    ap.add_argument("--photos", nargs="+", metavar="PHOTO", default=None,
                    help="evaluate faces found in these photos instead of CelebA's held-out identities (faces from "
                         "another source than the training photos; up to --per-framing faces per photo)")
    ap.add_argument("--framings", default=",".join(FRAMING_NAMES))
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="PULSE steps (default: upscale()'s)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--intermediate", default=None, metavar="RES[,RES]",
                    help="PULSE intermediate_resolutions (the intermediate-layer search after the latent one)")
    ap.add_argument("--intermediate-steps", type=int, default=50)
    ap.add_argument("--intermediate-radius", type=float, default=0.1)
    ap.add_argument("--framing-search", action="store_true",
                    help="upscale(framing_search=True) per face instead of the plain batched search")
    ap.add_argument("--out", default="benchmarks/results/framing")
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--doc", default=None, help="markdown file whose framing block gets the table")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    reason = fm.dlib_missing_reason()
    if reason:
        log(f"error: the framing evaluation needs dlib: {reason}")
        return 2
    import torch

    from pulse_ext.checkpoints import load_generator, resolve_checkpoint_path
    from pulse_ext.upscale import DEFAULT_STEPS

    torch.set_num_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS
    options = {}
    if args.intermediate:
        options = dict(intermediate_resolutions=tuple(int(r) for r in args.intermediate.split(",")),
                       intermediate_steps=args.intermediate_steps, intermediate_radius=args.intermediate_radius)
    t0 = time.perf_counter()
    path = resolve_checkpoint_path(args.generator)
    G = load_generator(args.generator).eval()
    R = G.img_resolution
    if args.photos:
        missing = [p for p in args.photos if not os.path.isfile(p)]
        if missing:
            log(f"error: --photos: no such file: {', '.join(missing)}")
            return 2
        faces, names = photo_faces(args.photos, args.per_framing, R, args.seed, log)
    else:
        faces, names = heldout_faces(args.celeba, args.heldout_from, args.per_framing, R, args.seed, log)
    embedder = fm.DlibEmbedder()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.figures, exist_ok=True)
    generator_name = args.generator if args.generator == "default" else os.path.basename(str(path))
    # Figures and the doc block of another generator than the default carry its name, so evaluating a
    # candidate never overwrites the default's.
    generator_tag = os.path.splitext(generator_name)[0].replace(".", "_")
    source = "-photos" if args.photos else ""  # results on the user's photos never overwrite CelebA's
    suffix = (("" if args.generator == "default" else "-" + generator_tag) + source
              + variant_suffix(args.framing_search, options))
    metrics = {"snapshot": {"generator": generator_name,
                            "sha256": sha256_file(path), "resolution": int(R)},
               "date": datetime.date.today().isoformat(), "hardware": f"CPU, {args.threads} thread(s)",
               "n": len(names), "photos": names, "source": "photos" if args.photos else "celeba-heldout",
               "restarts": args.restarts, "steps": steps,
               "framing_search": bool(args.framing_search),
               "intermediate": {k.removeprefix("intermediate_"): v for k, v in options.items()} or None,
               "framings": {}}
    for name in args.framings.split(","):
        originals = faces[name]
        t = time.perf_counter()
        boxes = None
        if args.framing_search:
            small, best, best_l2, converged, boxes = run_framing_search(G, originals, R // 16, args.seed,
                                                                        args.restarts, steps, log, **options)
        else:
            small, outputs, best_l2, converged, _ = run_pulse(G, originals, R // 16, args.seed, args.restarts, steps,
                                                              args.batch, log, **options)
            best = outputs[:, 0]
        seconds = time.perf_counter() - t
        out_real, orig_real = np.asarray(realism_scores(best)), np.asarray(realism_scores(originals))
        f_out, _ = embedder.embed(best)
        f_orig, _ = embedder.embed(originals)
        distance = np.linalg.norm(f_out - f_orig, axis=1)
        n = len(best)
        metrics["framings"][name] = {
            "eps_rate": float(converged.mean()), "best_l2_median": float(np.median(best_l2)),
            "realistic_outputs": float((out_real >= REALISM_THRESHOLD).mean()),
            "realistic_originals": float((orig_real >= REALISM_THRESHOLD).mean()),
            "realism_outputs_median": float(np.median(out_real)), "realism_originals_median": float(np.median(orig_real)),
            "identity_distance_median": float(np.median(distance)), "same_person": float((distance < 0.6).mean()),
            # the unbiased KID needs two faces a side
            "kid_x1e3": 1e3 * fm.kid(f_out, f_orig, num_subsets=50, subset_size=n)[0] if n >= 2 else None,
            "seconds_per_face": seconds / n,
        }
        if boxes is not None:
            metrics["framings"][name]["boxes"] = boxes
            metrics["framings"][name]["whole_input_box"] = float(np.mean([b["side"] == 16 for b in boxes]))
        shown = fm.nearest_upscale(small, R // 16)
        if boxes is not None:
            shown = outline_boxes(shown, boxes, R // 16)
        tiles = np.concatenate([originals[:, None], shown[:, None], best[:, None]], 1)
        rows = min(n, 10)
        grid = fm.make_grid(tiles[:rows].reshape(-1, R, R, 3), ncols=3 * 2 if rows > 5 else 3)
        fm.save_png(grid, os.path.join(args.figures, f"framing-{name}{suffix}.png"))
        log(f"{name}: {json.dumps(metrics['framings'][name])}")
    metrics["seconds"] = time.perf_counter() - t0
    with open(os.path.join(args.out, f"framing-{generator_tag}{source}{variant_suffix(args.framing_search, options)}.json"),
              "w") as f:
        json.dump(metrics, f, indent=2)
    summary = markdown_summary(metrics)
    print(summary)
    if args.doc:
        heading = ("Framing evaluation (" + ("faces from --photos" if args.photos else "held-out CelebA identities")
                   + ")" + (f", variant {suffix[1:]}" if suffix else ""))
        write_doc(args.doc, summary, RESULTS_START.format(suffix=suffix), RESULTS_END.format(suffix=suffix),
                  heading=heading)
    return 0


if __name__ == "__main__":
    sys.exit(main())

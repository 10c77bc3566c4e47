#!/usr/bin/env python
"""Evaluate a 64x64 face generator (pulse_ext's default, or any checkpoint): figures, PULSE success per
group, FD-dlib / KID against UTKFace's held-out split. See docs/evaluation.md.

    python python/evaluate_generator.py --generator default --data data/utkface64 --out docs/figures \
        --n-samples 1000 --n-pulse 32 --doc docs/evaluation.md

Writes to --out: samples.png (64 random samples, seed 0, truncation 1, noise const), pulse-grid.png
(held-out faces: original | 16x16 input | best two PULSE outputs), metrics.json; prints a markdown
summary and (with --doc) puts it between the results markers of that file.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import face_metrics as fm  # noqa: E402
from pulse_ext.upscale import DEFAULT_STEPS  # noqa: E402

RACES = ("White", "Black", "Asian", "Indian", "Others")
GENDERS = ("male", "female")
AGE_BANDS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 59), (60, 200))
RESULTS_START = "<!-- results:start (written by python/evaluate_generator.py) -->"
RESULTS_END = "<!-- results:end -->"


def age_band(age: int) -> str:
    for lo, hi in AGE_BANDS:
        if lo <= age <= hi:
            return f"{lo}+" if hi >= 200 else f"{lo}-{hi}"
    return "unknown"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot_kimg(path, explicit):
    """kimg of the snapshot: --kimg, else the sibling <stem>.json (as default.json), else None."""
    if explicit is not None:
        return float(explicit)
    sidecar = os.path.splitext(str(path))[0] + ".json"
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            return json.load(f).get("kimg")
    return None


def to_uint8(images) -> np.ndarray:
    """Generator output [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def generate(G, n: int, seed: int, noise_mode: str, batch: int = 100) -> np.ndarray:
    import torch

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    out = []
    torch.manual_seed(seed)  # for noise_mode="random"
    with torch.no_grad():
        for start in range(0, n, batch):
            out.append(to_uint8(G(z[start:start + batch], None, truncation_psi=1, noise_mode=noise_mode)))
    return np.concatenate(out)


def balanced_selection(labels: np.ndarray, n: int, seed: int) -> list:
    """n held-out indices, round-robin over the (race, gender) cells in a seeded random order within each
    cell; faces with a missing label are skipped. Deterministic for (labels, n, seed)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    cells = {(r, g): [] for r in range(len(RACES)) for g in range(len(GENDERS))}
    for i in order:
        age, gender, race = (int(v) for v in labels[i])
        if age >= 0 and (race, gender) in cells:
            cells[(race, gender)].append(int(i))
    chosen, depth = [], 0
    while len(chosen) < n and any(len(v) > depth for v in cells.values()):
        for key in sorted(cells):
            if len(cells[key]) > depth and len(chosen) < n:
                chosen.append(cells[key][depth])
        depth += 1
    return chosen


def run_pulse(G, faces: np.ndarray, factor: int, seed: int, restarts: int, steps: int, batch: int, log, **options):
    """PULSE at upscale()'s defaults (``steps`` given; ``options``: more PULSE options) on each face's
    area-downscaled input; per-face restart seeds. Every restart is searched to the end (upscale() stops
    once one met eps: the same eps rate, the best of fewer converged restarts; docs/pulse.md)."""
    import torch
    from pulse_ext.pulse import PULSE
    from pulse_ext.pulse.latent import restart_seed

    small = fm.area_downscale(faces, factor)
    searcher = PULSE(G, steps=steps, **options)  # upscale() defaults: 100*L2+0.05*GEOCROSS, eps 2e-3, area downscale
    best_l2, converged, outputs, steps = [], [], [], []
    start = time.perf_counter()
    for b0 in range(0, len(faces), batch):
        x = torch.from_numpy(small[b0:b0 + batch]).permute(0, 3, 1, 2).float() / 255
        seeds = [[restart_seed(seed, b0 + i, r) for r in range(restarts)] for i in range(x.shape[0])]
        res = searcher.search(x, restarts=restarts, seeds=seeds)
        imgs = (res.images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        for i in range(x.shape[0]):
            chosen, seen = [], []
            for r in res.ranking(i):
                if any(torch.equal(imgs[i, r], s) for s in seen):
                    continue
                chosen.append(r)
                seen.append(imgs[i, r])
                if len(chosen) == 2:
                    break
            while len(chosen) < 2:
                chosen.append(chosen[0])
            outputs.append(imgs[i, chosen].permute(0, 2, 3, 1).numpy())
            best_l2.append(float(res.l2[i].min()))
            converged.append(bool(res.converged[i].any()))
        steps.append(res.steps_run)
        log(f"  PULSE {min(b0 + batch, len(faces))}/{len(faces)} faces, {time.perf_counter() - start:.0f} s")
    return small, np.stack(outputs), np.asarray(best_l2), np.asarray(converged), {
        "seconds": time.perf_counter() - start, "stats_seconds": float(res.stats_seconds), "steps_run": steps}


def group_table(selection, labels, converged, best_l2):
    groups = {"all": list(range(len(selection)))}
    for k, i in enumerate(selection):
        age, gender, race = (int(v) for v in labels[i])
        groups.setdefault(f"race={RACES[race]}", []).append(k)
        groups.setdefault(f"gender={GENDERS[gender]}", []).append(k)
        groups.setdefault(f"age={age_band(age)}", []).append(k)
    def order(name):
        kind, _, value = name.partition("=")
        ranks = {"race": RACES, "gender": GENDERS, "age": [age_band(lo) for lo, _ in AGE_BANDS]}
        return (["all", "race", "gender", "age"].index(kind), list(ranks.get(kind, [value])).index(value)
                if value in ranks.get(kind, []) else 99)

    table = {}
    for name in sorted(groups, key=order):
        members = groups[name]
        members = np.asarray(members)
        table[name] = {"n": int(len(members)), "meets_eps": int(converged[members].sum()),
                       "fraction": float(converged[members].mean()), "mean_best_l2": float(best_l2[members].mean())}
    return table


def write_doc(path: str, summary: str, start: str = RESULTS_START, end: str = RESULTS_END,
              heading: str = "Results") -> None:
    """Put ``summary`` between the ``start`` / ``end`` markers of the markdown file at ``path`` (appended
    under ``## heading`` when the markers are not there yet)."""
    block = f"{start}\n{summary.rstrip()}\n{end}"
    if os.path.isfile(path):
        with open(path) as f:
            text = f.read()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            tail = rest.split(end, 1)[1]
            text = head + block + tail
        else:
            text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    else:
        text = "# Evaluating the default face generator\n\n## Results\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def fmt(x, digits=4):
    return "—" if x is None else f"{x:.{digits}f}"


def markdown_summary(m: dict) -> str:
    s = m["snapshot"]
    kimg = "unknown" if s["kimg"] is None else f"{s['kimg']:g}"
    lines = [f"### Results for snapshot `{s['sha256'][:12]}` at {kimg} kimg",
             "",
             f"`{s['generator']}` ({s['parameters'] / 1e6:.2f} M parameters), evaluated {m['date']} "
             f"on {m['hardware']}; `python python/evaluate_generator.py {m['command_args']}` "
             f"({m['seconds_total'] / 60:.1f} min). Figures: `docs/figures/samples.png`, `docs/figures/pulse-grid.png`; "
             "all numbers in `docs/figures/metrics.json`.",
             ""]
    p = m.get("pulse")
    if p:
        lines += [f"**PULSE on {p['n']} held-out faces** (balanced over race × gender; 64 → {p['input_size']}×"
                  f"{p['input_size']} area-downscaled input, uint8; `upscale()` defaults: {p['restarts']} restarts, "
                  f"{p.get('steps', 100)} steps, eps = {p['eps']}; a face meets eps when any restart reaches L2 < eps):",
                  "",
                  "| group | n | meets eps | fraction | mean best L2 |",
                  "|---|---|---|---|---|"]
        for name, row in p["groups"].items():
            lines.append(f"| {name} | {row['n']} | {row['meets_eps']} | {row['fraction']:.2f} | {row['mean_best_l2']:.5f} |")
        d = p.get("dlib")
        if d:
            lines += ["",
                      f"dlib view of the same {p['n']} faces (descriptor distance to the original 64-px face; dlib "
                      "calls < 0.6 \"same person\"; detection = HOG found a face in the 200-px resize):",
                      "",
                      "| images | mean distance to original | fraction < 0.6 | detection rate |",
                      "|---|---|---|---|",
                      f"| PULSE best output | {d['pulse_distance_mean']:.3f} | {d['pulse_same_person']:.2f} | {d['pulse_detection']:.2f} |",
                      f"| 16×16 input, bicubic-upscaled (baseline) | {d['bicubic_distance_mean']:.3f} | {d['bicubic_same_person']:.2f} | {d['bicubic_detection']:.2f} |",
                      f"| originals | 0 | 1 | {d['original_detection']:.2f} |"]
    f = m.get("fd")
    if f:
        n = f["n"]

        def kid_cell(mean, std):
            return f"{mean * 1e3:.3f}" + (f" ± {std * 1e3:.3f}" if f["kid_subset_size"] < n else "")

        lines += ["",
                  f"**FD-dlib / KID at N = {n}** (generator samples: seed 1, truncation 1, random noise; real: "
                  f"{n} held-out faces; floor: the same held-out faces vs {n} train faces, disjoint; KID = unbiased "
                  f"cubic-kernel MMD², ×10³, " + (f"mean ± std over 100 subsets of {f['kid_subset_size']}):" if f["kid_subset_size"] < n
                  else f"on all {n} rows, so no subset spread):"),
                  "",
                  "| set vs held-out | FD-dlib | KID ×10³ | detection rate |",
                  "|---|---|---|---|",
                  f"| generator samples | {f['generator_fd']:.4f} | {kid_cell(f['generator_kid'], f['generator_kid_std'])} | {f['generator_detection']:.2f} |",
                  f"| train faces (floor) | {f['floor_fd']:.4f} | {kid_cell(f['floor_kid'], f['floor_kid_std'])} | {f['train_detection']:.2f} |",
                  f"| (held-out detection rate) | | | {f['heldout_detection']:.2f} |"]
        if f.get("pulse_fd") is not None:
            lines += ["",
                      f"PULSE outputs at N = {f['pulse_n']} (too small for a stable FD in 128-D: indicative only): "
                      f"FD-dlib vs {f['pulse_n']} train faces {f['pulse_fd']:.3f} (originals vs the same train faces, "
                      f"the floor at this N: {f['pulse_floor_fd']:.3f}); KID×10³ {f['pulse_kid'] * 1e3:.2f} "
                      f"(floor {f['pulse_floor_kid'] * 1e3:.2f}).",
                      "",
                      "For reference, the data README's real-vs-real FD-dlib floor is 0.0375 / 0.0187 / 0.0093 / 0.0048 "
                      "at N = 250 / 500 / 1,000 / 2,000."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="default", help="checkpoint path, or 'default' (the shipped one)")
    ap.add_argument("--data", default="data/utkface64", help="folder with faces.npz (python/prepare_faces.py)")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--n-samples", type=int, default=1000, help="N for FD-dlib/KID (0 skips; held-out has 1,176)")
    ap.add_argument("--n-pulse", type=int, default=64, help="held-out faces to super-resolve (0 skips)")
    ap.add_argument("--n-grid", type=int, default=16, help="faces shown in pulse-grid.png")
    ap.add_argument("--input-size", type=int, default=16)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="PULSE steps (default: upscale()'s, %(default)s)")
    ap.add_argument("--pulse-batch", type=int, default=8, help="faces per PULSE batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kimg", type=float, default=None, help="training kimg of the snapshot (default: <stem>.json)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--doc", default=None, help="markdown file whose results block gets the summary")
    ap.add_argument("--palette", action="store_true", help="write the PNGs with a 256-colour palette (smaller)")
    ap.add_argument("--summary-only", metavar="METRICS_JSON", help="only re-render the summary (and --doc) from a metrics.json")
    ap.add_argument("--no-dlib", action="store_true", help="skip everything that needs dlib")
    ap.add_argument("--embedding-cache", default=None, metavar="DIR",
                    help="reuse the dlib embeddings of real faces from here (default: DATA/embedding-cache; "
                         "'' turns the cache off)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.summary_only:
        with open(args.summary_only) as f:
            metrics = json.load(f)
        summary = markdown_summary(metrics)
        print(summary)
        if args.doc:
            write_doc(args.doc, summary)
        return metrics

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from pulse_ext.checkpoints import load_generator, resolve_checkpoint_path

    path = resolve_checkpoint_path(args.generator)
    G = load_generator(args.generator).eval()
    snapshot = {"generator": args.generator if args.generator == "default" else os.path.basename(str(path)),
                "path": str(path), "sha256": sha256_file(path), "kimg": snapshot_kimg(path, args.kimg),
                "resolution": int(G.img_resolution), "parameters": int(sum(p.numel() for p in G.parameters()))}
    if G.img_resolution != 64:
        log(f"note: generator resolution {G.img_resolution}; the data is 64x64 (faces are resized)")
    data = np.load(os.path.join(args.data, "faces.npz"))
    heldout, labels = data["heldout"], data["heldout_labels"]
    os.makedirs(args.out, exist_ok=True)

    dlib_reason = "skipped (--no-dlib)" if args.no_dlib else fm.dlib_missing_reason()
    if dlib_reason:
        log(f"FD-dlib / KID and the dlib identity check are skipped: {dlib_reason}")
    embedder = None if dlib_reason else fm.DlibEmbedder()
    # Real faces (and their bicubic enlargements) are the same in every evaluation with the same seed.
    cache = os.path.join(args.data, "embedding-cache") if args.embedding_cache is None else args.embedding_cache

    metrics = {"snapshot": snapshot, "date": datetime.date.today().isoformat(),
               "hardware": f"CPU, {args.threads} thread(s)" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
               "command_args": " ".join(argv if argv is not None else sys.argv[1:]),
               "dlib": dlib_reason or "ok"}

    # (a) samples
    samples = generate(G, 64, args.seed, "const")
    size = fm.save_png(fm.make_grid(samples, 8), os.path.join(args.out, "samples.png"), palette=args.palette)
    log(f"wrote samples.png ({size / 1024:.0f} KiB)")

    # (b)+(c) PULSE on held-out faces
    if args.n_pulse > 0:
        factor = G.img_resolution // args.input_size
        selection = balanced_selection(labels, args.n_pulse, args.seed)
        faces = heldout[selection]
        small, outputs, best_l2, converged, timing = run_pulse(G, faces, factor, args.seed, args.restarts, args.steps,
                                                               args.pulse_batch, log)
        pulse = {"n": len(selection), "input_size": args.input_size, "restarts": args.restarts, "steps": args.steps,
                 "eps": 2e-3,
                 "selection": [str(data["heldout_names"][i]) for i in selection],
                 "best_l2": best_l2.tolist(), "converged": converged.tolist(), "timing": timing,
                 "groups": group_table(selection, labels, converged, best_l2)}
        # grid: 2 blocks side by side, each row original | input | best | second
        n_grid = min(args.n_grid, len(selection))
        cells = []
        for k in range(n_grid):
            cells += [faces[k], fm.nearest_upscale(small[k:k + 1], factor)[0], outputs[k, 0], outputs[k, 1]]
        cells = np.stack(cells)
        half = -(-n_grid // 2)
        left, right = fm.make_grid(cells[:4 * half], 4), fm.make_grid(cells[4 * half:], 4)
        right = np.pad(right, ((0, left.shape[0] - right.shape[0]), (0, 0), (0, 0)), constant_values=255)
        grid = np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], axis=1)
        size = fm.save_png(grid, os.path.join(args.out, "pulse-grid.png"), palette=args.palette)
        log(f"wrote pulse-grid.png ({size / 1024:.0f} KiB)")
        if embedder is not None:
            from PIL import Image
            bicubic = np.stack([np.asarray(Image.fromarray(s).resize(faces.shape[2:0:-1], Image.BICUBIC)) for s in small])
            f_orig, d_orig = embedder.embed(faces, "dlib originals", cache)
            f_out, d_out = embedder.embed(np.ascontiguousarray(outputs[:, 0]), "dlib PULSE")
            f_bic, d_bic = embedder.embed(bicubic, "dlib bicubic", cache)
            dist_out = np.linalg.norm(f_out - f_orig, axis=1)
            dist_bic = np.linalg.norm(f_bic - f_orig, axis=1)
            pulse["dlib"] = {"pulse_distance_mean": float(dist_out.mean()), "pulse_same_person": float((dist_out < 0.6).mean()),
                             "pulse_detection": float(d_out.mean()), "bicubic_distance_mean": float(dist_bic.mean()),
                             "bicubic_same_person": float((dist_bic < 0.6).mean()), "bicubic_detection": float(d_bic.mean()),
                             "original_detection": float(d_orig.mean()), "pulse_distance": dist_out.tolist()}
            pulse["_features"] = (f_orig, f_out)
        metrics["pulse"] = pulse

    # (d) FD-dlib / KID
    if embedder is not None and args.n_samples > 0:
        n = args.n_samples
        if n > len(heldout):
            raise SystemExit(f"--n-samples {n} exceeds the held-out split ({len(heldout)})")
        rng = np.random.default_rng(args.seed + 7)
        real = heldout[np.sort(rng.permutation(len(heldout))[:n])]
        train = data["train"][np.sort(rng.permutation(len(data["train"]))[:n])]
        fake = generate(G, n, args.seed + 1, "random")
        if fake.shape[1] != real.shape[1]:
            from PIL import Image
            fake = np.stack([np.asarray(Image.fromarray(f).resize(real.shape[2:0:-1], Image.BICUBIC)) for f in fake])
        log(f"embedding 3 x {n} images with dlib (~0.1 s each on one core; real faces come from the cache "
            f"when an earlier evaluation embedded them)")
        f_real, d_real = embedder.embed(real, "dlib held-out", cache)
        f_train, d_train = embedder.embed(train, "dlib train", cache)
        f_fake, d_fake = embedder.embed(fake, "dlib samples")
        subset = min(1000, n)
        kid_g = fm.kid(f_fake, f_real, subset_size=subset)
        kid_f = fm.kid(f_train, f_real, subset_size=subset)
        fd = {"n": n, "kid_subset_size": subset,
              "generator_fd": fm.fd(f_fake, f_real), "floor_fd": fm.fd(f_train, f_real),
              "generator_kid": kid_g[0], "generator_kid_std": kid_g[1],
              "floor_kid": kid_f[0], "floor_kid_std": kid_f[1],
              "generator_detection": float(d_fake.mean()), "heldout_detection": float(d_real.mean()),
              "train_detection": float(d_train.mean())}
        if "pulse" in metrics and "_features" in metrics["pulse"]:
            f_orig, f_out = metrics["pulse"]["_features"]
            k = len(f_out)
            ref = f_train[:k]
            fd.update({"pulse_n": k, "pulse_fd": fm.fd(f_out, ref), "pulse_floor_fd": fm.fd(f_orig, ref),
                       "pulse_kid": fm.kid(f_out, ref, subset_size=k)[0],
                       "pulse_floor_kid": fm.kid(f_orig, ref, subset_size=k)[0]})
        metrics["fd"] = fd
    if "pulse" in metrics:
        metrics["pulse"].pop("_features", None)

    metrics["seconds_total"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    summary = markdown_summary(metrics)
    print(summary)
    if args.doc:
        write_doc(args.doc, summary)
        log(f"wrote the results block of {args.doc}")
    return metrics


if __name__ == "__main__":
    main()

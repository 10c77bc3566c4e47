#!/usr/bin/env python
"""Compare pulse_ext's StyleGAN2 generator with NVIDIA's own stylegan2-ada-pytorch Generator.

    python python/check_nvidia_parity.py --nvidia-repo /path/to/stylegan2-ada-pytorch [--device cpu]

For a few small configurations this builds NVIDIA's Generator with random weights (zero-initialised
biases, noise strengths and w_avg are randomised too, so every term is exercised), loads its
state_dict into ``pulse_ext.stylegan2.Generator`` with strict=True, and prints the max abs difference
of ws and images for noise_mode 'const', 'none' and 'random' (same seed), truncation psi 1 and 0.7,
with and without a cutoff, for each of our impls, against both of NVIDIA's modconv paths. NVIDIA's code is imported from the given checkout at
run time; this repository contains none of it. On CPU NVIDIA's custom ops use their reference paths.

    python python/check_nvidia_parity.py --pickle --nvidia-repo PATH [--stylegan3-repo PATH]

``--pickle`` checks the loader on files written by NVIDIA's own code: NVIDIA's Generator (random
weights, zero-initialised terms randomised) is pickled with NVIDIA's persistence exactly as their
training loop writes a network snapshot (dict of deep-copied G, D, G_ema, augment_pipe and
training_set_kwargs); the file is read back by NVIDIA's legacy.load_network_pkl (sanity) and, in a
separate Python process where none of NVIDIA's modules is importable, by ``pulse_ext.load_generator``.
Images (noise_mode 'const', psi 1, psi 0.7, psi 0.7 with a cutoff) are compared with those of the
pickled G_ema computed by NVIDIA's code in fp32. With --stylegan3-repo the same is done for the
stylegan3 repo's StyleGAN2 (``training/networks_stylegan2.py``), and its alias-free StyleGAN3
generators (T and R configs) must be refused with a clear message. NVIDIA's code runs in child
processes; the pickles live in a temporary folder (--workdir to keep them) and are never committed.

Exit status 1 when any difference exceeds --tolerance.
"""
from __future__ import annotations

import argparse
import importlib
import copy
import json
import os
import pickle
import subprocess
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pulse_ext import _extension  # noqa: E402
from pulse_ext.stylegan2 import Generator  # noqa: E402

CONFIGS = {
    # name: Generator kwargs
    "64px cb2048 cmax128 z=w=256 map8": dict(
        z_dim=256, c_dim=0, w_dim=256, img_resolution=64, img_channels=3,
        mapping_kwargs=dict(num_layers=8), synthesis_kwargs=dict(channel_base=2048, channel_max=128)),
    "256px cb1024 cmax64 z=w=64 map4 clamp": dict(
        z_dim=64, c_dim=0, w_dim=64, img_resolution=256, img_channels=3,
        mapping_kwargs=dict(num_layers=4),
        synthesis_kwargs=dict(channel_base=1024, channel_max=64, conv_clamp=0.5, num_fp16_res=0)),
    "32px conditional c=5 z=48 w=40 map3": dict(
        z_dim=48, c_dim=5, w_dim=40, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=3, embed_features=24, layer_features=56),
        synthesis_kwargs=dict(channel_base=512, channel_max=32)),
    "32px architecture=orig 1 channel": dict(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=1,
        mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture="orig")),
    "32px architecture=resnet clamp": dict(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=512, channel_max=32, architecture="resnet", conv_clamp=2.0)),
}


def _stub_missing_modules() -> None:
    """NVIDIA's modules import requests (URL downloads), click (command lines) and pkg_resources
    (version checks) at import time only; stand-ins where the venv lacks them."""
    for name in ("requests", "click"):
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            # click.command(), click.option(...), ...: decorators that leave the function as it is.
            stub.__getattr__ = lambda attr: (lambda *a, **k: (lambda f: f))
            sys.modules[name] = stub
    try:
        importlib.import_module("pkg_resources")
    except ImportError:  # the stylegan3 repo's ops use pkg_resources.parse_version only (setuptools >= 81 lacks it)
        from packaging.version import parse
        sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
        sys.modules["pkg_resources"].parse_version = parse


def import_nvidia_generator(repo: str):
    repo = os.path.abspath(repo)
    if not os.path.isfile(os.path.join(repo, "training", "networks.py")):
        raise SystemExit(f"--nvidia-repo {repo!r} has no training/networks.py; pass a stylegan2-ada-pytorch checkout")
    sys.path.insert(0, repo)
    _stub_missing_modules()
    return importlib.import_module("training.networks").Generator


def randomise_zero_init(G_nv: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, t in list(G_nv.named_parameters()) + list(G_nv.named_buffers()):
            if name.endswith("noise_strength") or name.endswith(".bias") or name.endswith("w_avg"):
                t.copy_(0.5 * torch.randn(t.shape, generator=generator))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def compare(name: str, kwargs: dict, G_nv_cls, device: torch.device, impls, batch: int) -> float:
    torch.manual_seed(0)
    G_nv = G_nv_cls(**kwargs).eval().to(device)
    randomise_zero_init(G_nv, torch.Generator().manual_seed(1))
    G = Generator(**kwargs).eval().to(device)
    G.load_state_dict(G_nv.state_dict(), strict=True)

    z = torch.randn([batch, kwargs["z_dim"]], device=device, generator=None)
    c = None
    if kwargs["c_dim"]:
        c = torch.nn.functional.one_hot(torch.arange(batch) % kwargs["c_dim"], kwargs["c_dim"]).float().to(device)
    cutoff = max(1, G.num_ws // 2)
    worst = 0.0
    print(f"\n{name}: num_ws={G.num_ws}, batch={batch}, device={device}")
    with torch.no_grad():
        for psi, cut in ((1, None), (0.7, None), (0.7, cutoff)):
            ws_nv = G_nv.mapping(z, c, truncation_psi=psi, truncation_cutoff=cut)
            ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cut)
            err_ws = max_abs(ws, ws_nv)
            worst = max(worst, err_ws)
            for noise_mode in ("const", "none", "random"):
                torch.manual_seed(123)
                img_nv = G_nv.synthesis(ws_nv, noise_mode=noise_mode)
                # Eval mode runs NVIDIA's grouped "fused_modconv"; training runs the unfused form.
                torch.manual_seed(123)
                img_nv_unfused = G_nv.synthesis(ws_nv, noise_mode=noise_mode, fused_modconv=False)
                for impl in impls:
                    G.set_impl(impl)
                    torch.manual_seed(123)
                    img = G.synthesis(ws, noise_mode=noise_mode)
                    err = max_abs(img, img_nv)
                    err_unfused = max_abs(img, img_nv_unfused)
                    worst = max(worst, err, err_unfused)
                    print(f"  psi={psi:<3} cutoff={str(cut):<4} noise={noise_mode:<6} impl={impl:<9} "
                          f"ws err={err_ws:.2e}  img err={err:.2e} (vs unfused_modconv {err_unfused:.2e})  "
                          f"img range {img_nv.min().item():+.2f}..{img_nv.max().item():+.2f}")
    return worst


# --------------------------------------------------------------------------------------------------
# --pickle: files written by NVIDIA's own code, read by pulse_ext in a process without NVIDIA's code.

# name: (resolution, z_dim = w_dim, mapping layers, channel_base, channel_max, conv_clamp, augment pipe)
# The last one is train.py's cfg=stylegan2 ("config F": channel_base 32768, channel_max 512, 8 mapping
# layers, num_fp16_res 4, conv_clamp 256) at 64 px so that it stays affordable on a CPU.
PICKLE_CONFIGS = {
    "64px cb2048 cmax128 z=w=256 map8 clamp256 augment=bgc": (64, 256, 8, 2048, 128, 256, "bgc"),
    "256px cb1024 cmax64 z=w=64 map4 clamp0.5": (256, 64, 4, 1024, 64, 0.5, None),
    "64px config-F (cb32768 cmax512 z=w=512 map8 clamp256)": (64, 512, 8, 32768, 512, 256, None),
}
PICKLE_CASES = ((1, None), (0.7, None), (0.7, "half"))  # (psi, cutoff); "half" = num_ws // 2
BGC = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1,
           lumaflip=1, hue=1, saturation=1)
NVIDIA_PACKAGES = ("dnnlib", "torch_utils", "training", "legacy")


def _perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.add_(0.1 * torch.randn(t.shape, generator=generator))


def _write_snapshot(flavour: str, repo: str, key: str, spec, out_dir: str, batch: int) -> dict:
    """Build, randomise and pickle one network snapshot the way NVIDIA's training loop does; render G_ema."""
    import dnnlib  # noqa: F401  (imported from the checkout)
    import legacy
    res, zw, n_map, cbase, cmax, clamp, aug = spec
    common_kwargs = dict(c_dim=0, img_resolution=res, img_channels=3)
    if flavour == "ada":  # stylegan2-ada-pytorch train.py
        G_kwargs = dnnlib.EasyDict(class_name="training.networks.Generator", z_dim=zw, w_dim=zw,
                                   mapping_kwargs=dnnlib.EasyDict(), synthesis_kwargs=dnnlib.EasyDict())
        D_kwargs = dnnlib.EasyDict(class_name="training.networks.Discriminator", block_kwargs=dnnlib.EasyDict(),
                                   mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict())
        G_kwargs.synthesis_kwargs.channel_base = D_kwargs.channel_base = cbase
        G_kwargs.synthesis_kwargs.channel_max = D_kwargs.channel_max = cmax
        G_kwargs.mapping_kwargs.num_layers = n_map
        G_kwargs.synthesis_kwargs.num_fp16_res = D_kwargs.num_fp16_res = 4
        G_kwargs.synthesis_kwargs.conv_clamp = D_kwargs.conv_clamp = clamp
        D_kwargs.epilogue_kwargs.mbstd_group_size = 4
    else:  # stylegan3 train.py --cfg=stylegan2: synthesis options are flat
        G_kwargs = dnnlib.EasyDict(class_name="training.networks_stylegan2.Generator", z_dim=zw, w_dim=zw,
                                   mapping_kwargs=dnnlib.EasyDict())
        D_kwargs = dnnlib.EasyDict(class_name="training.networks_stylegan2.Discriminator",
                                   block_kwargs=dnnlib.EasyDict(), mapping_kwargs=dnnlib.EasyDict(),
                                   epilogue_kwargs=dnnlib.EasyDict())
        G_kwargs.channel_base = D_kwargs.channel_base = cbase
        G_kwargs.channel_max = D_kwargs.channel_max = cmax
        G_kwargs.mapping_kwargs.num_layers = n_map
        D_kwargs.epilogue_kwargs.mbstd_group_size = 4
        G_kwargs.num_fp16_res = D_kwargs.num_fp16_res = 4
        G_kwargs.conv_clamp = D_kwargs.conv_clamp = clamp
        G_kwargs.fused_modconv_default = "inference_only"
    training_set_kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path="/data/faces.zip",
                                          use_labels=False, max_size=70000, xflip=True, resolution=res)

    torch.manual_seed(0)
    # training_loop.py: G and D from construct_class_by_name, G_ema = deepcopy(G).eval()
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common_kwargs).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    # "Trained" weights: G_ema gets its zero-initialised terms randomised and differs from G, so a
    # loader that read G instead of G_ema would fail the comparison.
    randomise_zero_init(G_ema, torch.Generator().manual_seed(1))
    _perturb(G, torch.Generator().manual_seed(2))
    augment_pipe = None
    if aug:
        augment_pipe = dnnlib.util.construct_class_by_name(class_name="training.augment.AugmentPipe",
                                                           **BGC).train().requires_grad_(False)
        augment_pipe.p.copy_(torch.as_tensor(0.3))

    if flavour == "ada":  # stylegan2-ada-pytorch training_loop.py, "Save network snapshot"
        snapshot_data = dict(training_set_kwargs=dict(training_set_kwargs))
        for name, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", augment_pipe)]:
            if module is not None:
                module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
            snapshot_data[name] = module
            del module
    else:  # stylegan3 training_loop.py
        snapshot_data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe,
                             training_set_kwargs=dict(training_set_kwargs))
        for k, value in snapshot_data.items():
            if isinstance(value, torch.nn.Module):
                value = copy.deepcopy(value).eval().requires_grad_(False)
                snapshot_data[k] = value.cpu()
            del value
    path = os.path.join(out_dir, f"{flavour}-{len(os.listdir(out_dir))}.pkl")
    with open(path, "wb") as f:
        pickle.dump(snapshot_data, f)

    G_ref = snapshot_data["G_ema"]
    with open(path, "rb") as f:
        G_legacy = legacy.load_network_pkl(f)["G_ema"]
    z = torch.randn([batch, zw], generator=torch.Generator().manual_seed(3))
    label = torch.zeros([batch, 0])
    images, legacy_err = {}, 0.0
    with torch.no_grad():
        for psi, cut in PICKLE_CASES:
            cutoff = G_ref.num_ws // 2 if cut == "half" else cut
            # generate.py's call, in fp32 (their CPU path; the stylegan3 repo forces fp32 on CPU itself).
            img = G_ref(z, label, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const", force_fp32=True)
            img_legacy = G_legacy(z, label, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const",
                                  force_fp32=True)
            legacy_err = max(legacy_err, max_abs(img, img_legacy))
            images[f"{psi}/{cutoff}"] = img
    ref = os.path.splitext(path)[0] + ".ref.pt"
    torch.save(dict(z=z, images=images), ref)
    return dict(name=f"{flavour}: {key}", pickle=path, ref=ref, legacy_err=legacy_err,
                size_mb=os.path.getsize(path) / 2 ** 20, num_ws=G_ref.num_ws, legacy_class=type(G_legacy).__module__)


def _write_alias_free(repo: str, out_dir: str) -> list:
    """stylegan3 train.py --cfg=stylegan3-t / -r generators, pickled as a snapshot; pulse_ext must refuse them."""
    import dnnlib
    written = []
    for cfg in ("stylegan3-t", "stylegan3-r"):
        G_kwargs = dnnlib.EasyDict(class_name="training.networks_stylegan3.Generator", z_dim=64, w_dim=64,
                                   mapping_kwargs=dnnlib.EasyDict(num_layers=2), channel_base=1024, channel_max=64,
                                   magnitude_ema_beta=0.5 ** (32 / (20 * 1e3)), num_fp16_res=4, conv_clamp=256)
        if cfg == "stylegan3-r":
            G_kwargs.conv_kernel = 1
            G_kwargs.channel_base *= 2
            G_kwargs.channel_max *= 2
            G_kwargs.use_radial_filters = True
        G = dnnlib.util.construct_class_by_name(**G_kwargs, c_dim=0, img_resolution=32, img_channels=3)
        G = G.train().requires_grad_(False)
        D = dnnlib.util.construct_class_by_name(class_name="training.networks_stylegan2.Discriminator", c_dim=0,
                                                img_resolution=32, img_channels=3, channel_base=1024, channel_max=64)
        snapshot_data = dict(G=G, D=D, G_ema=copy.deepcopy(G).eval(), augment_pipe=None,
                             training_set_kwargs=dict(path="/data/faces.zip", resolution=32))
        for k, value in snapshot_data.items():
            if isinstance(value, torch.nn.Module):
                snapshot_data[k] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        path = os.path.join(out_dir, f"{cfg}.pkl")
        with open(path, "wb") as f:
            pickle.dump(snapshot_data, f)
        written.append(dict(name=cfg, pickle=path))
    return written


def _writer_main(flavour: str, repo: str, out_dir: str, keys, batch: int) -> None:
    torch.set_num_threads(1)
    repo = os.path.abspath(repo)
    needed = "training/networks.py" if flavour == "ada" else "training/networks_stylegan2.py"
    if not os.path.isfile(os.path.join(repo, needed)):
        raise SystemExit(f"{repo!r} has no {needed}")
    sys.path.insert(0, repo)
    _stub_missing_modules()
    results = [_write_snapshot(flavour, repo, key, PICKLE_CONFIGS[key], out_dir, batch) for key in keys]
    refusals = _write_alias_free(repo, out_dir) if flavour == "sg3" else []
    with open(os.path.join(out_dir, f"{flavour}.json"), "w") as f:
        json.dump(dict(results=results, refusals=refusals), f)


def _reader_main(manifest: str) -> None:
    """Runs in a fresh process: nothing of NVIDIA's may be importable; pulse_ext loads and renders."""
    import importlib.util
    torch.set_num_threads(1)
    # This script's own folder holds pulse_ext's python/training package, which is not NVIDIA's.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    leaked = [m for m in NVIDIA_PACKAGES if m in sys.modules or importlib.util.find_spec(m) is not None]
    if leaked:
        raise SystemExit(f"reader process can import NVIDIA modules {leaked}; refusing to run the check")
    from pulse_ext.checkpoints import CheckpointError, load_generator
    with open(manifest) as f:
        info = json.load(f)
    for entry in info["results"]:
        G = load_generator(entry["pickle"])
        ref = torch.load(entry["ref"], weights_only=True)
        impls = ["reference"] + (["fused"] if _extension.has_kernels_for(torch.device("cpu")) else [])
        ours = {}
        with torch.no_grad():
            for impl in impls:
                G.set_impl(impl)
                for case in ref["images"]:
                    psi, cutoff = case.split("/")
                    cutoff = None if cutoff == "None" else int(cutoff)
                    ours[f"{impl}:{case}"] = G(ref["z"], None, truncation_psi=float(psi), truncation_cutoff=cutoff,
                                               noise_mode="const")
        entry["ours"] = os.path.splitext(entry["ref"])[0] + ".ours.pt"
        entry["loaded_config"] = G.init_kwargs
        torch.save(ours, entry["ours"])
    for entry in info["refusals"]:
        try:
            load_generator(entry["pickle"])
            entry["refused"] = None
        except CheckpointError as exc:
            entry["refused"] = f"{type(exc).__name__}: {exc}"
    info["nvidia_modules_after_load"] = sorted(m for m in sys.modules if m.split(".")[0] in NVIDIA_PACKAGES)
    with open(manifest, "w") as f:
        json.dump(info, f)


def _run(cmd, env=None, cwd=None) -> None:
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=cwd)


def pickle_main(args) -> int:
    keep = args.workdir is not None
    workdir = args.workdir or tempfile.mkdtemp(prefix="pulse_ext_nvidia_pickles_")
    os.makedirs(workdir, exist_ok=True)
    me = os.path.abspath(__file__)
    # Child processes: NVIDIA's code only in the writer; the reader runs from a neutral folder with a
    # PYTHONPATH that names none of NVIDIA's checkouts.
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    clean_env.setdefault("OMP_NUM_THREADS", "1")
    writer_env = dict(clean_env)
    if args.writer_pythonpath:
        writer_env["PYTHONPATH"] = args.writer_pythonpath
    flavours = [("ada", args.nvidia_repo)] + ([("sg3", args.stylegan3_repo)] if args.stylegan3_repo else [])
    worst = 0.0
    failures = []
    for flavour, repo in flavours:
        out_dir = os.path.join(workdir, flavour)
        os.makedirs(out_dir, exist_ok=True)
        _run([sys.executable, me, "--_write", flavour, repo, out_dir, "--batch", str(args.batch),
              "--pickle-configs", *args.pickle_configs], env=writer_env)
        manifest = os.path.join(out_dir, f"{flavour}.json")
        _run([sys.executable, me, "--_read", manifest], env=clean_env, cwd=workdir)
        with open(manifest) as f:
            info = json.load(f)
        commit = _git_head(repo)
        print(f"\n{flavour} ({os.path.abspath(repo)} @ {commit}); pulse_ext process imported NVIDIA modules: "
              f"{info['nvidia_modules_after_load'] or 'none'}")
        for entry in info["results"]:
            ref = torch.load(entry["ref"], weights_only=True)
            ours = torch.load(entry["ours"], weights_only=True)
            print(f"  {entry['name']}: {entry['size_mb']:.1f} MiB pickle, num_ws={entry['num_ws']}, "
                  f"legacy.load_network_pkl vs pickled G_ema max err {entry['legacy_err']:.2e}")
            worst = max(worst, entry["legacy_err"])
            for key, img in ours.items():
                impl, case = key.split(":")
                err = max_abs(img, ref["images"][case])
                worst = max(worst, err)
                psi, cutoff = case.split("/")
                print(f"    psi={psi:<3} cutoff={cutoff:<4} noise=const impl={impl:<9} img err={err:.2e}  "
                      f"(img range {ref['images'][case].min().item():+.2f}..{ref['images'][case].max().item():+.2f})")
        for entry in info["refusals"]:
            if entry["refused"] is None:
                failures.append(f"{entry['name']} pickle was loaded instead of refused")
            print(f"  {entry['name']} (alias-free) pickle: {entry['refused'] or 'LOADED (wrong)'}")
    ok = worst < args.tolerance and not failures
    for failure in failures:
        print("FAIL:", failure)
    print(f"\nmax abs error over all comparisons: {worst:.3e} ({'OK' if ok else 'FAIL'}, tolerance {args.tolerance})")
    if keep:
        print(f"pickles kept in {workdir} (written by NVIDIA's code: do not commit them)")
    else:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def _git_head(repo: str) -> str:
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit (not a git work tree)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvidia-repo", help="path to a stylegan2-ada-pytorch checkout")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help=f"subset of {list(CONFIGS)}")
    parser.add_argument("--pickle", action="store_true",
                        help="check load_generator on network pickles written by NVIDIA's code (CPU)")
    parser.add_argument("--stylegan3-repo", help="with --pickle: also a stylegan3 checkout")
    parser.add_argument("--pickle-configs", nargs="*", default=list(PICKLE_CONFIGS),
                        help=f"with --pickle: subset of {list(PICKLE_CONFIGS)}")
    parser.add_argument("--workdir", help="with --pickle: keep the pickles here (default: a temporary folder)")
    parser.add_argument("--writer-pythonpath", default=os.environ.get("NVIDIA_PYTHONPATH"),
                        help="with --pickle: PYTHONPATH for the processes that run NVIDIA's code (e.g. where "
                             "scipy is installed for their augment/stylegan3 modules); default $NVIDIA_PYTHONPATH")
    parser.add_argument("--_write", nargs=3, metavar=("FLAVOUR", "REPO", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--_read", metavar="MANIFEST", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._write:
        _writer_main(*args._write, args.pickle_configs, args.batch)
        return 0
    if args._read:
        _reader_main(args._read)
        return 0
    if not args.nvidia_repo:
        parser.error("--nvidia-repo is required")
    if args.pickle:
        return pickle_main(args)

    G_nv_cls = import_nvidia_generator(args.nvidia_repo)
    device = torch.device(args.device)
    impls = ["reference"] + (["fused"] if _extension.has_kernels_for(device) else [])
    worst = 0.0
    for name in args.configs:
        worst = max(worst, compare(name, CONFIGS[name], G_nv_cls, device, impls, args.batch))
    ok = worst < args.tolerance
    print(f"\nmax abs error over all comparisons: {worst:.3e} ({'OK' if ok else 'FAIL'}, tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

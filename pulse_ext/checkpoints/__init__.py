"""Load StyleGAN2 generators from real-world checkpoints, safely, into ``pulse_ext.stylegan2.Generator``.

``load_generator(path_or_name)`` recognises a file by its content, not its name:

- NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (``.pkl`` with ``G_ema``),
- NVIDIA's original TensorFlow StyleGAN2 pickles (``stylegan2-ffhq-config-f.pkl``),
- rosinality/stylegan2-pytorch ``.pt`` files (``g_ema``),
- pulse_ext's own ``.safetensors`` (:func:`save_generator`),
- ``"default"``: the generator shipped in ``pulse_ext/weights/default.safetensors``.

No format is read by executing code from the file: pickles go through an allow-list unpickler
(:mod:`pulse_ext.checkpoints._safe_pickle`), torch files through ``torch.load(weights_only=True)``.
Every problem is a :class:`CheckpointError` (a ``ValueError``) whose message names what was found.
"""
import argparse
import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from pulse_ext.checkpoints._common import ConvertedCheckpoint
from pulse_ext.checkpoints._safe_pickle import SafeUnpickler, safe_load_pickle
from pulse_ext.checkpoints.errors import CheckpointError, UnsafeCheckpointError, UnsupportedArchitectureError
from pulse_ext.checkpoints.native import read_native, save_generator
from pulse_ext.checkpoints.nvidia_pickle import convert_network_pickle, is_nvidia_network_pickle
from pulse_ext.checkpoints.rosinality import convert_rosinality_checkpoint, is_rosinality_checkpoint
from pulse_ext.checkpoints.tensorflow_pickle import convert_tensorflow_pickle, is_tensorflow_pickle

DEFAULT_NAME = "default"
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"

# torch.save's legacy (pre-1.6, non-zip) files start with a pickled magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def resolve_checkpoint_path(path_or_name):
    """``"default"`` -> the shipped file; otherwise the path itself (which must exist)."""
    if isinstance(path_or_name, str) and path_or_name == DEFAULT_NAME:
        if not DEFAULT_PATH.is_file():
            raise CheckpointError(
                f"pulse_ext ships no default generator yet ({DEFAULT_PATH} is absent); pass a checkpoint path "
                "(see docs/checkpoints.md)")
        return DEFAULT_PATH
    path = Path(os.fspath(path_or_name))
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    return path


def sniff_format(path):
    """Container kind by content: 'safetensors' | 'torch-zip' | 'torch-legacy' | 'pickle'."""
    with open(path, "rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty")
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the checkpoint itself (run git lfs pull)")
    if head.lstrip()[:1] == b"<":
        raise CheckpointError(f"{path} looks like an HTML/XML page, not a checkpoint (failed download?)")
    raise CheckpointError(
        f"unknown checkpoint format: {path} starts with {head[:8]!r}; expected an NVIDIA .pkl, a rosinality .pt "
        "or a pulse_ext .safetensors")


def _torch_load(path):
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            name = _first_refused_global(path) or refused.group(1)
            raise UnsafeCheckpointError(
                f"refused global '{name}' in torch file (torch.load weights_only); the file may be "
                "malicious or hold objects pulse_ext does not read", name) from None
        raise CheckpointError(f"corrupt torch file: {str(exc).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"corrupt or truncated torch file: {message}") from None


def _first_refused_global(path):
    """Full ``module.name`` of the first global our allow-list refuses in a torch zip file, if any.

    torch's weights_only error drops the module of builtins ("GLOBAL exec"); our own unpickler,
    run over the file's data.pkl with storages stubbed out, names it exactly. Nothing is executed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if member is None:
                return None
            unpickler = SafeUnpickler(io.BytesIO(archive.read(member)))
            unpickler.persistent_load = lambda pid: None
            unpickler.load()
    except UnsafeCheckpointError as exc:
        return exc.global_name
    except Exception:  # anything else: fall back to torch's name
        return None
    return None


def _describe_content(data):
    if isinstance(data, dict):
        keys = ", ".join(repr(k) for k in list(data)[:6])
        return f"a dict with keys {keys}"
    return f"a {type(data).__name__}"


def read_checkpoint(path_or_name):
    """Read and translate a checkpoint without building a module -> ConvertedCheckpoint."""
    path = resolve_checkpoint_path(path_or_name)
    kind = sniff_format(path)
    if kind == "safetensors":
        return read_native(path)
    if kind in ("torch-zip", "torch-legacy"):
        data = _torch_load(path)
        if is_rosinality_checkpoint(data):
            return convert_rosinality_checkpoint(data)
        raise CheckpointError(f"unknown torch checkpoint: {path} holds {_describe_content(data)}; expected "
                              "rosinality's dict with 'g_ema'")
    with open(path, "rb") as f:
        data = safe_load_pickle(io.BufferedReader(f, buffer_size=1 << 20))
    if is_nvidia_network_pickle(data):
        return convert_network_pickle(data)
    if is_tensorflow_pickle(data):
        return convert_tensorflow_pickle(data)
    raise CheckpointError(f"unknown pickle: {path} holds {_describe_content(data)}; expected NVIDIA's dict with "
                          "'G_ema' or a TensorFlow (G, D, Gs) tuple")


def _estimate_w_avg(G, num_samples=10_000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn([num_samples, G.z_dim], generator=generator)
    with torch.no_grad():
        ws = torch.cat([G.mapping(chunk, None)[:, 0] for chunk in z.split(1000)])
    return ws.mean(dim=0)


def build_generator(checkpoint):
    """ConvertedCheckpoint -> Generator on the CPU (eval mode, no grads). Checks every name and shape."""
    from pulse_ext.stylegan2 import Generator

    try:
        G = Generator(**checkpoint.config)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise UnsupportedArchitectureError(f"{checkpoint.source_format}: pulse_ext's Generator cannot be built "
                                           f"with this configuration ({exc})") from None
    expected = G.state_dict()
    state = dict(checkpoint.state_dict)
    for name, value in expected.items():
        if name not in state and any(name.endswith(s) or name == s for s in checkpoint.defaults_from_model):
            state[name] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
        raise CheckpointError(f"{checkpoint.source_format}: tensors do not match the generator: {'; '.join(parts)}")
    for name, value in expected.items():
        if tuple(state[name].shape) != tuple(value.shape):
            raise CheckpointError(f"{checkpoint.source_format}: {name} must be {list(value.shape)}, "
                                  f"got {list(state[name].shape)}")
    G.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    G.eval().requires_grad_(False)
    if checkpoint.estimate_w_avg:
        G.mapping.w_avg.copy_(_estimate_w_avg(G))
    if checkpoint.latent_stats:
        from pulse_ext.pulse.latent import load_latent_stats_records
        load_latent_stats_records(G, checkpoint.latent_stats)
    return G


def load_generator(path_or_name, *, device="cpu"):
    """Load a StyleGAN2 generator from a checkpoint file (any supported format) or ``"default"``.

    Returns ``pulse_ext.stylegan2.Generator`` on ``device``, in eval mode, with requires_grad False.
    Raises CheckpointError (missing file, unknown/corrupt format, refused pickle global, unsupported
    architecture), naming what was found.
    """
    return build_generator(read_checkpoint(path_or_name)).to(torch.device(device))


def write_converted(checkpoint, destination, *, latent_stats=True):
    """Build ``checkpoint`` (a ConvertedCheckpoint) and save it as pulse_ext ``.safetensors``; returns the Generator.

    latent_stats: also fit PULSE's mapping statistics (100k mapping passes, seconds on a CPU) and store
    them in the file, so searches with it skip that fit (unconditional generators only).
    """
    G = build_generator(checkpoint)
    if latent_stats and not G.c_dim:
        from pulse_ext.pulse.latent import fit_latent_stats
        fit_latent_stats(G)
    save_generator(G, destination, source_format=checkpoint.origin)
    return G


def convert_checkpoint(source, destination, *, latent_stats=True):
    """Read ``source`` (any supported format) and write it as pulse_ext ``.safetensors``; returns the Generator.
    See ``write_converted`` for ``latent_stats``."""
    return write_converted(read_checkpoint(source), destination, latent_stats=latent_stats)


__all__ = ["CheckpointError", "ConvertedCheckpoint", "DEFAULT_PATH", "UnsafeCheckpointError",
           "UnsupportedArchitectureError", "build_generator", "convert_checkpoint", "load_generator",
           "read_checkpoint", "save_generator", "write_converted"]

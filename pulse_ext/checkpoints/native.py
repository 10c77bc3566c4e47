"""pulse_ext's own checkpoint format: one ``.safetensors`` file.

Tensors: the generator's state dict (NVIDIA G_ema names). Metadata (all strings, as safetensors
requires): ``format_version`` = "1", ``pulse_ext_config`` = JSON of ``Generator.init_kwargs``,
``pulse_ext_source_format`` = where the weights came from (e.g. ``nvidia-pickle``), and optionally
``pulse_ext_latent_stats`` = JSON list of PULSE mapping-statistics fits for these weights
(``pulse_ext.pulse.latent.latent_stats_records``), so a search need not refit them on every load.
safetensors holds no code, so reading it cannot run any.
"""
import json
import os
import tempfile

import safetensors
import safetensors.torch

from pulse_ext.checkpoints._common import ConvertedCheckpoint, normalize_generator_config
from pulse_ext.checkpoints.errors import CheckpointError

SOURCE_FORMAT = "pulse_ext"
FORMAT_VERSION = "1"
CONFIG_KEY = "pulse_ext_config"
SOURCE_KEY = "pulse_ext_source_format"
LATENT_STATS_KEY = "pulse_ext_latent_stats"


def save_generator(G, path, *, source_format=SOURCE_FORMAT):
    """Write generator ``G`` to ``path`` (``.safetensors``) atomically: temp file + rename.

    A reader never sees a half-written file, and an existing file is replaced only on success.
    PULSE mapping statistics fitted for G's current weights in this process (``fit_latent_stats``)
    are stored with it.
    """
    from pulse_ext.pulse.latent import latent_stats_records

    config = getattr(G, "init_kwargs", None)
    if not isinstance(config, dict):
        raise TypeError(f"save_generator: G must have a dict init_kwargs, got {type(config).__name__}")
    state = {name: tensor.detach().to("cpu").clone().contiguous() for name, tensor in G.state_dict().items()}
    metadata = {"format_version": FORMAT_VERSION, CONFIG_KEY: json.dumps(config, sort_keys=True),
                SOURCE_KEY: str(source_format)}
    if hasattr(G, "mapping"):
        records = latent_stats_records(G)
        if records:
            metadata[LATENT_STATS_KEY] = json.dumps(records)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pulse_ext-", suffix=".safetensors.tmp", dir=directory)
    os.close(fd)
    try:
        safetensors.torch.save_file(state, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_native(path):
    """``.safetensors`` written by :func:`save_generator` -> ConvertedCheckpoint."""
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt or truncated safetensors file: {exc}") from None
    if CONFIG_KEY not in metadata:
        keys = ", ".join(sorted(metadata)) or "none"
        raise CheckpointError(f"safetensors file without pulse_ext metadata (metadata keys: {keys}); "
                              "only files written by pulse_ext (pulse-ext convert) are understood")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"pulse_ext safetensors format_version {version!r}; this pulse_ext reads '1'")
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"pulse_ext_config metadata is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError("pulse_ext_config metadata is not a JSON object")
    config = normalize_generator_config(config, SOURCE_FORMAT)
    latent_stats = []
    if LATENT_STATS_KEY in metadata:
        try:
            latent_stats = json.loads(metadata[LATENT_STATS_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{LATENT_STATS_KEY} metadata is not valid JSON ({exc})") from None
        if not isinstance(latent_stats, list) or not all(isinstance(r, dict) for r in latent_stats):
            raise CheckpointError(f"{LATENT_STATS_KEY} metadata must be a JSON list of objects")
    return ConvertedCheckpoint(config=config, state_dict=state_dict, source_format=SOURCE_FORMAT,
                               origin=metadata.get(SOURCE_KEY, SOURCE_FORMAT), latent_stats=latent_stats)

"""Pieces shared by the format readers: the converted-checkpoint record and config clean-up."""
import dataclasses
import numbers

import numpy as np
import torch

from pulse_ext.checkpoints.errors import CheckpointError, UnsupportedArchitectureError

# Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={})
GENERATOR_ARG_NAMES = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                       "synthesis_kwargs")

# Options that only change how NVIDIA's code computes, not what: fp16 storage of the highest
# resolutions, channels-last layout, grouped vs. plain convolution for modulation (stylegan3 repo). We always run the generator's math in the dtype it is
# given, so these are dropped (conv_clamp, which does change the result, is kept).
_NUMERICS_ONLY_SYNTHESIS_KWARGS = ("num_fp16_res", "fp16_channels_last", "fused_modconv_default")


@dataclasses.dataclass
class ConvertedCheckpoint:
    """A checkpoint translated to pulse_ext terms, not yet turned into a module.

    config: keyword arguments of ``pulse_ext.stylegan2.Generator`` (JSON-serialisable).
    state_dict: tensors under NVIDIA G_ema names (``mapping.fc0.weight`` …), on the CPU.
    source_format: short name of the file format (``nvidia-pickle``, ``rosinality``, …).
    defaults_from_model: key suffixes the format does not store and the fresh model provides
        (e.g. ``resample_filter``, a fixed [1,3,3,1] filter).
    estimate_w_avg: the file has no average W; estimate it by mapping random z.
    notes: human-readable remarks about the conversion (shown by ``pulse-ext info``).
    origin: the format the weights first came from (differs from source_format for converted files).
    latent_stats: PULSE mapping-statistics fits stored with the weights (pulse_ext files only).
    """

    config: dict
    state_dict: dict
    source_format: str
    defaults_from_model: tuple = ()
    estimate_w_avg: bool = False
    notes: list = dataclasses.field(default_factory=list)
    origin: str = ""
    latent_stats: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.origin = self.origin or self.source_format

    def describe_source(self):
        if self.origin == self.source_format:
            return self.source_format
        return f"{self.source_format} (converted from {self.origin})"


def plain_config_value(value, where):
    """Turn EasyDicts, tuples and numpy scalars into JSON-friendly dicts, lists and numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {str(k): plain_config_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config_value(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise CheckpointError(f"generator option {where} has a {type(value).__name__}, expected plain data")


def normalize_generator_config(kwargs, source):
    """Check and clean NVIDIA-style Generator kwargs; refuse what pulse_ext cannot run."""
    config = plain_config_value(dict(kwargs), "init_kwargs")
    missing = [name for name in GENERATOR_ARG_NAMES[:5] if name not in config]
    if missing:
        raise CheckpointError(f"{source}: generator options lack {', '.join(missing)}")
    # stylegan3's networks_stylegan2.Generator takes synthesis options flat (**synthesis_kwargs).
    flat = {key: config.pop(key) for key in sorted(set(config) - set(GENERATOR_ARG_NAMES))}
    if flat:
        config["synthesis_kwargs"] = {**flat, **(config.get("synthesis_kwargs") or {})}
    if config["c_dim"]:
        raise UnsupportedArchitectureError(
            f"{source}: conditional generator (c_dim={config['c_dim']}) is not supported; PULSE needs an "
            "unconditional model")
    config.setdefault("mapping_kwargs", {})
    synthesis = dict(config.get("synthesis_kwargs") or {})
    for key in _NUMERICS_ONLY_SYNTHESIS_KWARGS:
        synthesis.pop(key, None)
    config["synthesis_kwargs"] = synthesis
    config["mapping_kwargs"] = dict(config["mapping_kwargs"] or {})
    return config


def as_cpu_tensor(value, name):
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.array(value, order="C"))
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{name} holds a {type(value).__name__}, expected a tensor")
    return value.detach().to("cpu").contiguous()


def infer_channel_layout(channels_by_res, source):
    """Find (channel_base, channel_max) with channels[r] == min(channel_base // r, channel_max)."""
    channel_max = max(channels_by_res.values())
    below = {r: c for r, c in channels_by_res.items() if c < channel_max}
    top_res = max(channels_by_res)
    candidates = {c * r for r, c in below.items()} or {channel_max * top_res}
    for channel_base in sorted(candidates):
        if all(min(channel_base // r, channel_max) == c for r, c in channels_by_res.items()):
            return channel_base, channel_max
    layout = ", ".join(f"{r}:{c}" for r, c in sorted(channels_by_res.items()))
    raise UnsupportedArchitectureError(
        f"{source}: channels per resolution ({layout}) do not follow min(channel_base/res, channel_max)")

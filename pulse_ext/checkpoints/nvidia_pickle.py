"""NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (``.pkl``, a dict with ``G_ema``).

Each network in such a pickle is a "persistence" object: NVIDIA's loader executes the module source
stored in the file and rebuilds the class from it. We never do: :mod:`._safe_pickle` captures each
object as a :class:`PersistentObject` (class name, source text, state) and this module reads the
generator's constructor kwargs (``_init_kwargs``) and walks ``_parameters`` / ``_buffers`` /
``_modules`` into a state dict under the same names our Generator uses.
"""
from pulse_ext.checkpoints._common import (GENERATOR_ARG_NAMES, ConvertedCheckpoint, as_cpu_tensor,
                                           normalize_generator_config)
from pulse_ext.checkpoints._safe_pickle import PersistentObject
from pulse_ext.checkpoints.errors import CheckpointError, UnsupportedArchitectureError

SOURCE_FORMAT = "nvidia-pickle"

# Classes only StyleGAN3 (alias-free) generators have; their module source defines them.
_STYLEGAN3_MARKERS = ("SynthesisInput", "design_lowpass_filter", "filtered_lrelu")


def is_nvidia_network_pickle(data):
    return isinstance(data, dict) and "G_ema" in data


def _walk_state_dict(obj, prefix, out, depth=0):
    if depth > 32:
        raise CheckpointError(f"module nesting deeper than 32 at {prefix!r}")
    state = obj.state
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = as_cpu_tensor(value, f"parameter {prefix + name}")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = as_cpu_tensor(value, f"buffer {prefix + name}")
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentObject):
            raise CheckpointError(f"submodule {prefix + name} is a {type(child).__name__}, expected a network module")
        _walk_state_dict(child, f"{prefix}{name}.", out, depth + 1)
    return out


def _refuse_stylegan3(generator):
    synthesis = (generator.state.get("_modules") or {}).get("synthesis")
    synthesis_children = (synthesis.state.get("_modules") or {}) if isinstance(synthesis, PersistentObject) else {}
    found = [marker for marker in _STYLEGAN3_MARKERS if marker in generator.module_src]
    if "input" in synthesis_children or found or (synthesis_children and "b4" not in synthesis_children):
        what = f"its source defines {', '.join(found)}" if found else \
            f"its synthesis network has {', '.join(list(synthesis_children)[:3])}… instead of b4"
        raise UnsupportedArchitectureError(
            f"StyleGAN3 (alias-free) generator: {what}; pulse_ext runs StyleGAN2 generators only "
            "(stylegan2-ada-pytorch or stylegan3's 'stylegan2' config)")


def convert_persistent_generator(generator, source=SOURCE_FORMAT):
    """PersistentObject of NVIDIA's Generator -> ConvertedCheckpoint (config + NVIDIA-named state dict)."""
    if not isinstance(generator, PersistentObject):
        raise CheckpointError(f"G_ema is a {type(generator).__name__}, expected a pickled network module")
    _refuse_stylegan3(generator)
    if generator.class_name != "Generator":
        raise UnsupportedArchitectureError(f"G_ema is a {generator.class_name!r}, expected a StyleGAN2 'Generator'")
    init_args = generator.state.get("_init_args") or ()
    init_kwargs = generator.state.get("_init_kwargs") or {}
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
        raise CheckpointError("G_ema has malformed _init_args/_init_kwargs")
    if len(init_args) > len(GENERATOR_ARG_NAMES):
        raise CheckpointError(f"G_ema has {len(init_args)} positional constructor arguments, expected at most 7")
    kwargs = dict(zip(GENERATOR_ARG_NAMES, init_args))
    kwargs.update(init_kwargs)
    config = normalize_generator_config(kwargs, source)
    state_dict = _walk_state_dict(generator, "", {})
    notes = []
    if (kwargs.get("synthesis_kwargs") or {}).get("num_fp16_res"):
        notes.append("num_fp16_res dropped: the network runs in the dtype you give it (fp32 by default)")
    # NVIDIA's fp16 layers keep fp32 master weights, but be safe about the file's dtypes.
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return ConvertedCheckpoint(config=config, state_dict=state_dict, source_format=source, notes=notes)


def convert_network_pickle(data):
    """Top-level dict of a stylegan2-ada-pytorch / stylegan3 pickle -> ConvertedCheckpoint."""
    return convert_persistent_generator(data["G_ema"])


__all__ = ["convert_network_pickle", "convert_persistent_generator", "is_nvidia_network_pickle"]

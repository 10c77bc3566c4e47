"""NVIDIA's original TensorFlow StyleGAN2 pickles (e.g. ``stylegan2-ffhq-config-f.pkl``).

The file is a pickled tuple ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network`` objects. We read
each one's pickled state (``static_kwargs``, ``components``, ``variables`` = [(name, ndarray)]) as
data, without TensorFlow and without running its ``build_module_src``, and translate the
variables of ``Gs`` (the moving-average generator) to our NVIDIA-style names:

=========================================  =====================================================
TF variable (under Gs)                      ours
=========================================  =====================================================
dlatent_avg                                 mapping.w_avg
mapping/Dense{i}/weight [in, out]           mapping.fc{i}.weight (transposed), ``bias`` as is
synthesis/4x4/Const/const [1, C, 4, 4]      synthesis.b4.const (batch dim dropped)
synthesis/{r}x{r}/Conv0_up/weight [k,k,I,O] b{r}.conv0.weight: spatially flipped, then [O, I, k, k]
synthesis/{r}x{r}/Conv1, 4x4/Conv           b{r}.conv1.weight: [O, I, k, k]
…/mod_weight [w_dim, I], …/mod_bias         …affine.weight (transposed), …affine.bias **+ 1**
…/noise_strength [], …/bias [O]             …noise_strength, …bias
synthesis/noise{n} [1, 1, r, r]             conv noise_const [r, r]; n = 2·log2(r) − 5 for conv0,
                                            2·log2(r) − 4 for conv1
synthesis/{r}x{r}/ToRGB/…                   b{r}.torgb.… (same rules as a conv)
=========================================  =====================================================

The flip of the upsampling weights and the +1 on the modulation bias are conventions of the TF
code (documented by NVIDIA's ``legacy.py``, which performs the same conversion).
"""
import re

import numpy as np

from pulse_ext.checkpoints._common import ConvertedCheckpoint, as_cpu_tensor, normalize_generator_config
from pulse_ext.checkpoints._safe_pickle import TFNetwork
from pulse_ext.checkpoints.errors import CheckpointError, UnsupportedArchitectureError

SOURCE_FORMAT = "tensorflow-pickle"

# static kwarg name -> (config group or None for top level, our name, default)
_TF_KWARGS = {
    "latent_size": (None, "z_dim", 512),
    "label_size": (None, "c_dim", 0),
    "dlatent_size": (None, "w_dim", 512),
    "resolution": (None, "img_resolution", 1024),
    "num_channels": (None, "img_channels", 3),
    "mapping_layers": ("mapping_kwargs", "num_layers", 8),
    "label_fmaps": ("mapping_kwargs", "embed_features", None),
    "mapping_fmaps": ("mapping_kwargs", "layer_features", None),
    "mapping_nonlinearity": ("mapping_kwargs", "activation", "lrelu"),
    "mapping_lrmul": ("mapping_kwargs", "lr_multiplier", 0.01),
    "w_avg_beta": ("mapping_kwargs", "w_avg_beta", 0.995),
    "fmap_base": ("synthesis_kwargs", "channel_base", 16384),  # TF counts half: ours = 2 * fmap_base
    "fmap_max": ("synthesis_kwargs", "channel_max", 512),
    "conv_clamp": ("synthesis_kwargs", "conv_clamp", None),
    "architecture": ("synthesis_kwargs", "architecture", "skip"),
    "resample_kernel": ("synthesis_kwargs", "resample_filter", [1, 3, 3, 1]),
    "use_noise": ("synthesis_kwargs", "use_noise", True),
    "nonlinearity": ("synthesis_kwargs", "activation", "lrelu"),
    "num_fp16_res": ("synthesis_kwargs", "num_fp16_res", 0),
}
# Sampling-time options of the TF generator, not part of the architecture.
_TF_IGNORED_KWARGS = ("truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure", "randomize_noise",
                      "truncation_psi_val", "truncation_cutoff_val", "dlatent_avg_beta", "is_template_graph",
                      "components", "return_dlatents", "is_training", "is_validation")


def is_tensorflow_pickle(data):
    return isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, TFNetwork) for net in data)


def _tf_variables(network, prefix="", out=None, depth=0):
    out = {} if out is None else out
    if depth > 8:
        raise CheckpointError("TensorFlow network components nest deeper than 8")
    for item in network.state.get("variables") or []:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise CheckpointError("TensorFlow network has a malformed variables list")
        out[prefix + item[0]] = np.asarray(item[1])
    for name, component in (network.state.get("components") or {}).items():
        if not isinstance(component, TFNetwork):
            raise CheckpointError(f"TensorFlow component {name!r} is a {type(component).__name__}")
        _tf_variables(component, f"{prefix}{name}/", out, depth + 1)
    return out


def _config_from_static_kwargs(static_kwargs):
    unknown = sorted(set(static_kwargs) - set(_TF_KWARGS) - set(_TF_IGNORED_KWARGS))
    if unknown:
        raise UnsupportedArchitectureError(f"{SOURCE_FORMAT}: unknown TensorFlow generator option(s) {', '.join(unknown)}")
    config = {"mapping_kwargs": {}, "synthesis_kwargs": {}}
    for tf_name, (group, name, default) in _TF_KWARGS.items():
        value = static_kwargs.get(tf_name, default)
        if tf_name == "w_avg_beta" and value is None:
            value = 1
        if value is None and default is None:
            continue
        if tf_name == "fmap_base":
            value = 2 * int(value)
        (config if group is None else config[group])[name] = value
    return config


def convert_tensorflow_pickle(data):
    """``(G, D, Gs)`` of TFNetwork -> ConvertedCheckpoint for ``Gs``."""
    gs = data[2]
    version = gs.state.get("version")
    if not isinstance(version, int) or version < 4:
        raise UnsupportedArchitectureError(
            f"TensorFlow network version {version!r} (StyleGAN1 or older); only StyleGAN2 pickles (version >= 4) "
            "are supported")
    static_kwargs = gs.state.get("static_kwargs") or {}
    if not isinstance(static_kwargs, dict):
        raise CheckpointError("TensorFlow network static_kwargs is not a dict")
    config = normalize_generator_config(_config_from_static_kwargs(static_kwargs), SOURCE_FORMAT)
    tf = _tf_variables(gs)
    if any(re.fullmatch(r"(synthesis/)?ToRGB_lod\d+/.*", name) for name in tf):
        raise UnsupportedArchitectureError(
            "TensorFlow StyleGAN2 with per-LOD ToRGB layers ('orig' architecture, configs A-D) is not supported")
    if "synthesis/4x4/Const/const" not in tf:
        found = ", ".join(sorted(tf)[:4])
        raise UnsupportedArchitectureError(f"TensorFlow network has no synthesis/4x4/Const/const (found {found} …)")

    def get(name):
        if name not in tf:
            raise CheckpointError(f"TensorFlow pickle lacks variable {name!r}")
        return tf[name]

    def put(name, value):
        state_dict[name] = as_cpu_tensor(np.array(value, dtype=np.float32, order="C"), name)

    state_dict = {}
    put("mapping.w_avg", get("dlatent_avg"))
    for i in range(config["mapping_kwargs"].get("num_layers", 8)):
        put(f"mapping.fc{i}.weight", get(f"mapping/Dense{i}/weight").T)
        put(f"mapping.fc{i}.bias", get(f"mapping/Dense{i}/bias"))

    def layer(ours, theirs, flip=False, noise_index=None):
        weight = get(f"{theirs}/weight")
        if flip:
            weight = weight[::-1, ::-1]
        put(f"{ours}.weight", weight.transpose(3, 2, 0, 1))
        put(f"{ours}.bias", get(f"{theirs}/bias"))
        put(f"{ours}.affine.weight", get(f"{theirs}/mod_weight").T)
        put(f"{ours}.affine.bias", get(f"{theirs}/mod_bias") + 1)
        if noise_index is not None and config["synthesis_kwargs"].get("use_noise", True):
            put(f"{ours}.noise_strength", get(f"{theirs}/noise_strength"))
            put(f"{ours}.noise_const", get(f"synthesis/noise{noise_index}")[0, 0])

    put("synthesis.b4.const", get("synthesis/4x4/Const/const")[0])
    resolution = config["img_resolution"]
    log2 = int(np.log2(resolution))
    for res in [2 ** i for i in range(2, log2 + 1)]:
        tf_block, block = f"synthesis/{res}x{res}", f"synthesis.b{res}"
        if res == 4:
            layer(f"{block}.conv1", f"{tf_block}/Conv", noise_index=0)
        else:
            layer(f"{block}.conv0", f"{tf_block}/Conv0_up", flip=True, noise_index=2 * int(np.log2(res)) - 5)
            layer(f"{block}.conv1", f"{tf_block}/Conv1", noise_index=2 * int(np.log2(res)) - 4)
        layer(f"{block}.torgb", f"{tf_block}/ToRGB")
    return ConvertedCheckpoint(config=config, state_dict=state_dict, source_format=SOURCE_FORMAT,
                               defaults_from_model=("resample_filter",))

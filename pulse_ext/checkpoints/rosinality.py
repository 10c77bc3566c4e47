"""rosinality/stylegan2-pytorch checkpoints (``.pt``: a dict with ``g_ema``, read with weights_only).

Their generator computes the same function as NVIDIA's with different names and a few different
conventions; the stored numbers need no rescaling:

=======================================  ==================================================  =========
rosinality (``g_ema``)                    ours (NVIDIA names)                                 how
=======================================  ==================================================  =========
style.{i+1}.weight / .bias                mapping.fc{i}.weight / .bias                        as is [1]
input.input [1, C, 4, 4]                  synthesis.b4.const [C, 4, 4]                        [0]
conv1.*                                   synthesis.b4.conv1.*                                see below
convs.{2k}.* / convs.{2k+1}.*             synthesis.b{2^(k+3)}.conv0.* / .conv1.*             see below
  ….conv.weight [1, O, I, 3, 3]           ….weight [O, I, 3, 3]                               [0] [2]
  ….conv.modulation.weight / .bias        ….affine.weight / .bias                             as is
  ….noise.weight [1]                      ….noise_strength []                                 reshape
  ….activate.bias [O]                     ….bias [O]                                          as is [3]
noises.noise_{n} [1, 1, r, r]             noise_const [r, r] of layer n (b4.conv1 = 0, then   [0, 0]
                                          conv0/conv1 of each block in order)
to_rgb1.* / to_rgbs.{k}.*                 synthesis.b4.torgb.* / b{2^(k+3)}.torgb.*
  ….conv.weight [1, 3, I, 1, 1]           ….weight [3, I, 1, 1]                               [0] [4]
  ….bias [1, 3, 1, 1]                     ….bias [3]                                          flatten
latent_avg [w_dim] (converted files)      mapping.w_avg                                       as is [5]
….blur.kernel, ….upsample.kernel          resample_filter                                     checked [6]
=======================================  ==================================================  =========

[1] EqualLinear(lr_mul) applies weight·lr_mul/√in and bias·lr_mul at run time, exactly like
    NVIDIA's FullyConnectedLayer(lr_multiplier); the mapping's lr_mul (``lr_mlp``) is not stored in
    the file: we assume rosinality's default 0.01 (every public checkpoint uses it).
    Their PixelNorm equals NVIDIA's normalize_2nd_moment (same 1e-8).
[2] Their modulated conv multiplies the weight by 1/√(I·k²) before demodulation, NVIDIA's does not;
    demodulation cancels the factor except inside ``rsqrt(Σw² + 1e-8)``, where it rescales the
    1e-8 by I·k² (a relative difference below 1e-9 for trained weights). Not mappable exactly;
    negligible. Their upsampling conv is a transposed conv with the unflipped weight followed by
    the [1,3,3,1] blur, as NVIDIA's (both converters flip the TF weight the same way).
[3] FusedLeakyReLU(bias, slope 0.2, scale √2) = NVIDIA's bias_act 'lrelu' with gain √2.
[4] ToRGB: their 1/√I weight scale = NVIDIA's weight_gain on the styles; no demodulation.
[5] Training checkpoints (``train.py``) store no average W; we estimate it as the mean of the
    mapping network's output for 10,000 fixed-seed z (only truncation uses it).
[6] Their blur kernels are the normalised [1,3,3,1] outer product (×4 when upsampling); we check
    that and use our fixed filter.
"""
import re

import torch

from pulse_ext.checkpoints._common import ConvertedCheckpoint, as_cpu_tensor, infer_channel_layout
from pulse_ext.checkpoints.errors import CheckpointError, UnsupportedArchitectureError

SOURCE_FORMAT = "rosinality"
MAPPING_LR_MULTIPLIER = 0.01


def is_rosinality_checkpoint(data):
    return isinstance(data, dict) and "g_ema" in data


def _expected_blur(factor):
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = taps[None, :] * taps[:, None]
    return kernel / kernel.sum() * factor


def convert_rosinality_checkpoint(data):
    """Dict with ``g_ema`` (and maybe ``latent_avg``) -> ConvertedCheckpoint."""
    theirs = data["g_ema"]
    if not isinstance(theirs, dict) or not all(isinstance(v, torch.Tensor) for v in theirs.values()):
        raise CheckpointError("rosinality checkpoint: g_ema is not a state dict of tensors")
    theirs = {k: v.detach().to("cpu") for k, v in theirs.items()}

    def get(name):
        if name not in theirs:
            raise CheckpointError(f"rosinality checkpoint: g_ema lacks {name!r}")
        return theirs[name]

    style_indices = sorted(int(m.group(1)) for k in theirs if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    if not style_indices or "input.input" not in theirs:
        found = ", ".join(sorted(theirs)[:4])
        raise UnsupportedArchitectureError(f"rosinality checkpoint: g_ema is not a StyleGAN2 generator (found {found} …)")
    if style_indices != list(range(1, len(style_indices) + 1)):
        raise CheckpointError(f"rosinality checkpoint: mapping layers style.{style_indices} are not consecutive")
    n_mlp = len(style_indices)
    style_dim = get("style.1.weight").shape[1]
    num_torgbs = len([k for k in theirs if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    resolution = 2 ** (num_torgbs + 2)
    block_resolutions = [2 ** i for i in range(2, num_torgbs + 3)]
    img_channels = get("to_rgb1.conv.weight").shape[1]

    channels = {4: get("input.input").shape[1]}
    for k, res in enumerate(block_resolutions[1:]):
        channels[res] = get(f"convs.{2 * k}.conv.weight").shape[1]
    channel_base, channel_max = infer_channel_layout(channels, SOURCE_FORMAT)

    for name, value in theirs.items():
        if name.endswith(".blur.kernel") or name.endswith(".upsample.kernel"):
            if value.shape != (4, 4) or not torch.allclose(value.float(), _expected_blur(4.0), atol=1e-6):
                raise UnsupportedArchitectureError(
                    f"rosinality checkpoint: {name} is not the [1,3,3,1] filter pulse_ext supports")

    config = dict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=resolution, img_channels=img_channels,
                  mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=MAPPING_LR_MULTIPLIER),
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max))

    ours = {}

    def put(name, value):
        ours[name] = as_cpu_tensor(value.float(), name)

    for i in range(n_mlp):
        put(f"mapping.fc{i}.weight", get(f"style.{i + 1}.weight"))
        put(f"mapping.fc{i}.bias", get(f"style.{i + 1}.bias"))

    def styled_conv(ours_name, theirs_name, noise_index):
        put(f"{ours_name}.weight", get(f"{theirs_name}.conv.weight")[0])
        put(f"{ours_name}.affine.weight", get(f"{theirs_name}.conv.modulation.weight"))
        put(f"{ours_name}.affine.bias", get(f"{theirs_name}.conv.modulation.bias"))
        put(f"{ours_name}.noise_strength", get(f"{theirs_name}.noise.weight").reshape([]))
        put(f"{ours_name}.bias", get(f"{theirs_name}.activate.bias"))
        put(f"{ours_name}.noise_const", get(f"noises.noise_{noise_index}")[0, 0])

    def to_rgb(ours_name, theirs_name):
        put(f"{ours_name}.weight", get(f"{theirs_name}.conv.weight")[0])
        put(f"{ours_name}.affine.weight", get(f"{theirs_name}.conv.modulation.weight"))
        put(f"{ours_name}.affine.bias", get(f"{theirs_name}.conv.modulation.bias"))
        put(f"{ours_name}.bias", get(f"{theirs_name}.bias").reshape([-1]))

    put("synthesis.b4.const", get("input.input")[0])
    styled_conv("synthesis.b4.conv1", "conv1", 0)
    to_rgb("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(block_resolutions[1:]):
        styled_conv(f"synthesis.b{res}.conv0", f"convs.{2 * k}", 2 * k + 1)
        styled_conv(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        to_rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")

    notes = [f"mapping lr_multiplier assumed {MAPPING_LR_MULTIPLIER} (rosinality's default; not stored)"]
    latent_avg = data.get("latent_avg")
    estimate = latent_avg is None
    if estimate:
        notes.append("no latent_avg in the file: w_avg estimated from 10,000 fixed-seed z")
    else:
        put("mapping.w_avg", as_cpu_tensor(latent_avg, "latent_avg").reshape([-1]))
    return ConvertedCheckpoint(config=config, state_dict=ours, source_format=SOURCE_FORMAT,
                               defaults_from_model=("resample_filter",) + (("mapping.w_avg",) if estimate else ()),
                               estimate_w_avg=estimate, notes=notes)

"""Build checkpoint files in third-party layouts from a tiny random pulse_ext Generator (no downloads).

- NVIDIA stylegan2-ada-pytorch pickles: the real "persistence" layout, produced by temporarily
  installed stand-ins for ``torch_utils.persistence`` and ``dnnlib.util`` whose
  ``_reconstruct_persistent_obj`` really executes ``module_src`` (as NVIDIA's does), so a plain
  ``pickle.load`` of these files would leave a trace.
- NVIDIA TensorFlow StyleGAN2 pickles: ``(G, D, Gs)`` of a stand-in ``dnnlib.tflib.network.Network``.
- rosinality ``.pt``: their key names and shapes, made from our weights by the inverse mapping.
"""
import argparse
import collections
import contextlib
import pickle
import sys
import types

import numpy as np
import torch

from pulse_ext.stylegan2 import Generator

TINY_CONFIG = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
                   mapping_kwargs=dict(num_layers=2),
                   synthesis_kwargs=dict(channel_base=256, channel_max=32))


def tiny_generator(seed=0, **overrides):
    """Generator with every parameter and buffer random (biases, noise strengths and w_avg included)."""
    config = {**TINY_CONFIG, **overrides}
    torch.manual_seed(seed)
    G = Generator(**config)
    with torch.no_grad():
        for name, tensor in G.state_dict().items():
            if not name.endswith("resample_filter"):
                tensor.copy_(torch.randn_like(tensor) * (0.5 if tensor.dim() <= 1 else 1.0))
    return G.eval().requires_grad_(False)


def images(G, seed=1, n=2):
    z = torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G(z, None, truncation_psi=0.7, noise_mode="const")


# --------------------------------------------------------------------------- NVIDIA persistence pickle

@contextlib.contextmanager
def _fake_modules(**modules):
    """Install stand-in modules in sys.modules for pickling, then remove them again."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _nvidia_stand_ins():
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what NVIDIA's does first: exec the stored source
        namespace = {}
        exec(meta["module_src"], namespace)  # noqa: S102 - emulating the unsafe original on purpose
        return namespace.get(meta["class_name"])

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence

    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    return dict(torch_utils=torch_utils, **{"torch_utils.persistence": persistence, "dnnlib": dnnlib,
                                             "dnnlib.util": util}), persistence, EasyDict


class _Persistent:
    """Pickles exactly like a @persistent_class module: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def _module_meta(module, reconstruct, easydict, module_src, class_name, init_kwargs):
    children = collections.OrderedDict(
        (name, _Persistent(reconstruct, _module_meta(child, reconstruct, easydict, module_src,
                                                     type(child).__name__, easydict())))
        for name, child in module._modules.items())
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, torch.nn.Parameter(v.detach().clone(), requires_grad=False)) for k, v in module._parameters.items()),
        "_buffers": collections.OrderedDict((k, v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": children,
        "_init_args": (),
        "_init_kwargs": init_kwargs,
        "weight_gain": np.float64(0.125),  # numpy scalars appear as plain attributes in real pickles
        "block_resolutions": [4, 8, 16],
    }
    return dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)


def write_nvidia_pickle(G, path, *, module_src="class Generator:\n    pass\n", class_name="Generator",
                        init_kwargs=None, extra_state=None, extra_top=None):
    """Write ``G`` as stylegan2-ada-pytorch's network pickle {G, D, G_ema, augment_pipe, training_set_kwargs}."""
    modules, persistence, EasyDict = _nvidia_stand_ins()
    kwargs = dict(G.init_kwargs) if init_kwargs is None else init_kwargs
    kwargs = EasyDict(kwargs, mapping_kwargs=EasyDict(kwargs.get("mapping_kwargs", {})),
                      synthesis_kwargs=EasyDict(kwargs.get("synthesis_kwargs", {})))
    meta = _module_meta(G, persistence._reconstruct_persistent_obj, EasyDict, module_src, class_name, kwargs)
    meta["state"].update(extra_state or {})
    g_ema = _Persistent(persistence._reconstruct_persistent_obj, meta)
    data = {"G": g_ema, "D": g_ema, "G_ema": g_ema, "augment_pipe": None,
            "training_set_kwargs": EasyDict(resolution=G.img_resolution), **(extra_top or {})}
    with _fake_modules(**modules):
        blob = pickle.dumps(data, protocol=3)
    with open(path, "wb") as f:
        f.write(blob)
    return path


# --------------------------------------------------------------------------- TensorFlow StyleGAN2 pickle

def _tf_variables(G):
    """Inverse of NVIDIA's TF -> PyTorch conversion: our state dict -> TF variable lists per component."""
    sd = {k: v.numpy().astype(np.float32) for k, v in G.state_dict().items()}
    mapping, synthesis = [], []
    for i in range(G.mapping.num_layers):
        mapping += [(f"Dense{i}/weight", sd[f"mapping.fc{i}.weight"].T), (f"Dense{i}/bias", sd[f"mapping.fc{i}.bias"])]
    synthesis.append(("4x4/Const/const", sd["synthesis.b4.const"][None]))
    noise = {}

    def layer(ours, theirs, flip=False):
        weight = sd[f"{ours}.weight"].transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
        if flip:
            weight = weight[::-1, ::-1]
        synthesis.extend([(f"{theirs}/weight", np.ascontiguousarray(weight)), (f"{theirs}/bias", sd[f"{ours}.bias"]),
                          (f"{theirs}/mod_weight", sd[f"{ours}.affine.weight"].T),
                          (f"{theirs}/mod_bias", sd[f"{ours}.affine.bias"] - 1)])
        if f"{ours}.noise_strength" in sd:
            synthesis.append((f"{theirs}/noise_strength", sd[f"{ours}.noise_strength"]))

    for res in G.synthesis.block_resolutions:
        log2 = int(np.log2(res))
        if res == 4:
            layer("synthesis.b4.conv1", "4x4/Conv")
            noise[0] = sd["synthesis.b4.conv1.noise_const"]
        else:
            layer(f"synthesis.b{res}.conv0", f"{res}x{res}/Conv0_up", flip=True)
            layer(f"synthesis.b{res}.conv1", f"{res}x{res}/Conv1")
            noise[2 * log2 - 5] = sd[f"synthesis.b{res}.conv0.noise_const"]
            noise[2 * log2 - 4] = sd[f"synthesis.b{res}.conv1.noise_const"]
        layer(f"synthesis.b{res}.torgb", f"{res}x{res}/ToRGB")
    synthesis += [(f"noise{i}", noise[i][None, None]) for i in sorted(noise)]
    return [("dlatent_avg", sd["mapping.w_avg"])], mapping, synthesis


def write_tensorflow_pickle(G, path, *, version=4, static_kwargs=None):
    """Write ``G`` as NVIDIA's TF StyleGAN2 pickle: a tuple (G, D, Gs) of dnnlib.tflib.network.Network."""
    network_module = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, name, variables, components=None, kwargs=None):
            self._state = dict(version=version, name=name, static_kwargs=kwargs or {}, components=components or {},
                               build_module_src="raise SystemExit('TF build code must never run')\n",
                               build_func_name="G_main", variables=variables)

        def __getstate__(self):
            return self._state

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    network_module.Network = Network
    top, mapping, synthesis = _tf_variables(G)
    cfg = G.init_kwargs
    kwargs = dict(num_channels=cfg["img_channels"], resolution=cfg["img_resolution"], label_size=0,
                  latent_size=cfg["z_dim"], dlatent_size=cfg["w_dim"],
                  mapping_layers=cfg["mapping_kwargs"].get("num_layers", 8),
                  fmap_base=cfg["synthesis_kwargs"]["channel_base"] // 2,
                  fmap_max=cfg["synthesis_kwargs"]["channel_max"], truncation_psi=0.5)
    kwargs.update(static_kwargs or {})
    gs = Network("G", top, components=dict(mapping=Network("G_mapping", mapping),
                                           synthesis=Network("G_synthesis", synthesis)), kwargs=kwargs)
    d = Network("D", [("Output/bias", np.zeros(1, np.float32))])
    tflib = types.ModuleType("dnnlib.tflib")
    tflib.network = network_module
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.tflib = tflib
    with _fake_modules(**{"dnnlib": dnnlib, "dnnlib.tflib": tflib, "dnnlib.tflib.network": network_module}):
        blob = pickle.dumps((gs, d, gs), protocol=4)
    with open(path, "wb") as f:
        f.write(blob)
    return path


# --------------------------------------------------------------------------- rosinality .pt

def rosinality_state_dict(G):
    """Our state dict -> rosinality's g_ema state dict (names, shapes, conventions)."""
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    out = {}
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    blur = taps[None, :] * taps[:, None]
    blur = blur / blur.sum() * 4
    for i in range(G.mapping.num_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"][None]
    noises = []

    def styled(ours, theirs, upsample=False):
        out[f"{theirs}.conv.weight"] = sd[f"{ours}.weight"][None]
        out[f"{theirs}.conv.modulation.weight"] = sd[f"{ours}.affine.weight"]
        out[f"{theirs}.conv.modulation.bias"] = sd[f"{ours}.affine.bias"]
        if upsample:
            out[f"{theirs}.conv.blur.kernel"] = blur.clone()
        out[f"{theirs}.noise.weight"] = sd[f"{ours}.noise_strength"].reshape([1])
        out[f"{theirs}.activate.bias"] = sd[f"{ours}.bias"]
        noises.append(sd[f"{ours}.noise_const"][None, None])

    def rgb(ours, theirs, upsample=True):
        out[f"{theirs}.conv.weight"] = sd[f"{ours}.weight"][None]
        out[f"{theirs}.conv.modulation.weight"] = sd[f"{ours}.affine.weight"]
        out[f"{theirs}.conv.modulation.bias"] = sd[f"{ours}.affine.bias"]
        out[f"{theirs}.bias"] = sd[f"{ours}.bias"].reshape([1, -1, 1, 1])
        if upsample:
            out[f"{theirs}.upsample.kernel"] = blur.clone()

    styled("synthesis.b4.conv1", "conv1")
    rgb("synthesis.b4.torgb", "to_rgb1", upsample=False)
    for k, res in enumerate(G.synthesis.block_resolutions[1:]):
        styled(f"synthesis.b{res}.conv0", f"convs.{2 * k}", upsample=True)
        styled(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}")
        rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")
    for i, noise in enumerate(noises):
        out[f"noises.noise_{i}"] = noise
    return out


def write_rosinality_pt(G, path, *, latent_avg=True, training_layout=False):
    """Write ``G`` as rosinality's .pt: converted layout {g_ema, latent_avg} or train.py's {g, d, g_ema, …, args}."""
    g_ema = rosinality_state_dict(G)
    if training_layout:
        data = {"g": g_ema, "d": {"convs.0.0.weight": torch.zeros(1)}, "g_ema": g_ema, "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(size=G.img_resolution, channel_multiplier=2)}
    else:
        data = {"g_ema": g_ema}
    if latent_avg:
        data["latent_avg"] = G.mapping.w_avg.detach().clone()
    torch.save(data, path)
    return path

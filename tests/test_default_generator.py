"""The embedded default generator: it ships with the package, is the documented architecture, matches
its provenance record, and a short search recovers a face it generated."""
import hashlib
import json
import os

import torch

import pulse_ext
from pulse_ext.ops import area_downscale_loss
from pulse_ext.ops.reference import area_downscale

WEIGHTS = os.path.join(os.path.dirname(pulse_ext.__file__), "weights")


def test_shipped_weights_match_their_record():
    with open(os.path.join(WEIGHTS, "default.json")) as f:
        info = json.load(f)
    with open(os.path.join(WEIGHTS, info["file"]), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == info["sha256"]
    assert info["kimg"] > 0


def test_default_generator_architecture():
    G = pulse_ext.load_generator("default")
    assert (G.img_resolution, G.img_channels, G.z_dim, G.w_dim, G.num_ws) == (64, 3, 256, 256, 10)
    assert G.init_kwargs["synthesis_kwargs"]["channel_base"] == 2048
    assert G.init_kwargs["synthesis_kwargs"]["channel_max"] == 128
    assert all(not p.requires_grad for p in G.parameters())
    with torch.no_grad():
        img = G(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)), noise_mode="const")
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all()


def test_short_search_recovers_a_generated_face():
    torch.set_num_threads(1)
    G = pulse_ext.load_generator("default")
    with torch.no_grad():
        sample = G(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)), noise_mode="const")
    low_res = area_downscale((sample.clamp(-1, 1) + 1) / 2, (16, 16))[0]
    result = pulse_ext.upscale(low_res, generator=G, restarts=8, steps=200, seed=0, return_result=True)
    assert result.converged[0], f"best L2 {result.l2[0]:.4g} did not reach eps 2e-3"
    # The returned image downscales back to the input (the contract of PULSE).
    l2, _ = area_downscale_loss(result.tensors[:1], low_res[None])
    assert l2.item() < 2e-3

"""Tests of the StyleGAN2 generator (pulse_ext.stylegan2): structure, NVIDIA names, semantics, impl parity.

Parity with NVIDIA's own code is checked by python/check_nvidia_parity.py (needs their checkout).
"""
import json
import math

import pytest
import torch

import pulse_ext
from pulse_ext.stylegan2 import FullyConnectedLayer, Generator

needs_extension = pytest.mark.skipif(not pulse_ext._extension.is_loaded(), reason="compiled extension not built")


def make_generator(res=16, z_dim=16, w_dim=16, c_dim=0, channel_base=256, channel_max=32, num_layers=2, seed=0,
                   strengthen=True, **synthesis_kwargs):
    torch.manual_seed(seed)
    G = Generator(z_dim, c_dim, w_dim, res, 3, mapping_kwargs=dict(num_layers=num_layers),
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, **synthesis_kwargs)).eval()
    if strengthen:
        # Zero-initialised parameters would hide noise, bias and truncation bugs.
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, t in list(G.named_parameters()) + list(G.named_buffers()):
                if name.endswith(("noise_strength", ".bias", "w_avg")):
                    t.copy_(0.5 * torch.randn(t.shape, generator=g))
    return G


def random_ws(G, batch, seed=0, dtype=torch.float32):
    return torch.randn([batch, G.num_ws, G.w_dim], generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("res, z_dim, w_dim, num_layers, channel_base, channel_max, num_ws, channels", [
    (64, 256, 256, 8, 2048, 128, 10, {4: 128, 8: 128, 16: 128, 32: 64, 64: 32}),
    (4, 8, 8, 1, 64, 16, 2, {4: 16}),
    (32, 16, 24, 3, 512, 64, 8, {4: 64, 8: 64, 16: 32, 32: 16}),
    (1024, 512, 512, 8, 32768, 512, 18,
     {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}),
])
def test_num_ws_and_channels(res, z_dim, w_dim, num_layers, channel_base, channel_max, num_ws, channels):
    with torch.device("meta"):  # config-f sized networks are built without allocating memory
        G = Generator(z_dim, 0, w_dim, res, 3, mapping_kwargs=dict(num_layers=num_layers),
                      synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max))
    assert G.num_ws == G.synthesis.num_ws == G.mapping.num_ws == num_ws
    assert G.synthesis.channels_dict == channels
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (z_dim, 0, w_dim, res, 3)
    for r, ch in channels.items():
        block = getattr(G.synthesis, f"b{r}")
        assert block.conv1.weight.shape == (ch, ch, 3, 3)
        if r > 4:
            assert block.conv0.weight.shape == (ch, channels[r // 2], 3, 3)
    assert [n for n, _ in G.mapping.named_children()] == [f"fc{i}" for i in range(num_layers)]


def test_config_f_parameter_count():
    with torch.device("meta"):
        G = Generator(512, 0, 512, 1024, 3)
    # The published StyleGAN2 config-f generator has 30,370,060 parameters.
    assert sum(p.numel() for p in G.parameters()) == 30_370_060


EXPECTED_KEYS_8PX = [
    # Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
    #           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=16))
    ("synthesis.b4.const", (16, 4, 4)),
    ("synthesis.b4.resample_filter", (4, 4)),
    ("synthesis.b4.conv1.weight", (16, 16, 3, 3)),
    ("synthesis.b4.conv1.noise_strength", ()),
    ("synthesis.b4.conv1.bias", (16,)),
    ("synthesis.b4.conv1.resample_filter", (4, 4)),
    ("synthesis.b4.conv1.noise_const", (4, 4)),
    ("synthesis.b4.conv1.affine.weight", (16, 8)),
    ("synthesis.b4.conv1.affine.bias", (16,)),
    ("synthesis.b4.torgb.weight", (3, 16, 1, 1)),
    ("synthesis.b4.torgb.bias", (3,)),
    ("synthesis.b4.torgb.affine.weight", (16, 8)),
    ("synthesis.b4.torgb.affine.bias", (16,)),
    ("synthesis.b8.resample_filter", (4, 4)),
    ("synthesis.b8.conv0.weight", (8, 16, 3, 3)),
    ("synthesis.b8.conv0.noise_strength", ()),
    ("synthesis.b8.conv0.bias", (8,)),
    ("synthesis.b8.conv0.resample_filter", (4, 4)),
    ("synthesis.b8.conv0.noise_const", (8, 8)),
    ("synthesis.b8.conv0.affine.weight", (16, 8)),
    ("synthesis.b8.conv0.affine.bias", (16,)),
    ("synthesis.b8.conv1.weight", (8, 8, 3, 3)),
    ("synthesis.b8.conv1.noise_strength", ()),
    ("synthesis.b8.conv1.bias", (8,)),
    ("synthesis.b8.conv1.resample_filter", (4, 4)),
    ("synthesis.b8.conv1.noise_const", (8, 8)),
    ("synthesis.b8.conv1.affine.weight", (8, 8)),
    ("synthesis.b8.conv1.affine.bias", (8,)),
    ("synthesis.b8.torgb.weight", (3, 8, 1, 1)),
    ("synthesis.b8.torgb.bias", (3,)),
    ("synthesis.b8.torgb.affine.weight", (8, 8)),
    ("synthesis.b8.torgb.affine.bias", (8,)),
    ("mapping.w_avg", (8,)),
    ("mapping.fc0.weight", (8, 8)),
    ("mapping.fc0.bias", (8,)),
    ("mapping.fc1.weight", (8, 8)),
    ("mapping.fc1.bias", (8,)),
]


def test_state_dict_matches_nvidia_names_and_order():
    G = Generator(8, 0, 8, 8, 3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=64, channel_max=16))
    assert [(k, tuple(v.shape)) for k, v in G.state_dict().items()] == EXPECTED_KEYS_8PX
    fir = torch.tensor([1.0, 3.0, 3.0, 1.0])
    assert torch.equal(G.state_dict()["synthesis.b8.conv0.resample_filter"], torch.outer(fir, fir) / 64)


def test_conditional_state_dict_and_forward():
    G = Generator(8, 3, 8, 8, 3, mapping_kwargs=dict(num_layers=2, embed_features=6),
                  synthesis_kwargs=dict(channel_base=64, channel_max=16)).eval()
    shapes = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    assert shapes["mapping.embed.weight"] == (6, 3) and shapes["mapping.embed.bias"] == (6,)
    assert shapes["mapping.fc0.weight"] == (8, 8 + 6)
    c = torch.eye(3)[[0, 2]]
    assert G(torch.randn(2, 8), c, noise_mode="const").shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="c must be"):
        G(torch.randn(2, 8))


def test_init_kwargs_rebuild_and_load():
    G = make_generator(conv_clamp=256, num_fp16_res=2)
    kwargs = json.loads(json.dumps(G.init_kwargs))
    assert kwargs["synthesis_kwargs"] == dict(channel_base=256, channel_max=32, conv_clamp=256, num_fp16_res=2)
    G2 = Generator(**kwargs).eval()
    G2.load_state_dict(G.state_dict(), strict=True)
    ws = random_ws(G, 2)
    assert torch.equal(G.synthesis(ws, noise_mode="const"), G2.synthesis(ws, noise_mode="const"))


def test_unsupported_configs_are_rejected():
    with pytest.raises(ValueError, match="'skip'"):
        Generator(8, 0, 8, 8, 3, synthesis_kwargs=dict(channel_base=64, channel_max=16, architecture="dense"))
    with pytest.raises(ValueError, match=r"resample_filter=\[1, 3, 3, 1\]"):
        Generator(8, 0, 8, 8, 3, synthesis_kwargs=dict(channel_base=64, channel_max=16, resample_filter=[1, 2, 1]))
    with pytest.raises(ValueError, match="power of two"):
        Generator(8, 0, 8, 24, 3)
    with pytest.raises(ValueError, match="impl must be"):
        make_generator().set_impl("cuda")


# ---------------------------------------------------------------- semantics


def test_output_shape_dtype_and_range():
    G = make_generator(res=32, channel_base=512, strengthen=False)
    for batch in (1, 3):
        img = G(torch.randn(batch, G.z_dim), noise_mode="const")
        assert img.shape == (batch, 3, 32, 32) and img.dtype == torch.float32
        assert torch.isfinite(img).all()
        # A freshly initialised generator is roughly unit scale (a trained one is about [-1, 1]).
        assert 0.05 < img.std().item() < 5


@pytest.mark.parametrize("architecture", ["orig", "resnet"])
def test_orig_and_resnet_architectures_run(architecture):
    G = make_generator(architecture=architecture)
    assert not hasattr(G.synthesis.b8, "torgb") and hasattr(G.synthesis.b16, "torgb")
    assert G.num_ws == 6
    keys = set(G.state_dict())
    has_skip = {"synthesis.b8.skip.weight", "synthesis.b8.skip.resample_filter"} <= keys
    assert has_skip == (architecture == "resnet") and "synthesis.b4.skip.weight" not in keys
    if architecture == "resnet":
        assert G.state_dict()["synthesis.b16.skip.weight"].shape == (16, 32, 1, 1)
    img = G.synthesis(random_ws(G, 2), noise_mode="const")
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()


def test_fully_connected_equalised_lr():
    torch.manual_seed(0)
    fc = FullyConnectedLayer(5, 4, activation="lrelu", lr_multiplier=0.01, bias_init=1)
    x = torch.randn(3, 5)
    pre = x @ (fc.weight * 0.01 / math.sqrt(5)).t() + fc.bias * 0.01
    expected = torch.where(pre >= 0, pre, 0.2 * pre) * math.sqrt(2)
    torch.testing.assert_close(fc(x), expected)
    # NVIDIA stores the weight divided by lr_multiplier but the bias as initialised.
    assert torch.equal(fc.bias, torch.ones(4)) and fc.weight.std() > 10
    linear = FullyConnectedLayer(5, 4, bias_init=1)
    torch.testing.assert_close(linear(x), x @ linear.weight.t() / math.sqrt(5) + 1)


def test_mapping_normalises_z():
    G = make_generator()
    z = torch.randn(2, G.z_dim)
    # normalize_2nd_moment makes the mapping invariant to the scale of each z.
    torch.testing.assert_close(G.mapping(z * torch.tensor([[3.0], [0.1]])), G.mapping(z))
    ws = G.mapping(z)
    assert ws.shape == (2, G.num_ws, G.w_dim)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))  # one w broadcast to all num_ws


def test_truncation_psi_and_cutoff():
    G = make_generator()
    z = torch.randn(3, G.z_dim)
    w_avg = G.mapping.w_avg
    ws = G.mapping(z)
    torch.testing.assert_close(G.mapping(z, truncation_psi=0), w_avg.expand_as(ws))
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.7), w_avg + 0.7 * (ws - w_avg))
    cut = G.mapping(z, truncation_psi=0.7, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], w_avg + 0.7 * (ws[:, :2] - w_avg))
    assert torch.equal(cut[:, 2:], ws[:, 2:])
    img_direct = G(z, truncation_psi=0.7, truncation_cutoff=2, noise_mode="const")
    assert torch.equal(img_direct, G.synthesis(cut, noise_mode="const"))


def test_w_avg_tracking_in_training_mode():
    G = make_generator()
    z = torch.randn(4, G.z_dim)
    before = G.mapping.w_avg.clone()
    G.mapping(z)
    assert torch.equal(G.mapping.w_avg, before)  # eval mode: no update
    G.train()
    G.mapping(z, skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, before)
    w = G.mapping(z)[:, 0].detach()
    torch.testing.assert_close(G.mapping.w_avg, w.mean(0).lerp(before, 0.995))


def test_noise_modes():
    G = make_generator()
    ws = random_ws(G, 2)
    torch.manual_seed(1)
    const_a = G.synthesis(ws, noise_mode="const")
    torch.manual_seed(2)
    const_b = G.synthesis(ws, noise_mode="const")
    assert torch.equal(const_a, const_b)
    none = G.synthesis(ws, noise_mode="none")
    assert (none - const_a).abs().max() > 1e-3
    torch.manual_seed(3)
    random_a = G.synthesis(ws, noise_mode="random")
    torch.manual_seed(3)
    random_b = G.synthesis(ws, noise_mode="random")
    random_c = G.synthesis(ws, noise_mode="random")
    assert torch.equal(random_a, random_b)  # torch.manual_seed governs the noise
    assert (random_a - random_c).abs().max() > 1e-3
    assert (random_a - const_a).abs().max() > 1e-3
    # Random noise is per sample: two identical ws get different images.
    twin = G.synthesis(ws[:1].expand(2, -1, -1), noise_mode="random")
    assert (twin[0] - twin[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_noise_strength_scales_noise():
    G = make_generator()
    ws = random_ws(G, 2)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.zero_()
    assert torch.equal(G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="none"))


def test_noise_shapes():
    G = make_generator()
    assert G.synthesis.noise_shapes() == [("b4.conv1", 4), ("b8.conv0", 8), ("b8.conv1", 8), ("b16.conv0", 16),
                                          ("b16.conv1", 16)]
    with torch.device("meta"):
        big = Generator(512, 0, 512, 1024, 3)
    shapes = big.synthesis.noise_shapes()
    assert len(shapes) == 17 and shapes[-1] == ("b1024.conv1", 1024)


def test_explicit_noise_list():
    G = make_generator()
    ws = random_ws(G, 3)
    shapes = G.synthesis.noise_shapes()
    const = G.synthesis(ws, noise_mode="const")
    buffers = [G.synthesis.get_submodule(name).noise_const.reshape(1, 1, r, r) for name, r in shapes]
    torch.testing.assert_close(G.synthesis(ws, noise_mode="none", noise=buffers), const, rtol=0, atol=1e-6)
    # None entries fall back to noise_mode.
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const", noise=[None] * len(shapes)), const,
                               rtol=0, atol=0)
    zeros = [torch.zeros(1, 1, r, r) for _, r in shapes]
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const", noise=zeros),
                               G.synthesis(ws, noise_mode="none"), rtol=0, atol=1e-6)
    # Per-sample noise [N, 1, r, r]; replacing only the first layer's noise changes the image.
    per_sample = [None] * len(shapes)
    per_sample[0] = torch.randn(3, 1, 4, 4)
    mixed = G.synthesis(ws, noise_mode="const", noise=per_sample)
    assert (mixed - const).abs().max() > 1e-3
    with pytest.raises(ValueError, match="list of 5 entries"):
        G.synthesis(ws, noise=zeros[:-1])
    bad = list(zeros)
    bad[1] = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"noise must be \[1 or N, 1, 8, 8\]"):
        G.synthesis(ws, noise=bad)


def test_gradients_reach_ws_and_noise():
    G = make_generator().requires_grad_(False)
    ws = random_ws(G, 2).requires_grad_()
    noise = [torch.randn(1, 1, r, r, requires_grad=True) for _, r in G.synthesis.noise_shapes()]
    G.synthesis(ws, noise=noise).square().sum().backward()
    assert ws.grad.abs().sum() > 0
    assert all(n.grad is not None and n.grad.abs().sum() > 0 for n in noise)


def test_float64_reference():
    G = make_generator()
    ws = random_ws(G, 2)
    img32 = G.synthesis(ws, noise_mode="const")
    G64 = make_generator().double().set_impl("reference")
    img64 = G64.synthesis(ws.double(), noise_mode="const")
    assert img64.dtype == torch.float64
    torch.testing.assert_close(img64.float(), img32, rtol=0, atol=1e-4)
    z = torch.randn(2, G.z_dim, dtype=torch.float64)
    assert G64(z, noise_mode="random").dtype == torch.float64


def test_set_impl_reaches_every_layer():
    G = make_generator()
    assert G.impl == "auto"
    G.set_impl("reference")
    impls = {m.impl for m in G.synthesis.modules() if hasattr(m, "impl")}
    assert impls == {"reference"} and G.impl == "reference"
    G.impl = "auto"
    assert {m.impl for m in G.synthesis.modules() if hasattr(m, "impl")} == {"auto"}


@pytest.mark.parametrize("impl", ["reference", pytest.param("fused", marks=needs_extension)])
def test_set_conv_dtype_runs_the_3x3_convolutions_in_bf16(impl):
    G = make_generator().set_impl(impl).requires_grad_(False)
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3))
    fp32 = G(z, noise_mode="const")
    assert G.set_conv_dtype(torch.bfloat16) is G and G.conv_dtype == torch.bfloat16
    layers = [m for m in G.modules() if type(m).__name__ == "SynthesisLayer"]
    assert {m.conv_dtype for m in layers} == {torch.bfloat16}
    bf16 = G(z, noise_mode="const")
    G.set_conv_dtype(None)
    assert bf16.dtype == torch.float32
    difference = float((bf16 - fp32).abs().max())
    assert 0 < difference < 0.05, difference  # the same image up to bf16 rounding
    assert torch.equal(G(z, noise_mode="const"), fp32)  # None restores fp32 exactly
    with pytest.raises(ValueError, match="conv_dtype must be None or a floating torch.dtype"):
        G.set_conv_dtype("bf16")


def test_a_generator_built_on_the_meta_device_leaves_later_ones_real():
    """The cached FIR filter is keyed by the resolved default device: building on "meta" (as counting
    config-f's parameters does) must not hand meta buffers to a generator built afterwards."""
    with torch.device("meta"):
        on_meta = Generator(8, 0, 8, 8, 3, mapping_kwargs=dict(num_layers=1),
                            synthesis_kwargs=dict(channel_base=64, channel_max=16))
    assert on_meta.synthesis.b8.conv0.resample_filter.is_meta
    G = Generator(8, 0, 8, 8, 3, mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=16))
    assert G.synthesis.b8.conv0.resample_filter.device == torch.device("cpu")


def _synthesis_layers(G):
    return [m for m in G.modules() if type(m).__name__ == "SynthesisLayer"]


@pytest.mark.parametrize("impl", ["reference", pytest.param("fused", marks=needs_extension)])
def test_frozen_weights_are_prepared_once_and_follow_every_change(impl):
    """A frozen SynthesisLayer keeps its prepared weight and demodulation sums between calls (PULSE's
    thousands of steps), and drops them when the weight changes in place, is replaced, or changes
    dtype: the image always equals a fresh generator's with the same weights."""
    G = make_generator().set_impl(impl).requires_grad_(False)
    ws = random_ws(G, 2, seed=4)
    first = G.synthesis(ws, noise_mode="const")
    layers = _synthesis_layers(G)
    kept = [layer._frozen_weights[2:] for layer in layers]
    assert any(layer.up == 2 for layer in layers)
    for layer in layers:  # the up=2 layers keep the weight whose [Cin, Cout] transpose the library reads as is
        layout = torch.channels_last if impl == "fused" else torch.contiguous_format  # CPU fused: NHWC
        assert layer._frozen_weights[2].transpose(0, 1).is_contiguous(memory_format=layout) == (layer.up == 2)
        torch.testing.assert_close(layer._frozen_weights[3], layer.weight.square().sum((2, 3)).t(), rtol=0, atol=0)
    assert torch.equal(G.synthesis(ws, noise_mode="const"), first)
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(kept, (layer._frozen_weights[2:] for layer in layers)))

    def fresh():
        H = make_generator().set_impl(impl).requires_grad_(False)
        H.load_state_dict(G.state_dict())
        return H.synthesis(ws, noise_mode="const")

    with torch.no_grad():  # in place (bumps the version counter), as an optimiser or load_state_dict would
        layers[1].weight.mul_(-0.5)
    changed = G.synthesis(ws, noise_mode="const")
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(changed, fresh(), rtol=0, atol=1e-6)
    layers[2].weight = torch.nn.Parameter(torch.randn_like(layers[2].weight), requires_grad=False)  # replaced
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), fresh(), rtol=0, atol=1e-6)
    G.double()  # module.to swaps the storage without a version bump
    img64 = G.synthesis(ws.double(), noise_mode="const")
    assert img64.dtype == torch.float64
    torch.testing.assert_close(img64.float(), fresh(), rtol=0, atol=1e-4)


@needs_extension
def test_a_frozen_generators_step_copies_no_weight():
    """The library convolutions of a frozen generator (a PULSE step: forward, and backward to the
    latents) read the kept weights in place: no 3x3 weight is copied (oneDNN's channels-last up=2
    convolution had copied its transposed weight twice per layer and step)."""
    G = make_generator().set_impl("fused").requires_grad_(False)
    ws = random_ws(G, 2, seed=4).requires_grad_(True)
    G.synthesis(ws, noise_mode="const").sum().backward()  # prepares the weights
    with torch.profiler.profile(record_shapes=True) as prof:
        G.synthesis(ws, noise_mode="const").sum().backward()
    weight_copies = [e for e in prof.events() if e.name == "aten::copy_" and e.input_shapes
                     and len(e.input_shapes[0]) == 4 and list(e.input_shapes[0][2:]) == [3, 3]]
    assert any(e.name == "pulse_ext::modulated_conv2d" for e in prof.events())
    assert not weight_copies, [e.input_shapes[0] for e in weight_copies]


def test_trainable_weights_get_gradients_through_the_prepared_weight():
    """With the weights trainable (grad enabled), nothing is kept: the weight gradient flows through
    the demodulation sums and the convolution, as the reference's."""
    grads = {}
    for impl in ("reference", "fused") if pulse_ext._extension.is_loaded() else ("reference",):
        G = make_generator().set_impl(impl)
        G.synthesis(random_ws(G, 2, seed=6), noise_mode="const").square().sum().backward()
        layer = _synthesis_layers(G)[1]
        assert layer._frozen_weights is None and layer.weight.grad is not None
        grads[impl] = layer.weight.grad
        G.requires_grad_(False)
        with torch.no_grad():
            layer.weight.add_(1.0)
        G.synthesis(random_ws(G, 2, seed=6), noise_mode="const")  # frozen now: prepared from the new weight
        torch.testing.assert_close(layer._frozen_weights[3], layer.weight.square().sum((2, 3)).t(), rtol=0, atol=0)
    if "fused" in grads:
        torch.testing.assert_close(grads["fused"], grads["reference"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- fused vs reference


@needs_extension
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_matches_reference_forward_and_backward(batch):
    G = make_generator(conv_clamp=1.0).requires_grad_(False)
    shapes = G.synthesis.noise_shapes()
    results = {}
    for impl in ("reference", "fused"):
        G.set_impl(impl)
        ws = random_ws(G, batch, seed=5).requires_grad_()
        noise = [torch.randn(n, 1, r, r, generator=torch.Generator().manual_seed(i)).requires_grad_()
                 for i, ((_, r), n) in enumerate(zip(shapes, [1, batch] * len(shapes)))]
        img = G.synthesis(ws, noise=noise)
        weights = torch.randn(img.shape, generator=torch.Generator().manual_seed(9))
        (img * weights).sum().backward()
        results[impl] = (img.detach(), ws.grad, [n.grad for n in noise])
    (img_r, gws_r, gn_r), (img_f, gws_f, gn_f) = results["reference"], results["fused"]
    torch.testing.assert_close(img_f, img_r, rtol=0, atol=1e-4)
    torch.testing.assert_close(gws_f, gws_r, rtol=1e-4, atol=1e-4)
    for a, b in zip(gn_f, gn_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_extension
def test_fused_matches_reference_full_generator():
    G = make_generator()
    z = torch.randn(2, G.z_dim)
    ref = G.set_impl("reference")(z, truncation_psi=0.7, noise_mode="const")
    fused = G.set_impl("fused")(z, truncation_psi=0.7, noise_mode="const")
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-4)

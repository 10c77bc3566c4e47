"""Every fused op against its plain-PyTorch reference: forward, backward, odd shapes, batch 1 and many,
non-contiguous inputs, float64 gradcheck, torch.library.opcheck, registration, and error messages."""
import math

import pytest
import torch

from pulse_ext import _extension, ops
from pulse_ext.ops import reference

from conftest import CUDA_SKIP_REASON, DEVICES, requires_extension

pytestmark = requires_extension

ELEMENTWISE_TOL = dict(rtol=1e-5, atol=1e-6)
CONV_TOL = dict(rtol=1e-4, atol=1e-4)


def leaves(*tensors):
    """Independent copies that require grad (None stays None)."""
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]


def non_contiguous(t):
    """The same values in a non-contiguous layout (transposed storage)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def in_layout(t, layout):
    """t as "contiguous", "transposed" (non-contiguous) or "channels_last" memory (4-D only)."""
    if layout == "transposed":
        return non_contiguous(t)
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return t


LAYOUTS = ["contiguous", "transposed", "channels_last"]


def assert_grads_close(fused_inputs, reference_inputs, tol):
    for i, (a, b) in enumerate(zip(fused_inputs, reference_inputs)):
        if a is None:
            continue
        assert a.grad is not None, f"input {i} got no gradient from the fused op"
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=lambda m: f"grad of input {i}: {m}")


# ---------------------------------------------------------------------------------------------- noise_bias_act

NBA_CASES = [
    # (N, C, H, W, noise: None | "shared" | "per_sample", demod, clamp, slope, gain)
    (1, 3, 4, 4, None, False, None, 0.2, math.sqrt(2)),
    (3, 5, 7, 9, "shared", True, None, 0.2, math.sqrt(2)),
    (3, 13, 16, 16, "per_sample", True, 256.0, 0.2, math.sqrt(2)),
    (16, 7, 8, 8, "per_sample", False, 0.5, 0.2, math.sqrt(2)),
    (2, 3, 64, 64, "shared", True, 0.3, 0.2, math.sqrt(2)),
    (4, 3, 8, 8, None, False, 256.0, 1.0, 1.0),  # toRGB: linear, gain 1
    (2, 37, 5, 7, "per_sample", True, 0.9, 0.2, math.sqrt(2)),  # C and H*W: 16-lane blocks + a tail
]


def make_nba_inputs(n, c, h, w, noise, demod, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + h)
    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)
    x = rand(n, c, h, w)
    noise_t = None if noise is None else rand(1 if noise == "shared" else n, 1, h, w)
    strength = None if noise is None else rand(()).abs() + 0.1
    bias = rand(c)
    demod_t = (torch.rand(n, c, generator=g, dtype=dtype) + 0.5).to(device) if demod else None
    return x, noise_t, strength, bias, demod_t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", NBA_CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-{c[4]}-d{int(c[5])}-c{c[6]}")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_noise_bias_act_matches_reference(device, case, layout):
    n, c, h, w, noise, demod, clamp, slope, gain = case
    x, noise_t, strength, bias, demod_t = make_nba_inputs(n, c, h, w, noise, demod, device)
    x = in_layout(x, layout)
    if layout == "transposed":
        noise_t = None if noise_t is None else non_contiguous(noise_t)
    fused_in = leaves(x, noise_t, strength, bias, demod_t)
    ref_in = leaves(x, noise_t, strength, bias, demod_t)
    kw = dict(gain=gain, clamp=clamp, slope=slope)
    y_fused = ops.noise_bias_act(*fused_in[:4], demod=fused_in[4], impl="fused", **kw)
    y_ref = ops.noise_bias_act(*ref_in[:4], demod=ref_in[4], impl="reference", **kw)
    torch.testing.assert_close(y_fused, y_ref, **ELEMENTWISE_TOL)
    grad = torch.randn_like(y_ref)
    y_fused.backward(grad)
    y_ref.backward(grad)
    assert_grads_close(fused_in, ref_in, dict(rtol=1e-5, atol=1e-4))


@pytest.mark.parametrize("gain,slope,clamp", [(math.sqrt(2), 0.2, None), (0.7, 0.2, 0.4), (0.3, 0.2, 0.5),
                                               (1.0, 1.0, None), (2.0, 1.0, 1.0)])
@pytest.mark.parametrize("present", ["all", "no_noise", "no_bias", "no_demod", "none", "no_strength"])
def test_noise_bias_act_reference_equals_its_formula(gain, slope, clamp, present):
    """The reference folds the gain into the sums (three passes, not six); it must still be the literal
    y = clamp(lrelu(x * d + strength * noise + bias) * gain), forward and backward, any input absent."""
    x, noise_t, strength, bias, demod_t = make_nba_inputs(3, 5, 6, 7, "per_sample", True, "cpu", torch.float64)
    if present in ("no_noise", "none"):
        noise_t, strength = None, None
    if present == "no_strength":
        strength = None
    if present in ("no_bias", "none"):
        bias = None
    if present in ("no_demod", "none"):
        demod_t = None
    a, b = leaves(x, noise_t, strength, bias, demod_t), leaves(x, noise_t, strength, bias, demod_t)

    def literal(x, noise, strength, bias, demod):
        y = x if demod is None else x * demod[:, :, None, None]
        if noise is not None:
            y = y + noise * (1.0 if strength is None else strength)
        if bias is not None:
            y = y + bias[None, :, None, None]
        y = torch.nn.functional.leaky_relu(y, slope) * gain
        return y if clamp is None else y.clamp(-clamp, clamp)

    y = ops.noise_bias_act(*a[:4], demod=a[4], gain=gain, slope=slope, clamp=clamp, impl="reference")
    want = literal(*b)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    want.backward(grad)
    assert_grads_close(a, b, dict(rtol=1e-10, atol=1e-10))


def test_noise_bias_act_gradcheck_float64():
    x, noise_t, strength, bias, demod_t = make_nba_inputs(2, 3, 5, 4, "per_sample", True, "cpu", torch.float64)
    inputs = leaves(x, noise_t, strength, bias, demod_t)
    for clamp in (None, 0.7):
        assert torch.autograd.gradcheck(
            lambda x, nz, s, b, d: ops.noise_bias_act(x, nz, s, b, demod=d, clamp=clamp, impl="fused"), inputs)
    shared = leaves(*make_nba_inputs(2, 3, 5, 4, "shared", False, "cpu", torch.float64)[:4])
    assert torch.autograd.gradcheck(lambda x, nz, s, b: ops.noise_bias_act(x, nz, s, b, impl="fused"), shared)


@pytest.mark.parametrize("needs_grad", ["x", "strength", "noise+bias", "all"])
def test_noise_bias_act_grads_for_a_subset_of_inputs(needs_grad):
    # Absent inputs (demod None here) have no autograd edge: each gradient must still reach its own input.
    x, noise_t, strength, bias, _ = make_nba_inputs(3, 5, 4, 6, "per_sample", False, "cpu")
    wanted = {"x": [0], "strength": [2], "noise+bias": [1, 3], "all": [0, 1, 2, 3]}[needs_grad]
    results = []
    for impl in ("fused", "reference"):
        inputs = [t.clone().requires_grad_(i in wanted) for i, t in enumerate((x, noise_t, strength, bias))]
        y = ops.noise_bias_act(*inputs, clamp=1.5, impl=impl)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum(),
                                    [inputs[i] for i in wanted])
        results.append(grads)
    for i, fused, ref in zip(wanted, *results):
        assert fused.shape == ref.shape, f"input {i}"
        torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"grad of input {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_noise_bias_act_opcheck(device):
    x, noise_t, strength, bias, demod_t = make_nba_inputs(2, 3, 5, 4, "per_sample", True, device)
    args = [t.requires_grad_() for t in (x, demod_t, noise_t, strength, bias)]
    torch.library.opcheck(torch.ops.pulse_ext.noise_bias_act.default, (*args, 0.2, math.sqrt(2), 0.5))
    torch.library.opcheck(torch.ops.pulse_ext.noise_bias_act.default, (x, None, None, None, bias, 0.2, 1.0, None))


# ------------------------------------------------------------------------------------------ area_downscale_loss

ADL_CASES = [
    # (N, C, H, W, h, w, target batch 1?)
    (1, 3, 16, 16, 4, 4, True),
    (3, 3, 64, 64, 16, 16, False),
    (16, 3, 32, 32, 8, 8, True),
    (2, 5, 12, 18, 3, 6, False),   # odd channels, non-square, different factors per axis
    (4, 1, 7, 7, 7, 7, True),      # factor 1
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ADL_CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-to{c[4]}x{c[5]}")
@pytest.mark.parametrize("contiguous", [True, False])
def test_area_downscale_loss_matches_reference(device, case, contiguous):
    n, c, hh, ww, h, w, shared_target = case
    g = torch.Generator().manual_seed(hh * ww + n)
    img = torch.rand(n, c, hh, ww, generator=g).to(device)
    target = torch.rand(1 if shared_target else n, c, h, w, generator=g).to(device)
    if not contiguous:
        img = non_contiguous(img)
    (img_f, target_f), (img_r, target_r) = leaves(img, target), leaves(img, target)
    l2_f, l1_f = ops.area_downscale_loss(img_f, target_f, impl="fused")
    l2_r, l1_r = ops.area_downscale_loss(img_r, target_r, impl="reference")
    assert l2_f.shape == (n,) and l1_f.shape == (n,)
    torch.testing.assert_close(l2_f, l2_r, **ELEMENTWISE_TOL)
    torch.testing.assert_close(l1_f, l1_r, **ELEMENTWISE_TOL)
    w2, w1 = torch.randn(n, generator=g).to(device), torch.randn(n, generator=g).to(device)
    ((l2_f * w2).sum() + (l1_f * w1).sum()).backward()
    ((l2_r * w2).sum() + (l1_r * w1).sum()).backward()
    assert_grads_close([img_f, target_f], [img_r, target_r], dict(rtol=1e-5, atol=1e-7))


def test_area_downscale_loss_only_l2_used():
    img, target = leaves(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 2, 2))
    l2, _ = ops.area_downscale_loss(img, target, impl="fused")
    l2.sum().backward()
    img_r, target_r = leaves(img, target)
    reference.area_downscale_loss(img_r, target_r)[0].sum().backward()
    torch.testing.assert_close(img.grad, img_r.grad, **ELEMENTWISE_TOL)


def test_area_downscale_loss_grad_of_target_only():
    img, target = torch.rand(3, 2, 8, 8), torch.rand(1, 2, 4, 4)
    grads = []
    for impl in ("fused", "reference"):
        t = target.clone().requires_grad_()
        l2, l1 = ops.area_downscale_loss(img, t, impl=impl)
        grads.append(torch.autograd.grad((l2 + 0.5 * l1).sum(), t)[0])
    torch.testing.assert_close(grads[0], grads[1], **ELEMENTWISE_TOL)


def test_area_downscale_loss_gradcheck_float64():
    img, target = leaves(torch.rand(2, 3, 6, 8, dtype=torch.float64), torch.rand(2, 3, 3, 2, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b: ops.area_downscale_loss(a, b, impl="fused"), (img, target))


@pytest.mark.parametrize("device", DEVICES)
def test_area_downscale_loss_opcheck(device):
    img = torch.rand(2, 3, 8, 8, device=device, requires_grad=True)
    target = torch.rand(1, 3, 4, 2, device=device)
    torch.library.opcheck(torch.ops.pulse_ext.area_downscale_loss.default, (img, target))


# --------------------------------------------------------------------------------------------- modulated_conv2d

MODCONV_CASES = [
    # (N, Cin, Cout, H, k, up, demodulate)
    (1, 3, 5, 4, 3, 1, True),
    (3, 7, 6, 8, 3, 2, True),
    (16, 5, 3, 4, 3, 2, True),
    (3, 13, 11, 16, 3, 1, True),
    (2, 6, 3, 32, 1, 1, False),    # toRGB: 1x1, no demodulation
    (2, 4, 4, 64, 3, 1, False),
]


# The CPU runs a modulated convolution three ways: channels-last with Winograd F(4x4, 3x3) for the 3x3
# "same" layers (the default), channels-last with oneDNN's direct convolution, and the device-generic
# NCHW path CUDA uses. Each test of the fused op runs all three.
CPU_PATHS = {"nhwc-winograd": ("nhwc", "winograd"), "nhwc-onednn": ("nhwc", "onednn"), "nchw": ("nchw", "auto")}


def use_cpu_path(monkeypatch, device, cpu_path):
    if device == "cuda" and cpu_path != "nhwc-winograd":
        pytest.skip("the CPU path only affects CPU tensors")
    layout, conv = CPU_PATHS[cpu_path]
    monkeypatch.setenv("PULSE_EXT_CPU_LAYOUT", layout)
    monkeypatch.setenv("PULSE_EXT_CPU_CONV", conv)


def make_modconv_inputs(n, cin, cout, h, k, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(n * 100 + cin * 10 + h)
    x = torch.randn(n, cin, h, h, generator=g, dtype=dtype).to(device)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype).to(device)
    styles = (torch.randn(n, cin, generator=g, dtype=dtype) + 1).to(device)
    return x, weight, styles


def assert_modconv_matches_reference(x, weight, styles, demodulate, up):
    """Fused vs reference modulated_conv2d, forward and grads wrt x and styles; returns the fused output."""
    (x_f, s_f), (x_r, s_r) = leaves(x, styles), leaves(x, styles)
    y_f = ops.modulated_conv2d(x_f, weight, s_f, demodulate=demodulate, up=up, impl="fused")
    y_r = ops.modulated_conv2d(x_r, weight, s_r, demodulate=demodulate, up=up, impl="reference")
    torch.testing.assert_close(y_f, y_r, **CONV_TOL)
    grad = torch.randn_like(y_r)
    y_f.backward(grad)
    y_r.backward(grad)
    assert_grads_close([x_f, s_f], [x_r, s_r], dict(rtol=1e-4, atol=1e-3))
    return y_f


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", MODCONV_CASES, ids=lambda c: f"n{c[0]}-{c[1]}to{c[2]}-{c[3]}px-k{c[4]}-up{c[5]}-d{int(c[6])}")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cpu_path", CPU_PATHS)
def test_modulated_conv2d_matches_reference(monkeypatch, device, case, layout, cpu_path):
    use_cpu_path(monkeypatch, device, cpu_path)
    n, cin, cout, h, k, up, demodulate = case
    x, weight, styles = make_modconv_inputs(n, cin, cout, h, k, device)
    x = in_layout(x, layout)
    if layout == "transposed":
        styles = styles.t().contiguous().t()
    y = assert_modconv_matches_reference(x, weight, styles, demodulate, up)
    assert y.shape == (n, cout, h * up, h * up)


# The implicit-GEMM kernels tile 64 or 128 pixels x 64 output channels x 16 or 32 input channels:
# these stride-1 cases also cross every tile edge with a partial tile (pixels 288 = 2 x 128 + 32,
# 130 output and 70 input channels) and fill whole ones (64 x 64 channels, 256 pixels).
IGEMM_CASES = [c for c in MODCONV_CASES if c[5] == 1] + [
    (2, 70, 130, 12, 3, 1, True),
    (2, 70, 130, 12, 3, 1, False),
    (1, 64, 64, 16, 3, 1, True),
    (3, 40, 3, 20, 1, 1, False),
]


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
@pytest.mark.parametrize("case", IGEMM_CASES, ids=lambda c: f"n{c[0]}-{c[1]}to{c[2]}-{c[3]}px-k{c[4]}-d{int(c[6])}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_modulated_conv2d_cuda_implicit_gemm_matches_reference(monkeypatch, case, dtype):
    """The direct implicit-GEMM CUDA kernel (PULSE_EXT_CUDA_CONV=igemm; forward and data gradient)
    against the reference."""
    n, cin, cout, h, k, up, demodulate = case
    x, weight, styles = make_modconv_inputs(n, cin, cout, h, k, "cuda", dtype)
    monkeypatch.setenv("PULSE_EXT_CUDA_CONV", "igemm")
    assert_modconv_matches_reference(x, weight, styles, demodulate, up)


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
@pytest.mark.skipif(CUDA_SKIP_REASON is None and torch.cuda.get_device_capability()[0] < 8,
                    reason="bf16 tensor cores need compute capability 8.0 or newer")
@pytest.mark.parametrize("case", IGEMM_CASES, ids=lambda c: f"n{c[0]}-{c[1]}to{c[2]}-{c[3]}px-k{c[4]}-d{int(c[6])}")
def test_modulated_conv2d_cuda_tensor_core_implicit_gemm(monkeypatch, case):
    """conv_dtype=bfloat16 with PULSE_EXT_CUDA_CONV=igemm runs the tensor-core kernel (bf16 operands,
    fp32 accumulation): forward and grads match the reference's bf16 convolution to bf16 precision."""
    n, cin, cout, h, k, up, demodulate = case
    x, weight, styles = make_modconv_inputs(n, cin, cout, h, k, "cuda")
    results = {}
    for backend, impl in (("igemm", "fused"), ("cudnn", "fused"), ("cudnn", "reference")):
        monkeypatch.setenv("PULSE_EXT_CUDA_CONV", backend)
        xi, si = leaves(x, styles)
        y = ops.modulated_conv2d(xi, weight, si, demodulate=demodulate, conv_dtype=torch.bfloat16, impl=impl)
        grad = torch.linspace(-1, 1, y.numel(), device="cuda").reshape(y.shape)
        results[backend, impl] = (y, *torch.autograd.grad(y, [xi, si], grad))
    for ours, ref in zip(results["igemm", "fused"], results["cudnn", "reference"]):
        assert ours.dtype == torch.float32
        assert _relative_max_diff(ours, ref) < 2e-2
    if not demodulate:
        # Tensor cores multiply the bf16-rounded operands exactly and accumulate in fp32, so against a
        # float64 convolution of the same rounded operands the kernel is exact to ~1e-6 -- which neither
        # cuDNN (it rounds its bf16 result: ~4e-3) nor an fp32 kernel on unrounded operands (~1e-3) is.
        y, grad_x, _ = results["igemm", "fused"]
        xs = (x * styles[:, :, None, None]).bfloat16().double()
        w = weight.bfloat16().double()
        assert _relative_max_diff(y.double(), torch.nn.functional.conv2d(xs, w, padding=k // 2)) < 1e-4
        grad_xs = torch.nn.grad.conv2d_input(xs.shape, w, grad.bfloat16().double(), padding=k // 2)
        assert _relative_max_diff(grad_x.double(), grad_xs * styles.double()[:, :, None, None]) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend, conv_dtype", [("cudnn", None), ("igemm", None), ("igemm", torch.bfloat16)])
def test_modulated_conv2d_without_padding(monkeypatch, device, backend, conv_dtype):
    """padding=0 for a 3x3 kernel (every stride-1 path takes it): the output shrinks by 2 and the data
    gradient pads by k - 1 - padding = 2, unlike the generator's "same" layers."""
    if device == "cpu" and backend == "igemm":
        pytest.skip("PULSE_EXT_CUDA_CONV only affects CUDA tensors")
    if device == "cuda" and conv_dtype is not None and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 tensor cores need compute capability 8.0 or newer")
    monkeypatch.setenv("PULSE_EXT_CUDA_CONV", backend)
    x, weight, styles = make_modconv_inputs(2, 9, 7, 10, 3, device)
    grads = {}
    for impl in ("fused", "reference"):
        xi, si = leaves(x, styles)
        y = ops.modulated_conv2d(xi, weight, si, padding=0, conv_dtype=conv_dtype, impl=impl)
        assert y.shape == (2, 7, 8, 8)
        grad = torch.linspace(-1, 1, y.numel(), device=device).reshape(y.shape)
        grads[impl] = (y, *torch.autograd.grad(y, [xi, si], grad))
    for fused, ref in zip(grads["fused"], grads["reference"]):
        if conv_dtype is None:
            torch.testing.assert_close(fused, ref, **CONV_TOL)
        else:
            assert _relative_max_diff(fused, ref) < 2e-2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5])
def test_modulated_conv2d_up2_refuses_kernels_other_than_3x3(device, k):
    """The up=2 layer's FIR stage pads for a 3x3 kernel only: other sizes used to come out 6x6 (k=1) or
    10x10 (k=5) from a 4x4 input where the reference gives 8x8. One rule, refused everywhere."""
    x, weight, styles = make_modconv_inputs(2, 4, 5, 4, k, device)
    message = rf"up=2 needs a 3x3 kernel and padding=1, got k={k}, padding={k // 2}"
    for impl in ("fused", "reference"):
        with pytest.raises(ValueError, match=message):
            ops.modulated_conv2d(x, weight, styles, up=2, impl=impl)
    with pytest.raises(RuntimeError, match=message):  # the registered op, called directly
        torch.ops.pulse_ext.modulated_conv2d(x, weight, styles, None, 2, k // 2)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode, pytest.raises(ValueError, match=message):
        fake = [mode.from_tensor(t) for t in (x, weight, styles)]
        torch.ops.pulse_ext.modulated_conv2d(*fake, None, 2, k // 2)
    from pulse_ext.stylegan2.networks import SynthesisLayer
    with pytest.raises(ValueError, match=r"up=2 needs kernel_size=3, got 5"):
        SynthesisLayer(4, 4, w_dim=8, resolution=8, kernel_size=5, up=2)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("cpu_path", ["nhwc-onednn", "nchw"])
def test_modulated_conv2d_backward_allocates_no_input_sized_dummy(monkeypatch, up, cpu_path):
    """The data gradient needs no tensor of the input's size besides the gradients themselves: the
    backward allocates grad_x and grad_xs (2 x x's bytes) and output-sized buffers (the demodulated
    gradient, and for up=2 the FIR's adjoint and the transposed convolution's intermediate), nothing
    else of x's size -- the input-shaped dummy convolution_backward once needed was 1 x x more (32
    restarts x 32 channels at 1024^2 in fp32: 4.3 GB). Counted by the profiler's CPU allocations."""
    from torch.profiler import ProfilerActivity, profile
    use_cpu_path(monkeypatch, "cpu", cpu_path)
    x, weight, styles = make_modconv_inputs(2, 64, 4, 32, 3, "cpu")
    if cpu_path != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)  # as the generator's layers pass it: no copy
    x, styles = leaves(x, styles)
    y = ops.modulated_conv2d(x, weight, styles, up=up, impl="fused")
    grad = torch.randn_like(y)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.autograd.grad(y, [x, styles], grad)
    allocated = sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())
    assert allocated <= 2 * x.nbytes + 4 * y.nbytes + (64 << 10), (allocated / x.nbytes, y.nbytes / x.nbytes)


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
def test_unknown_cuda_conv_backend_is_reported(monkeypatch):
    x, weight, styles = make_modconv_inputs(2, 3, 4, 5, 3, "cuda")
    monkeypatch.setenv("PULSE_EXT_CUDA_CONV", "fastest")
    with pytest.raises(RuntimeError, match="PULSE_EXT_CUDA_CONV must be 'cudnn' or 'igemm', got 'fastest'"):
        ops.modulated_conv2d(x, weight, styles, impl="fused")


def _relative_max_diff(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c in MODCONV_CASES if c[3] <= 16],
                         ids=lambda c: f"n{c[0]}-{c[1]}to{c[2]}-{c[3]}px-k{c[4]}-up{c[5]}")
@pytest.mark.parametrize("cpu_path", CPU_PATHS)
def test_modulated_conv2d_bf16_convolution(monkeypatch, device, case, cpu_path):
    """conv_dtype=bfloat16: fused matches the reference (same casts) to bf16 precision, and both differ
    from fp32 by bf16 rounding only; outputs and grads stay float32. (The fp32 rows of the Winograd
    path run Winograd, its bf16 rows oneDNN.)"""
    use_cpu_path(monkeypatch, device, cpu_path)
    n, cin, cout, h, k, up, demodulate = case
    x, weight, styles = make_modconv_inputs(n, cin, cout, h, k, device)
    x = in_layout(x, "channels_last")
    results = {}
    for impl in ("fused", "reference"):
        for conv_dtype in (None, torch.bfloat16):
            xi, si = leaves(x, styles)
            y = ops.modulated_conv2d(xi, weight, si, demodulate=demodulate, up=up, conv_dtype=conv_dtype, impl=impl)
            grad = torch.linspace(-1, 1, y.numel(), device=device).reshape(y.shape)
            gx, gs = torch.autograd.grad(y, [xi, si], grad)
            assert y.dtype == gx.dtype == gs.dtype == torch.float32
            results[impl, conv_dtype] = (y, gx, gs)
    for fused, ref in zip(results["fused", torch.bfloat16], results["reference", torch.bfloat16]):
        # 1x1 layers fold styles into the weight before rounding, the reference scales x: both bf16-exact
        assert _relative_max_diff(fused, ref) < 2e-2
    bf16_vs_fp32 = [_relative_max_diff(a, b) for a, b in zip(results["fused", torch.bfloat16],
                                                             results["fused", None])]
    assert max(bf16_vs_fp32) < 3e-2 and min(bf16_vs_fp32) > 1e-5  # rounded, so not equal to fp32


def test_modulated_conv2d_rejects_a_non_float_conv_dtype():
    x, weight, styles = make_modconv_inputs(1, 2, 2, 4, 3, "cpu")
    with pytest.raises(ValueError, match="conv_dtype must be None or a floating torch.dtype, got torch.int32"):
        ops.modulated_conv2d(x, weight, styles, conv_dtype=torch.int32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k, up", [(3, 1), (3, 2), (1, 1)])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_modulated_conv2d_weight_grad_matches_reference(device, k, up, demodulate, layout):
    """The weight gradient (pulse_ext::modulated_conv2d_weight_grad), with and without demodulation."""
    x, weight, styles = make_modconv_inputs(2, 4, 5, 6, k, device)
    x = in_layout(x, layout)
    fused, ref = leaves(x, weight, styles), leaves(x, weight, styles)
    ops.modulated_conv2d(*fused, up=up, demodulate=demodulate, impl="fused").square().sum().backward()
    ops.modulated_conv2d(*ref, up=up, demodulate=demodulate, impl="reference").square().sum().backward()
    assert_grads_close(fused, ref, dict(rtol=1e-4, atol=1e-3))


def test_modulated_conv2d_weight_grad_only():
    """Only the weight requires grad: the data gradient is skipped, the weight's still matches."""
    x, weight, styles = make_modconv_inputs(3, 5, 4, 7, 3, "cpu")
    grads = []
    for impl in ("fused", "reference"):
        w = weight.clone().requires_grad_()
        y = ops.modulated_conv2d(x, w, styles, up=2, impl=impl)
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum(), w)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_modulated_conv2d_weight_grad_opcheck(device):
    x, weight, styles = make_modconv_inputs(2, 3, 4, 5, 3, device)
    demod = ops.demodulation_coefficients(weight, styles)
    for up in (1, 2):
        grad = torch.randn(2, 4, 5 * up, 5 * up, device=device)
        torch.library.opcheck(torch.ops.pulse_ext.modulated_conv2d_weight_grad.default,
                              (grad, x, weight, styles, demod, up, 1))


@pytest.mark.parametrize("cpu_path", CPU_PATHS)
def test_modulated_conv2d_gradcheck_float64(monkeypatch, cpu_path):
    use_cpu_path(monkeypatch, "cpu", cpu_path)
    x, weight, styles = make_modconv_inputs(2, 3, 4, 5, 3, "cpu", torch.float64)
    x, weight, styles = leaves(x, weight, styles)
    for up in (1, 2):
        for demodulate in (True, False):
            assert torch.autograd.gradcheck(
                lambda a, w, s: ops.modulated_conv2d(a, w, s, demodulate=demodulate, up=up, impl="fused"),
                (x, weight, styles))
    pointwise = leaves(*make_modconv_inputs(2, 3, 4, 5, 1, "cpu", torch.float64))
    assert torch.autograd.gradcheck(lambda a, w, s: ops.modulated_conv2d(a, w, s, demodulate=False, impl="fused"),
                                    pointwise)


@pytest.mark.parametrize("device", DEVICES)
def test_modulated_conv2d_bf16_opcheck(device):
    x, weight, styles = make_modconv_inputs(2, 3, 4, 5, 3, device)
    x, styles = leaves(x, styles)
    demod = ops.demodulation_coefficients(weight, styles).detach()
    for up in (1, 2):
        torch.library.opcheck(torch.ops.pulse_ext.modulated_conv2d.default,
                              (x, weight, styles, demod, up, 1, torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cpu_path", CPU_PATHS)
def test_modulated_conv2d_opcheck(monkeypatch, device, cpu_path):
    use_cpu_path(monkeypatch, device, cpu_path)
    x, weight, styles = make_modconv_inputs(2, 3, 4, 5, 3, device)
    x.requires_grad_()
    styles.requires_grad_()
    demod = ops.demodulation_coefficients(weight, styles).detach().requires_grad_()
    for up in (1, 2):
        torch.torch.library.opcheck(torch.ops.pulse_ext.modulated_conv2d.default, (x, weight, styles, demod, up, 1))
    torch.library.opcheck(torch.ops.pulse_ext.modulated_conv2d.default, (x, weight[:, :, :1, :1], styles, None, 1, 0))


# The CPU's channels-last 1x1 layers with few output channels (toRGB) run streaming kernels
# (cpu::pointwise_modconv_*_nhwc), wider ones the batched GEMM: channel counts around the kernels'
# 16-lane sums (tails, several blocks), 1 to 16 outputs and 17 (the GEMM), over 1024 pixels (several
# reduction chunks per sample), batch 1 and many, with and without demodulation.
POINTWISE_CASES = [
    # (N, Cin, Cout, H, W, demodulate)
    (1, 1, 1, 1, 1, False),
    (1, 5, 3, 7, 3, True),
    (3, 32, 3, 9, 11, False),
    (2, 37, 1, 40, 33, True),     # 1320 pixels: two chunks; 37 = 2 x 16 + 5
    (9, 128, 3, 4, 4, False),
    (2, 16, 16, 6, 5, True),
    (2, 20, 17, 6, 5, True),      # 17 outputs: the batched GEMM
]


@pytest.mark.parametrize("case", POINTWISE_CASES, ids=lambda c: f"n{c[0]}-{c[1]}to{c[2]}-{c[3]}x{c[4]}-d{int(c[5])}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pointwise_channels_last_kernels_match_reference(case, dtype):
    n, cin, cout, h, w, demodulate = case
    g = torch.Generator().manual_seed(n + cin + cout + h)
    x = torch.randn(n, cin, h, w, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 1, 1, generator=g, dtype=dtype)
    styles = torch.randn(n, cin, generator=g, dtype=dtype) + 1
    (x_f, s_f), (x_r, s_r) = leaves(x, styles), leaves(x.contiguous(), styles)
    y_f = ops.modulated_conv2d(x_f, weight, s_f, demodulate=demodulate, impl="fused")
    y_r = ops.modulated_conv2d(x_r, weight, s_r, demodulate=demodulate, impl="reference")
    assert y_f.is_contiguous(memory_format=torch.channels_last)
    tol = CONV_TOL if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_f, y_r, **tol)
    grad = torch.randn(y_r.shape, generator=g, dtype=dtype)
    y_f.backward(grad.contiguous(memory_format=torch.channels_last))
    y_r.backward(grad)
    assert x_f.grad.is_contiguous(memory_format=torch.channels_last)
    assert_grads_close([x_f, s_f], [x_r, s_r], dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else tol)


def test_pointwise_channels_last_kernels_gradcheck_and_opcheck():
    """float64 gradcheck (x, weight, styles, demod) and opcheck of the 1x1 channels-last path, on a
    non-contiguous (channels-last) input."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 19, 3, 5, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(3, 19, 1, 1, generator=g, dtype=torch.float64)
    styles = torch.randn(2, 19, generator=g, dtype=torch.float64) + 1
    demod = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.5
    x, weight, styles, demod = leaves(x, weight, styles, demod)
    assert torch.autograd.gradcheck(lambda a, w, s, d: torch.ops.pulse_ext.modulated_conv2d(a, w, s, d, 1, 0),
                                    (x, weight, styles, demod))
    torch.library.opcheck(torch.ops.pulse_ext.modulated_conv2d.default, (x, weight, styles, demod, 1, 0))
    torch.library.opcheck(torch.ops.pulse_ext.modulated_conv2d.default, (x.float(), weight.float(), styles.float(),
                                                                        None, 1, 0))


# Shapes that reach every part of the Winograd kernel: spatial sizes that are not multiples of its 4x4
# tiles (down to 1x1), tiles of several samples in one block and blocks over several threads, and output
# channel counts that take each register-tile width (64/32/16 floats) and the scalar tail.
WINOGRAD_CASES = [
    # (N, Cin, Cout, H, W)
    (1, 2, 3, 1, 1),
    (2, 3, 2, 2, 3),
    (3, 5, 115, 5, 7),       # 115 = 64 + 32 + 16 + 3 output channels
    (2, 70, 19, 9, 13),      # 70 = 64 + 6 input channels (the transforms' 64-channel chunks + a tail)
    (5, 16, 48, 17, 6),
    (40, 8, 8, 12, 12),      # 360 tiles: many blocks
    (2, 260, 300, 6, 9),     # wider than 256 x 256: the whole-layer passes around a batched GEMM
]


# The Winograd GEMM is compiled for AVX-512, AVX2 + FMA and baseline SSE2 (picked for the CPU at run time,
# or by PULSE_EXT_CPU_GEMM): every one this CPU can run is tested.
_CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()
GEMM_ISAS = ["baseline"] + [pytest.param(isa, marks=pytest.mark.skipif(
    not supported, reason=f"this CPU ({_CPU_CAPABILITY}) cannot run the {isa} GEMM"))
    for isa, supported in (("avx2", _CPU_CAPABILITY in ("AVX2", "AVX512")), ("avx512", _CPU_CAPABILITY == "AVX512"))]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: "n{}-{}to{}-{}x{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gemm", GEMM_ISAS)
def test_winograd_convolution_matches_reference(monkeypatch, case, dtype, gemm):
    """The CPU Winograd F(4x4, 3x3) path against the reference: forward, and grads wrt x and styles,
    with and without demodulation (demod is fused into its output transform, styles into its input
    transform, and the backward runs it on the transposed, flipped filter)."""
    monkeypatch.setenv("PULSE_EXT_CPU_CONV", "winograd")
    monkeypatch.setenv("PULSE_EXT_CPU_GEMM", gemm)
    n, cin, cout, h, w = case
    g = torch.Generator().manual_seed(n * 1000 + cin * 10 + cout)
    x = torch.randn(n, cin, h, w, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 3, 3, generator=g, dtype=dtype)
    styles = torch.randn(n, cin, generator=g, dtype=dtype) + 1
    rel = 1e-4 if dtype == torch.float32 else 1e-11

    def assert_close_to_scale(a, b, what):
        # Winograd's rounding error scales with the magnitude of the sums, not of each output element
        # (undemodulated outputs here reach ~40): bound the difference relative to the tensor's scale.
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.detach().abs().max()), msg=lambda m: f"{what}: {m}")

    for demodulate in (True, False):
        (x_f, s_f), (x_r, s_r) = leaves(x, styles), leaves(x, styles)
        y_f = ops.modulated_conv2d(x_f, weight, s_f, demodulate=demodulate, impl="fused")
        y_r = ops.modulated_conv2d(x_r, weight, s_r, demodulate=demodulate, impl="reference")
        assert y_f.is_contiguous(memory_format=torch.channels_last)
        assert_close_to_scale(y_f, y_r, "output")
        grad = torch.randn(y_r.shape, generator=g, dtype=dtype)
        y_f.backward(grad)
        y_r.backward(grad)
        assert_close_to_scale(x_f.grad, x_r.grad, "grad of x")
        assert_close_to_scale(s_f.grad, s_r.grad, "grad of styles")


def test_winograd_filter_cache_sees_every_weight_change(monkeypatch):
    """Transformed filters are cached by the weight's contents: a weight changed in place (also through
    .data, which bumps no version counter) or another weight of the same shape never gets a stale one."""
    monkeypatch.setenv("PULSE_EXT_CPU_CONV", "winograd")
    x, weight, styles = make_modconv_inputs(3, 6, 7, 9, 3, "cpu")
    other = torch.randn_like(weight)

    def check(w):
        xi = x.clone().requires_grad_()
        y = ops.modulated_conv2d(xi, w, styles, impl="fused")
        torch.testing.assert_close(y, ops.modulated_conv2d(x, w, styles, impl="reference"), **CONV_TOL)
        (gx,) = torch.autograd.grad(y.square().sum(), xi)
        xr = x.clone().requires_grad_()
        (gr,) = torch.autograd.grad(ops.modulated_conv2d(xr, w, styles, impl="reference").square().sum(), xr)
        torch.testing.assert_close(gx, gr, rtol=1e-4, atol=1e-3)

    for w in (weight, other, weight):
        check(w)
    entries = torch.ops.pulse_ext._winograd_filter_cache_entries()
    weight.data.mul_(-0.5)
    check(weight)
    with torch.no_grad():
        weight[0, 0, 1, 1] += 3.0
    check(weight)
    # a weight changed in place replaces its entries (forward and data gradient) instead of adding more
    assert torch.ops.pulse_ext._winograd_filter_cache_entries() == entries
    # also when the entries it used were made from another tensor with the same contents
    twin = weight.clone()
    check(twin)
    twin.data.mul_(2.0)
    check(twin)
    assert torch.ops.pulse_ext._winograd_filter_cache_entries() == entries


def test_unknown_cpu_conv_is_reported(monkeypatch):
    x, weight, styles = make_modconv_inputs(2, 3, 4, 5, 3, "cpu")
    monkeypatch.setenv("PULSE_EXT_CPU_CONV", "fastest")
    with pytest.raises(RuntimeError, match="PULSE_EXT_CPU_CONV must be 'auto', 'winograd' or 'onednn', got 'fastest'"):
        ops.modulated_conv2d(x, weight, styles, impl="fused")
    monkeypatch.setenv("PULSE_EXT_CPU_CONV", "winograd")
    monkeypatch.setenv("PULSE_EXT_CPU_GEMM", "sse9")
    with pytest.raises(RuntimeError, match="PULSE_EXT_CPU_GEMM must be 'auto', 'avx512', 'avx2' or 'baseline', got 'sse9'"):
        ops.modulated_conv2d(x, weight, styles, impl="fused")


def test_demodulation_coefficients_equal_nvidia_form():
    x, weight, styles = make_modconv_inputs(3, 7, 5, 4, 3, "cpu", torch.float64)
    torch.testing.assert_close(ops.demodulation_coefficients(weight, styles),
                               reference.demodulation_coefficients(weight, styles))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (9, 3, 4, 4), (2, 5, 16, 3), (1, 3, 64, 64)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upsample2d_fast_form_equals_literal_upfirdn(device, shape, layout, dtype):
    """The fused upsampling (CPU: pulse_ext::upsample2d's polyphase loops; CUDA: the library's transposed
    convolution) against NVIDIA's literal upfirdn2d, forward and backward, in every layout (the CPU
    op keeps it), odd and single-pixel sizes, batch 1 and many."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype).to(device)
    x = in_layout(x, layout)
    (x_f,), (x_r,) = leaves(x), leaves(x)
    y_f, y_r = ops.upsample2d(x_f, impl="fused"), ops.upsample2d(x_r, impl="reference")
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_f, y_r, **tol)
    if device == "cpu" and layout == "channels_last" and min(shape[2:]) > 1:
        assert y_f.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(y_r.shape, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    y_f.backward(in_layout(grad, layout))
    y_r.backward(grad)
    torch.testing.assert_close(x_f.grad, x_r.grad, **tol)


def test_upsample2d_op_gradcheck_and_opcheck():
    for layout in ("contiguous", "channels_last"):
        x = in_layout(torch.randn(2, 3, 3, 5, dtype=torch.float64), layout).requires_grad_(True)
        assert torch.autograd.gradcheck(torch.ops.pulse_ext.upsample2d, (x,))
        torch.library.opcheck(torch.ops.pulse_ext.upsample2d.default, (x,))
        torch.library.opcheck(torch.ops.pulse_ext.upsample2d_backward.default,
                              (in_layout(torch.randn(2, 3, 6, 10, dtype=torch.float64), layout),))


def test_upsample2d_op_refuses_bad_shapes():
    with pytest.raises(RuntimeError, match=r"upsample2d: x must be \[N, C, H, W\]"):
        torch.ops.pulse_ext.upsample2d(torch.zeros(3, 4, 4))
    with pytest.raises(RuntimeError, match=r"upsample2d_backward: grad must be \[N, C, 2H, 2W\]"):
        torch.ops.pulse_ext.upsample2d_backward(torch.zeros(1, 3, 5, 4))


# ------------------------------------------------------------------------------------------ registration, errors

def test_cuda_kernels_registered_exactly_when_built_with_cuda():
    for op in ("noise_bias_act", "area_downscale_loss", "modulated_conv2d"):
        for name in (op, op + "_backward"):
            qualname = f"pulse_ext::{name}"
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU")
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA") == _extension.compiled_with_cuda()


def test_errors_name_argument_expected_and_actual():
    x = torch.randn(4, 8, 6, 6)
    with pytest.raises(ValueError, match=r"styles must be \[N, Cin\]=\[4, 8\], got \[4, 5\]"):
        ops.modulated_conv2d(x, torch.randn(3, 8, 3, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"up must be 1 or 2, got 4"):
        ops.modulated_conv2d(x, torch.randn(3, 8, 3, 3), torch.randn(4, 8), up=4)
    with pytest.raises(ValueError, match=r"bias must be \[C\]=\[8\], got \[3\]"):
        ops.noise_bias_act(x, bias=torch.randn(3))
    with pytest.raises(ValueError, match=r"noise must be \[1 or N, 1, H, W\]"):
        ops.noise_bias_act(x, noise=torch.randn(2, 1, 6, 6))
    with pytest.raises(ValueError, match=r"bias has dtype torch.float64 but x has torch.float32"):
        ops.noise_bias_act(x, bias=torch.randn(8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"target size 4x4 must divide the image size 6x6"):
        ops.area_downscale_loss(x[:, :3], torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"impl must be one of"):
        ops.noise_bias_act(x, impl="fast")
    # The C++ checks guard direct calls of the registered ops too.
    with pytest.raises(RuntimeError, match=r"bias must be \[C\]=\[8\], got \[3\]"):
        torch.ops.pulse_ext.noise_bias_act(x, None, None, None, torch.randn(3), 0.2, 1.0, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to put one input on another device")
def test_device_mismatch_is_reported():
    x = torch.randn(2, 3, 4, 4, device="cuda")
    with pytest.raises(ValueError, match=r"bias is on cpu but x is on cuda"):
        ops.noise_bias_act(x, bias=torch.randn(3))


def test_fused_rejects_unsupported_dtype_and_auto_falls_back():
    x = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"support float32 and float64, got torch.bfloat16"):
        ops.noise_bias_act(x, impl="fused")
    torch.testing.assert_close(ops.noise_bias_act(x), reference.noise_bias_act(x))


# ---- Large shapes on CUDA (run by benchmarks/gpu_check.sh; the sanitizer runs their small cases above).
# Indexing past 2^31 elements, grids at their largest, wide rows: what no small case reaches. Each is
# checked against the reference slice by slice, so the reference's own temporaries stay small.

def _assert_close_by_sample(fused, reference_of_sample, tol):
    for i in range(fused.shape[0]):
        torch.testing.assert_close(fused[i:i + 1], reference_of_sample(i), **tol)


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
def test_large_cuda_noise_bias_act_past_2_31_elements():
    """[64, 32, 1024, 1024] fp32 (2^31 elements, 8.6 GB): forward and the data gradient."""
    n, c, h = 64, 32, 1024
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, c, h, h, device="cuda", generator=g)
    noise = torch.randn(n, 1, h, h, device="cuda", generator=g)
    strength, bias = torch.tensor(0.3, device="cuda"), torch.randn(c, device="cuda", generator=g)
    demod = torch.rand(n, c, device="cuda", generator=g) + 0.5
    x.requires_grad_(True)
    y = ops.noise_bias_act(x, noise, strength, bias, demod=demod, clamp=256.0, impl="fused")
    with torch.no_grad():
        _assert_close_by_sample(y, lambda i: reference.noise_bias_act(
            x[i:i + 1], noise[i:i + 1], strength, bias, demod=demod[i:i + 1], clamp=256.0), ELEMENTWISE_TOL)
    grad_out = y.detach()  # any gradient will do; reusing y's memory keeps the peak at ~4 x 8.6 GB
    del y
    (grad_x,) = torch.autograd.grad(ops.noise_bias_act(x, noise, strength, bias, demod=demod, clamp=256.0,
                                                       impl="fused"), [x], grad_out)
    for i in (0, n // 2, n - 1):  # the first, middle and last samples: past 2^31 elements in the last
        xi = x[i:i + 1].detach().requires_grad_(True)
        yi = reference.noise_bias_act(xi, noise[i:i + 1], strength, bias, demod=demod[i:i + 1], clamp=256.0)
        (ref,) = torch.autograd.grad(yi, [xi], grad_out[i:i + 1])
        torch.testing.assert_close(grad_x[i:i + 1], ref, **ELEMENTWISE_TOL)


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
@pytest.mark.parametrize("conv_dtype", [None, torch.bfloat16])
def test_large_cuda_implicit_gemm_at_2_26_pixels(monkeypatch, conv_dtype):
    """M = N * H * W = 2^26 output pixels (64 restarts at 1024^2): the implicit-GEMM kernels' largest grid,
    forward and data gradient, against cuDNN on the same inputs."""
    if conv_dtype is not None and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 tensor cores need compute capability 8.0 or newer")
    x, weight, styles = make_modconv_inputs(64, 4, 4, 1024, 3, "cuda")
    results = {}
    for backend in ("igemm", "cudnn"):
        monkeypatch.setenv("PULSE_EXT_CUDA_CONV", backend)
        xi, si = leaves(x, styles)
        y = ops.modulated_conv2d(xi, weight, si, conv_dtype=conv_dtype, impl="fused")
        results[backend] = (y.detach(), *torch.autograd.grad(y, [xi, si], torch.ones_like(y)))
        del y, xi, si
    for ours, theirs in zip(results["igemm"], results["cudnn"]):
        if conv_dtype is None:
            torch.testing.assert_close(ours, theirs, **CONV_TOL)
        else:
            assert _relative_max_diff(ours, theirs) < 2e-2


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
@pytest.mark.parametrize("backend, conv_dtype", [("cudnn", None), ("igemm", None), ("igemm", torch.bfloat16)])
def test_large_cuda_512_channels_at_4x4_with_64_restarts(monkeypatch, backend, conv_dtype):
    """config-f's first layers: 512 x 512 channels at 4x4 (K = 4608, many K steps, few pixels), 64 restarts."""
    if conv_dtype is not None and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 tensor cores need compute capability 8.0 or newer")
    monkeypatch.setenv("PULSE_EXT_CUDA_CONV", backend)
    x, weight, styles = make_modconv_inputs(64, 512, 512, 4, 3, "cuda")
    if conv_dtype is None:
        assert_modconv_matches_reference(x, weight, styles, True, 1)
        assert_modconv_matches_reference(x, weight, styles, True, 2)
        return
    y = ops.modulated_conv2d(x, weight, styles, conv_dtype=conv_dtype, impl="fused")
    assert _relative_max_diff(y, ops.modulated_conv2d(x, weight, styles, conv_dtype=conv_dtype,
                                                      impl="reference")) < 2e-2


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
def test_large_cuda_area_downscale_loss_wide_rows():
    """One block holds a row of column sums in shared memory: W = 12,288 fp32 (48 KB, which with the
    kernel's static shared memory used to fail at launch) runs, and a width past the device's limit is
    refused with a message naming the width, not a launch failure."""
    img = torch.rand(1, 1, 2, 12288, device="cuda")
    target = torch.rand(1, 1, 1, 3072, device="cuda")
    for fused, ref in zip(ops.area_downscale_loss(img, target, impl="fused"),
                          ops.area_downscale_loss(img, target, impl="reference")):
        torch.testing.assert_close(fused, ref, **ELEMENTWISE_TOL)
    too_wide = torch.rand(1, 1, 1, 1 << 16, device="cuda", dtype=torch.float64)  # 512 KB of column sums
    with pytest.raises(RuntimeError, match=r"image width of 65536 \(8-byte elements\) needs 524288 bytes"):
        ops.area_downscale_loss(too_wide, torch.rand(1, 1, 1, 1 << 14, device="cuda", dtype=torch.float64),
                                impl="fused")


@pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=CUDA_SKIP_REASON or "")
@pytest.mark.skipif(CUDA_SKIP_REASON is None and torch.cuda.get_device_capability()[0] < 8,
                    reason="bf16 tensor cores need compute capability 8.0 or newer")
def test_cuda_bf16_weight_copy_follows_in_place_changes(monkeypatch):
    """The tensor-core kernel's bf16 weight copy is cached per weight version: changing the weight in
    place (as an optimizer step or load_state_dict does) must give the new weight's result, forward and
    data gradient."""
    monkeypatch.setenv("PULSE_EXT_CUDA_CONV", "igemm")
    x, weight, styles = make_modconv_inputs(2, 16, 8, 8, 3, "cuda")
    def run():
        xi = x.clone().requires_grad_(True)
        y = ops.modulated_conv2d(xi, weight, styles, conv_dtype=torch.bfloat16, impl="fused")
        return y.detach(), torch.autograd.grad(y, [xi], torch.ones_like(y))[0]
    def expected():
        xi = x.clone().requires_grad_(True)
        y = ops.modulated_conv2d(xi, weight, styles, conv_dtype=torch.bfloat16, impl="reference")
        return y.detach(), torch.autograd.grad(y, [xi], torch.ones_like(y))[0]
    first = run()
    assert all(_relative_max_diff(a, b) < 2e-2 for a, b in zip(first, expected()))
    with torch.no_grad():
        weight.mul_(-2.0).add_(0.5)
    second = run()
    assert all(_relative_max_diff(a, b) < 2e-2 for a, b in zip(second, expected()))
    assert not torch.allclose(first[0], second[0])

"""Shared fixtures: the devices every op test runs on (CUDA ones skipped, with the reason, without a GPU)."""
import pytest
import torch

from pulse_ext import _extension


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if not _extension.compiled_with_cuda():
        return "pulse_ext was built without CUDA kernels"
    return None


CUDA_SKIP_REASON = _cuda_skip_reason()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(CUDA_SKIP_REASON is not None,
                                                               reason=CUDA_SKIP_REASON or ""))]

@pytest.fixture(autouse=True, scope="session")
def exact_fp32_on_cuda():
    """Compare fp32 results as fp32. torch lets cuDNN convolutions use TF32 by default, which rounds
    operands to 10 mantissa bits (~1e-3 relative), far outside the 1e-4 the op tests hold fp32 to; the
    reduced-precision paths (bf16) are tested on their own, with their own tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


requires_extension = pytest.mark.skipif(not _extension.is_loaded(),
                                        reason=f"compiled extension not built: {_extension.LOAD_ERROR}")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread: on 2-core machines shared with other jobs, OpenMP
    spin-waiting collapses multi-threaded throughput."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_search_generator(resolution=16, seed=0, dtype=torch.float32):
    """A small random StyleGAN2 (z = w = 32, 2 mapping layers, <= 32 channels) for search tests."""
    from pulse_ext.stylegan2 import Generator

    torch.manual_seed(seed)
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32))
    with torch.no_grad():  # NVIDIA initialises noise_strength to 0; give the noise maps something to do
        for module in G.modules():
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.1)
    return G.to(dtype)


def reachable_targets(G, count=1, seed=5, factor=4):
    """Inputs PULSE can match exactly: ``count`` samples of G (z drawn from one generator seeded
    ``seed``, constant noise) mapped to [0, 1] and area-downscaled by ``factor``.
    Returns [count, 3, R/factor, R/factor] float32 on the CPU."""
    import torch.nn.functional as F

    with torch.no_grad():
        z = torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed))
        img = ((G(z, noise_mode="const") + 1) / 2).clamp(0, 1)
    return F.avg_pool2d(img, factor)


def save_png(image, path):
    """Write a [3, H, W] tensor in [0, 1] as an 8-bit RGB PNG."""
    from PIL import Image

    Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(path)

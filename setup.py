"""Builds pulse_ext and its compiled ops pulse_ext._C.

CPU kernels always; CUDA kernels too when torch is a CUDA build and nvcc is found (set
PULSE_EXT_CPU_ONLY=1 to skip them). Install with `pip install --no-build-isolation .` so the
extension is compiled against the torch you run (an isolated build may pick another torch).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

# Facts of machines without a GPU (see docs/building.md): a wrapper nvcc in /usr/local/bin makes
# torch guess CUDA_HOME=/usr/local (then -lcudart is not found), and with no GPU and no arch list
# torch's arch detection fails. Both defaults must be set before torch.utils.cpp_extension is imported.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    if os.environ.get("PULSE_EXT_CPU_ONLY", "0") not in ("", "0"):
        return False
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    return torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)


def extension():
    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # at::parallel_for in our kernels runs on OpenMP threads only when compiled with it. Apple clang has
    # no -fopenmp (it rejects the flag), so on macOS the kernels build without it and run serially.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx_flags = ["-O3", *openmp]  # the C++ standard is whatever this torch requires
    if want_cuda():
        return CUDAExtension(
            "pulse_ext._C",
            sources + rel("csrc/cuda/*.cu"),
            define_macros=[("PULSE_EXT_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=openmp,
        )
    return CppExtension("pulse_ext._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp)


setup(
    name="pulse_ext",
    version="0.1.0",
    description="PULSE face super-resolution on StyleGAN2 with fused C++/CUDA PyTorch ops",
    packages=find_packages(include=["pulse_ext", "pulse_ext.*"]),
    package_data={"pulse_ext": ["weights/*.safetensors", "weights/*.md", "weights/*.json", "demo/static/*"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "pillow", "safetensors", "tqdm"],
    extras_require={
        # matplotlib: benchmarks/plot_e2e.py and its test; selenium: the demo's browser tests (with Debian's
        # chromium + chromium-driver; 4.40 is the newest whose dependencies the registry here serves)
        "test": ["pytest", "matplotlib", "selenium==4.40.0"],
        # face alignment (pulse-ext align, upscale --align): dlib and its 68-point landmark model
        "align": ["dlib-bin==20.0.1.post1", "face-recognition-models==0.3.0"],
    },
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    entry_points={"console_scripts": ["pulse-ext=pulse_ext.cli:run"]},
    zip_safe=False,
)

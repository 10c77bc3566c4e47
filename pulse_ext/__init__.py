"""pulse_ext: PULSE face super-resolution on a StyleGAN2 generator with fused C++/CUDA ops."""
from pulse_ext import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]

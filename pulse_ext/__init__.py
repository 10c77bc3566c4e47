"""pulse_ext: PULSE face super-resolution on a StyleGAN2 generator with fused C++/CUDA ops.

    import pulse_ext
    face = pulse_ext.upscale(pil_image)                      # PIL in, PIL out (embedded default generator)
    result = pulse_ext.upscale(img, restarts=16, num_outputs=4, return_result=True)
    G = pulse_ext.load_generator("stylegan2-ffhq-1024x1024.pkl")   # NVIDIA .pkl, rosinality .pt, .safetensors

Layers: ``pulse_ext.ops`` (fused ops + reference twins), ``pulse_ext.stylegan2`` (the generator),
``pulse_ext.checkpoints`` (safe loaders), ``pulse_ext.pulse`` (the batched search), ``upscale``.
Note: ``pulse_ext.upscale`` is the function; import the module's other names with
``from pulse_ext.upscale import UpscaleResult``.
"""
from pulse_ext import ops
from pulse_ext.checkpoints import load_generator, save_generator
from pulse_ext.pulse import PULSE
from pulse_ext.stylegan2 import Generator
from pulse_ext.upscale import PulseConvergenceWarning, PulseMemoryWarning, UpscaleResult, upscale

__version__ = "0.1.0"

__all__ = ["Generator", "PULSE", "PulseConvergenceWarning", "PulseMemoryWarning", "UpscaleResult", "load_generator",
           "ops", "save_generator", "upscale", "__version__"]

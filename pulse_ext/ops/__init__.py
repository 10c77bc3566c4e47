"""The fused ops of pulse_ext, each with a plain-PyTorch reference twin (``pulse_ext.ops.reference``).

Every public op takes ``impl="auto" | "fused" | "reference"``; see each function for shapes.
"""
from pulse_ext.ops import reference
from pulse_ext.ops.area_downscale_loss import area_downscale_loss
from pulse_ext.ops.modulated_conv import (demodulation_coefficients, demodulation_weight_sums, modulated_conv2d,
                                         upsample2d)
from pulse_ext.ops.noise_bias_act import noise_bias_act

__all__ = ["area_downscale_loss", "demodulation_coefficients", "demodulation_weight_sums", "modulated_conv2d",
           "noise_bias_act", "reference", "upsample2d"]

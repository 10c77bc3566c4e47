"""StyleGAN2 generator (NVIDIA stylegan2-ada-pytorch semantics and state-dict names) on pulse_ext's fused ops."""
from pulse_ext.stylegan2.networks import (Conv2dLayer, FullyConnectedLayer, Generator, MappingNetwork, SynthesisBlock,
                                          SynthesisLayer, SynthesisNetwork, ToRGBLayer, normalize_2nd_moment)

__all__ = ["Conv2dLayer", "FullyConnectedLayer", "Generator", "MappingNetwork", "SynthesisBlock", "SynthesisLayer",
           "SynthesisNetwork", "ToRGBLayer", "normalize_2nd_moment"]

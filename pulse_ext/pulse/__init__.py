"""PULSE latent-space search on a StyleGAN2 generator, batched over inputs and restarts.

``PULSE(generator, **options).search(target [B, C, h, w] in [0, 1], restarts=R, seed=s)`` returns a
``SearchResult`` with each restart's best image, latent, L2/L1/loss and convergence flag. See
docs/pulse.md for how the search works and how it differs from the original code.
"""
from pulse_ext.pulse.latent import (LatentStats, fit_latent_stats, latent_to_w, project_to_sphere, restart_seed,
                                    sphere_radius)
from pulse_ext.pulse.losses import (DOWNSCALERS, LOSS_TERMS, LossTerm, area_resample, area_weights, bicubic_downscale,
                                    bicubic_kernel, downscale, downscale_losses, geocross, parse_loss, per_restart_loss,
                                    target_size_problem)
from pulse_ext.pulse.optim import LR_SCHEDULES, OPTIMIZERS, SphericalOptimizer, lr_factor
from pulse_ext.pulse.search import NOISE_TYPES, PULSE, ConvergedQuota, SearchResult, pulse_search

__all__ = ["DOWNSCALERS", "LOSS_TERMS", "LR_SCHEDULES", "LatentStats", "LossTerm", "NOISE_TYPES", "OPTIMIZERS",
           "ConvergedQuota", "PULSE", "SearchResult", "SphericalOptimizer", "area_resample", "area_weights", "bicubic_downscale",
           "bicubic_kernel", "downscale", "downscale_losses", "fit_latent_stats", "geocross", "latent_to_w",
           "lr_factor", "parse_loss", "per_restart_loss", "project_to_sphere", "pulse_search", "restart_seed",
           "sphere_radius", "target_size_problem"]

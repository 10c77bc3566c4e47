"""The spherical optimiser of PULSE and its learning-rate schedules.

``SphericalOptimizer`` runs an element-wise optimiser (Adam by default) on batched parameters whose
dim 0 is the restart, then puts every slice [i, j, ...] back on the sphere it started on, as the
original ``SphericalOptimizer`` does. Because the update is element-wise and the step count is shared
(all restarts start together), each restart evolves exactly as it would alone. Two additions for the
batched search: a per-restart ``active`` mask (frozen restarts do not move) and ``keep(index)``,
which drops restarts from the parameters and the optimiser state.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from pulse_ext.pulse.latent import project_to_sphere, sphere_radius

OPTIMIZERS = ("adam", "adamax", "sgd", "sgdm")
LR_SCHEDULES = ("fixed", "linear1cycle", "linear1cycledrop")


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``steps``, as the original's LambdaLR lambdas.

    fixed: 1. linear1cycle: (9 * (1 - |step/steps - 1/2| * 2) + 1) / 10, from 0.1 up to 1 at the
    middle and back. linear1cycledrop: the same cycle over the first 90 % of the steps, then a linear
    drop from 0.1 to 0.001 over the last 10 %.
    """
    if schedule == "fixed":
        return 1.0
    if schedule == "linear1cycle":
        return (9 * (1 - abs(step / steps - 1 / 2) * 2) + 1) / 10
    if schedule == "linear1cycledrop":
        if step < 0.9 * steps:
            return (9 * (1 - abs(step / (0.9 * steps) - 1 / 2) * 2) + 1) / 10
        return 1 / 10 + (step - 0.9 * steps) / (0.1 * steps) * (1 / 1000 - 1 / 10)
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


class SphericalOptimizer:
    """Projected element-wise optimiser over batched tensors [N, ...] (N = restarts).

    Args:
        params: leaf tensors with requires_grad, each [N, ...] with at least 3 dims; each slice
            [i, j] (all remaining dims) is kept on its initial sphere.
        name: "adam" | "adamax" | "sgd" | "sgdm" (momentum 0.9), with torch.optim's default
            hyper-parameters (betas (0.9, 0.999), eps 1e-8), as the original's choices.
        lr: base learning rate; ``step(lr_scale=...)`` multiplies it.
        projections: optional, one per parameter: None (the sphere, as above) or project(tensor, radius)
            -> tensor, another constraint set (the intermediate-layer search's l1 ball), with
        radii: optional, one per parameter: None (the sphere's radius, measured at the start) or that
            projection's radius tensor, whose dim 0 is the restart (sliced by ``keep`` like the rest).
    """

    def __init__(self, params: List[torch.Tensor], name: str = "adam", lr: float = 0.4,
                 betas=(0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9,
                 projections: Optional[List[Optional[Callable]]] = None,
                 radii: Optional[List[Optional[torch.Tensor]]] = None):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
        for p in params:
            if p.dim() < 3:
                raise ValueError(f"SphericalOptimizer: parameters must be [N, K, ...] with >= 3 dims, got {list(p.shape)}")
        self.params = list(params)
        self.name = name
        self.lr = float(lr)
        self.betas = betas
        self.eps = eps
        self.momentum = momentum
        self.num_steps = 0
        self.projections = list(projections) if projections is not None else [None] * len(self.params)
        radii = list(radii) if radii is not None else [None] * len(self.params)
        if len(self.projections) != len(self.params) or len(radii) != len(self.params):
            raise ValueError("SphericalOptimizer: projections and radii need one entry per parameter")
        with torch.no_grad():
            self.radii = [sphere_radius(p) if r is None else r for p, r in zip(self.params, radii)]
        self.state: List[Dict[str, torch.Tensor]] = [{} for _ in self.params]

    def _direction(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor],
                   t: Union[int, torch.Tensor]) -> torch.Tensor:
        """The update d such that p <- p - lr * d (torch.optim's formulas, no weight decay) at step t
        (1-based; an int, or a 0-dim device tensor in a CUDA graph)."""
        if self.name == "sgd":
            return g
        if self.name == "sgdm":
            if "momentum" not in state:
                state["momentum"] = g.clone()
            else:
                state["momentum"].mul_(self.momentum).add_(g)
            return state["momentum"]
        if self.name == "adam":
            return self._adam_directions([p], [g], [state], t)[0]
        beta1, beta2 = self.betas
        m, s = self._moments(p, state)
        m.lerp_(g, 1 - beta1)
        # adamax: infinity-norm second moment
        torch.maximum(s.mul_(beta2), g.abs().add_(self.eps), out=s)
        return m / s / (1 - beta1 ** t)

    @torch.no_grad()
    def step(self, lr_scale: Union[float, torch.Tensor] = 1.0, active: Optional[torch.Tensor] = None,
             t: Optional[torch.Tensor] = None) -> None:
        """One optimiser step then re-projection; rows where ``active`` [N] is False are left unchanged.

        Frozen rows still update their optimiser state (it is never used again: a frozen restart
        stays frozen), which keeps the step free of data-dependent control flow. For capture in a CUDA
        graph, ``lr_scale`` and ``t`` (the 1-based step count) are 0-dim device tensors whose values
        the caller sets before each replay, and the caller counts ``num_steps``; by default the step
        counts itself. The optimiser state must exist before capture (one step taken).
        """
        if t is None:
            self.num_steps += 1
            t = self.num_steps
        lr = self.lr * lr_scale
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if self.name == "adam":  # all parameters' directions in one multi-tensor call per formula step
            directions = self._adam_directions([self.params[i] for i in live], [self.params[i].grad for i in live],
                                               [self.state[i] for i in live], t)
        else:
            directions = [self._direction(self.params[i], self.params[i].grad, self.state[i], t) for i in live]
        candidates = [self.params[i] - lr * d for i, d in zip(live, directions)]
        for i, candidate in zip(live, candidates):
            p, radius, project = self.params[i], self.radii[i], self.projections[i]
            new = (project or project_to_sphere)(candidate, radius)
            if active is None:
                p.copy_(new)
            else:
                p.copy_(torch.where(active.view(-1, *([1] * (p.dim() - 1))), new, p))

    @staticmethod
    def _moments(p: torch.Tensor, state: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Adam's / Adamax's first and second moment of p (zeros, shaped like p, on the first step)."""
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
            state["second"] = torch.zeros_like(p)
        return state["exp_avg"], state["second"]

    def _adam_directions(self, params: List[torch.Tensor], grads: List[torch.Tensor],
                         states: List[Dict[str, torch.Tensor]], t: Union[int, torch.Tensor]) -> List[torch.Tensor]:
        """Adam's update directions (torch.optim's formulas, no weight decay) for several parameters at
        step t, as multi-tensor ops (torch._foreach_*): one call per formula step for all of them (a
        search steps the latent and five noise maps), the same element-wise operations as one op per
        tensor. t: an int, or a 0-dim device tensor in a CUDA graph."""
        beta1, beta2 = self.betas
        moments = [self._moments(p, state) for p, state in zip(params, states)]
        ms = [m for m, _ in moments]
        ss = [s for _, s in moments]
        torch._foreach_lerp_(ms, grads, 1 - beta1)
        torch._foreach_mul_(ss, beta2)
        torch._foreach_addcmul_(ss, grads, grads, value=1 - beta2)
        correction2 = 1 - beta2 ** t
        correction2 = correction2.sqrt() if isinstance(correction2, torch.Tensor) else math.sqrt(correction2)
        denoms = torch._foreach_sqrt(ss)
        torch._foreach_div_(denoms, correction2)
        torch._foreach_add_(denoms, self.eps)
        directions = torch._foreach_div(ms, denoms)
        torch._foreach_div_(directions, 1 - beta1 ** t)
        return directions

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def keep(self, index: torch.Tensor) -> List[torch.Tensor]:
        """Keep only restarts ``index`` (a LongTensor into dim 0): new leaf parameters are returned
        (and held); radii and optimiser state are sliced alike."""
        self.params = [p.detach().index_select(0, index).requires_grad_(p.requires_grad) for p in self.params]
        self.radii = [r.index_select(0, index) for r in self.radii]
        self.state = [{k: v.index_select(0, index) for k, v in s.items()} for s in self.state]
        return self.params


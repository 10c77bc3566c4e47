"""A PULSE search step captured in a CUDA graph and replayed (``PULSE(cuda_graph=True)``).

A step of the 64-px default generator is a few hundred small kernels (forward, backward, loss,
best-so-far bookkeeping, optimiser); on a GPU their launches cost more than their work. A CUDA graph
records the step's kernels once and replays them with one launch per step.

What the captured step (``PULSE._run``'s ``one_step``) obeys for this: it updates every tensor it keeps
in place; the values that change from step to step -- the step index, the learning-rate factor and
the optimiser's step count -- come in as 0-dim device tensors written before each replay; it makes no
host synchronisation. PyTorch asks for a few eager iterations on a side stream before autograd is
captured, and the optimiser's state must exist before capture, so after every (re)capture point
``warmup_steps`` steps run eagerly; they are search steps like any other. Compaction (rows that
converged leave the batch) replaces the batch's tensors: the caller then calls ``invalidate()`` and
the step is captured again; a capture also empties PyTorch's allocator cache, so the search compacts
less often with a graph (see ``PULSE._run``).
"""
from __future__ import annotations

from typing import Callable

import torch


def check_device(device) -> None:
    """cuda_graph=True needs the search on a CUDA device: say so before the search starts."""
    if torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graph=True needs a generator on a CUDA device, got one on {device}")


class GraphedStep:
    """Runs ``step_fn(step, lr_scale, t=None)`` eagerly for the first steps, then as a CUDA graph.

    step_fn: the search step (see the module docstring); called with Python numbers eagerly and with
        0-dim device tensors (step: int64; lr_scale, t: float64) while being captured.
    optimizer: the ``SphericalOptimizer`` the step drives; this class counts its ``num_steps`` for
        replayed steps.
    The CUDA work is in ``_eager``, ``_capture`` and ``_replay``; the rest (when to warm up, capture
    and replay, and the values a replay is given) is device-independent.
    """

    def __init__(self, step_fn: Callable, optimizer, device: torch.device, warmup_steps: int = 2):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (the optimiser state must exist), got {warmup_steps}")
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.device = torch.device(device)
        self.warmup_steps = warmup_steps
        # float64 whatever the parameters' dtype: Adam's bias corrections 1 - beta^t then come out as the
        # eager step's host arithmetic does (in float32, 0.999^t would be off by ~1e-5).
        self.step_index = torch.zeros((), dtype=torch.long, device=self.device)
        self.lr_scale = torch.zeros((), dtype=torch.float64, device=self.device)
        self.t = torch.zeros((), dtype=torch.float64, device=self.device)
        self.capture_stream = None
        self.graph = None
        self.eager_left = warmup_steps
        self.captures = 0
        self.replays = 0

    def invalidate(self) -> None:
        """The step's tensors were replaced: warm up and capture again before the next replay."""
        self.graph = None
        self.eager_left = self.warmup_steps

    def __call__(self, step: int, lr_scale: float) -> None:
        if self.graph is None and self.eager_left > 0:
            self.eager_left -= 1
            self._eager(step, lr_scale)
            return
        if self.graph is None:
            self.graph = self._capture()
            self.captures += 1
        self.optimizer.num_steps += 1
        self.step_index.fill_(step)
        self.lr_scale.fill_(lr_scale)
        self.t.fill_(self.optimizer.num_steps)
        self._replay()
        self.replays += 1

    def _eager(self, step: int, lr_scale: float) -> None:
        """One step as it is, on a side stream (PyTorch's warm-up before capturing autograd)."""
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self.step_fn(step, lr_scale)
            current.wait_stream(side)

    def _capture(self):
        """Records the step, with the 0-dim tensors as its arguments; runs none of its kernels."""
        with torch.cuda.device(self.device):
            if self.capture_stream is None:
                self.capture_stream = torch.cuda.Stream(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.capture_stream):
                self.step_fn(self.step_index, self.lr_scale, self.t)
        return graph

    def _replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()

"""The batched PULSE search: B inputs x R restarts optimised as one batch of N = B * R generator samples.

Row n of the batch is restart r = n % R of input b = n // R. Every row has its own latent, noise,
loss, convergence flag and best-so-far image; the loss that is differentiated is the SUM of the
per-row losses, so each row's gradient (and, the optimiser being element-wise, its whole trajectory)
is the one it would have alone. A row whose L2 drops below eps is frozen; every ``sync_every`` steps
the host reads the flags, stops when all rows converged and (``drop_converged``) removes converged
rows from the batch. With ``enough_converged=k`` an input's remaining restarts also stop at the first of
those reads at which k of its restarts have converged (``ConvergedQuota``). Nothing else in a step waits
for the device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from pulse_ext.allocator import freed_memory_kept
from pulse_ext.pulse.latent import LatentStats, fit_latent_stats, latent_to_w, restart_seed
from pulse_ext.pulse.losses import DOWNSCALERS, downscale_losses, parse_loss, per_restart_loss, target_size_problem
from pulse_ext.pulse.optim import LR_SCHEDULES, OPTIMIZERS, SphericalOptimizer, lr_factor

NOISE_TYPES = ("zero", "fixed", "trainable")
DEFAULT_INTERMEDIATE_RADIUS = 0.1


@dataclass
class SearchResult:
    """What ``PULSE.search`` found, per input b and restart r (tensors on the search device).

    images: [B, R, C, H, W], each restart's best image (its converged image if it converged, else its
        lowest-loss one), as (G(w) + 1) / 2 *unclamped*: the losses are computed on it, as in the
        original; clamp to [0, 1] for display. latents: [B, R, L, D] the latent that gave it (L = num_ws,
        or 1 with tile_latent). l2, l1, loss: [B, R] at that image (l2/l1 unclamped, loss as optimised).
    converged: [B, R] bool (l2 < eps). converged_step: [B, R] the 0-based step, -1 if never. With
        ``enough_converged``, restarts stopped by the rule are not converged; in a search split into parts,
        a restart its part saw converge after the input's stop point is marked so too, although its l2
        is below eps (``ConvergedQuota.apply``).
    seeds: [B][R] the restart seeds. steps_run: steps executed (fewer than ``steps`` when all converged,
        or with ``enough_converged`` when every input had enough).
    seconds: wall time of the search loop; stats_seconds: fitting the mapping statistics (0 if cached).
    """
    images: torch.Tensor
    latents: torch.Tensor
    l2: torch.Tensor
    l1: torch.Tensor
    loss: torch.Tensor
    converged: torch.Tensor
    converged_step: torch.Tensor
    seeds: List[List[int]]
    steps_run: int
    seconds: float
    stats_seconds: float = 0.0
    timings: Dict[str, float] = field(default_factory=dict)
    noises: Optional[List[torch.Tensor]] = None  # trainable noise maps at the best image (progressive search)
    extras: Optional[List[torch.Tensor]] = None  # extra per-row parameters at the best image (intermediate search)

    def ranking(self, image_index: int = 0) -> List[int]:
        """Restart indices of input ``image_index``: converged ones first, each group by increasing loss."""
        loss = self.loss[image_index].detach().double().cpu()
        converged = self.converged[image_index].cpu()
        order = sorted(range(loss.numel()), key=lambda r: (not bool(converged[r]), float(loss[r])))
        return order

    @property
    def best_index(self) -> List[int]:
        """The best restart of each input (first of ``ranking``)."""
        return [self.ranking(b)[0] for b in range(self.loss.shape[0])]


@dataclass
class SearchProgress:
    """What a ``PULSE.search(callback=...)`` callback receives every ``callback_every`` steps.

    step: steps done so far (1-based). final: True on the last call of the search (the step that
    finished it). images [B, R, C, H, W], l2 / loss [B, R], converged [B, R]: each restart's best so far,
    as ``SearchResult`` (a fresh copy on the search device; reading it on the host is the only
    synchronisation the callback causes). ``ranking`` / ``best_index`` as ``SearchResult``.
    """
    step: int
    final: bool
    images: torch.Tensor
    l2: torch.Tensor
    loss: torch.Tensor
    converged: torch.Tensor

    ranking = SearchResult.ranking
    best_index = SearchResult.best_index


@dataclass(frozen=True)
class ConvergedQuota:
    """The ``enough_converged`` rule: an input's search ends at the first host read (every ``sync_every``
    steps, and after the last of ``steps``) that sees ``count`` of its restarts converged.

    A search split into parts along the restarts (``batching.search_split``) applies the same rule to the
    merged result with ``apply``: the restarts converged by each input's stop point are exactly those an
    unsplit search reports, so the ranked candidates it returns are the same."""
    count: int
    sync_every: int
    steps: int

    def seen_at(self, converged_step: torch.Tensor) -> torch.Tensor:
        """Steps run when a restart converged at (0-based) ``converged_step`` is seen; -1 stays -1."""
        seen = torch.clamp((converged_step // self.sync_every + 1) * self.sync_every, max=self.steps)
        return torch.where(converged_step >= 0, seen, converged_step)

    def stop_points(self, converged_step: torch.Tensor) -> List[Optional[int]]:
        """[B, R] converged steps -> per input the steps run at which its search stops by the rule,
        None for an input with fewer than ``count`` converged restarts."""
        return self._stop_points(self.seen_at(converged_step.cpu()))

    def _stop_points(self, seen: torch.Tensor) -> List[Optional[int]]:
        points = []
        for row in seen:
            done = sorted(int(v) for v in row if v >= 0)
            points.append(done[self.count - 1] if len(done) >= self.count else None)
        return points

    def apply(self, result: "SearchResult") -> "SearchResult":
        """Mark restarts seen converged after their input's stop point as not converged (in place), as an
        unsplit search would have stopped them first. Their images and losses stay the best of the
        (longer) part they ran in; they rank after every converged restart."""
        seen = self.seen_at(result.converged_step.cpu())
        for b, point in enumerate(self._stop_points(seen)):
            if point is None:
                continue
            late = (seen[b] > point).to(result.converged.device)
            result.converged[b] &= ~late
            result.converged_step[b] = torch.where(late, torch.full_like(result.converged_step[b], -1),
                                                   result.converged_step[b])
        return result


class PULSE:
    """PULSE (Menon et al., CVPR 2020) on a StyleGAN2 ``Generator``, batched over inputs and restarts.

    Args (defaults are the original's, ``run.py``):
        generator: a ``pulse_ext.stylegan2.Generator`` (or anything with its mapping/synthesis surface).
            Its weights are frozen (requires_grad off) during a search and restored after.
        loss: loss string, e.g. "100*L2+0.05*GEOCROSS" (see ``losses.parse_loss``).
        eps: a restart converges when its (unclamped) L2 < eps; L2/L1 terms are clamped below at eps.
        steps, learning_rate, optimizer ("adam" | "adamax" | "sgd" | "sgdm"),
        lr_schedule ("fixed" | "linear1cycle" | "linear1cycledrop").
        noise_type: "zero" | "fixed" | "trainable" (the first ``num_trainable_noise_layers`` noise
            layers are optimised, the rest fixed random). bad_noise_layers: indices into
            ``generator.synthesis.noise_shapes()`` (negative from the end; or the original's dotted
            string "a.b") that are always zero; default (-1,), the last layer, which is the role the
            original's "17" plays in its 18-layer StyleGAN.
        tile_latent: one latent row shared by all num_ws inputs.
        downscale: "area" (block means, fused, for factors that divide; exact area averaging for any other
            size) | "bicubic" (the original's filter, plain PyTorch, integer factors).
        sync_every: read convergence flags back every this many steps. drop_converged: remove
            converged restarts from the batch at those points.
        enough_converged: None (default: every restart runs until it converges or the steps end) or k >= 1:
            at those reads, an input with k converged restarts stops its other restarts (they keep their
            best so far and count as not converged), and the search ends once every input has k or
            the steps end. Returns the same top-k candidates as searching all restarts would have
            converged by then, in a fraction of the time (the first restart usually converges long
            before the last; ``benchmarks/bench_convergence.py``). Plain searches only (not with
            search_resolution, precision "bf16" or intermediate_resolutions, whose later phases re-check
            convergence).
        latent_stats: a ``LatentStats`` (or dict with mean/std) to skip fitting; stats_samples: samples
            for the fit otherwise.
        impl: None, or "auto" | "fused" | "reference" for the loss op and (during the search) the generator.
        search_resolution: None (default) or a block resolution below the generator's: search with the
            synthesis network truncated there (its skip image), then render full resolution, re-check
            the L2 and refine for up to ``refine_steps`` steps (see ``pulse_ext.pulse.progressive``).
        precision: "fp32" (default) or "bf16": search with the generator's 3x3 convolutions in bfloat16
            (2-3x faster convolutions on CPUs with AVX512-BF16/AMX and tensor-core GPUs), then render,
            re-check and refine in the generator's dtype exactly as with ``search_resolution`` (the two
            combine). Results always describe the full-precision image.
        cuda_graph: on CUDA, capture a search step in a CUDA graph and replay it (one launch instead of
            hundreds of kernel launches per step; see ``pulse_ext.pulse.cuda_graph``). The step is
            captured again after each compaction (``drop_converged``; with a graph the batch is compacted
            only once a quarter of it has converged); the full-resolution refinement of a staged search
            runs without it. Results equal the eager loop's up to rounding.
        intermediate_resolutions: None (default) or block resolutions (e.g. (8, 16)): after the latent
            search, search the features entering each of these blocks in turn, within an l1 ball of
            ``intermediate_radius`` x their own l1 norm around what the blocks before made, with the
            later latents and noise, ``intermediate_steps`` steps each (ILO; ``pulse_ext.pulse.intermediate``).
            The images then come from features the latent alone does not reproduce; callbacks and the
            progress bar see each phase's steps from 1 again.
    """

    def __init__(self, generator, *, loss: str = "100*L2+0.05*GEOCROSS", eps: float = 2e-3, steps: int = 100,
                 learning_rate: float = 0.4, optimizer: str = "adam", lr_schedule: str = "linear1cycledrop",
                 noise_type: str = "trainable", num_trainable_noise_layers: int = 5,
                 bad_noise_layers: Union[Sequence[int], str] = (-1,), tile_latent: bool = False,
                 downscale: str = "area", sync_every: int = 5, drop_converged: bool = True,
                 latent_stats: Optional[Union[LatentStats, dict]] = None, stats_samples: int = 100_000,
                 impl: Optional[str] = None, search_resolution: Optional[int] = None, refine_steps: int = 10,
                 precision: str = "fp32", cuda_graph: bool = False,
                 intermediate_resolutions: Optional[Sequence[int]] = None, intermediate_steps: int = 50,
                 intermediate_radius: float = DEFAULT_INTERMEDIATE_RADIUS, enough_converged: Optional[int] = None):
        self.generator = generator
        self.loss_terms = parse_loss(loss)
        self.loss = loss
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
        if downscale not in DOWNSCALERS:
            raise ValueError(f"downscale must be one of {DOWNSCALERS}, got {downscale!r}")
        if int(sync_every) < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        if int(num_trainable_noise_layers) < 0:
            raise ValueError(f"num_trainable_noise_layers must be >= 0, got {num_trainable_noise_layers}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.learning_rate = float(learning_rate)
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.noise_type = noise_type
        self.num_trainable_noise_layers = int(num_trainable_noise_layers)
        self.tile_latent = bool(tile_latent)
        self.downscale = downscale
        self.sync_every = int(sync_every)
        self.drop_converged = bool(drop_converged)
        self.stats_samples = int(stats_samples)
        self.impl = impl
        self.noise_shapes = list(generator.synthesis.noise_shapes())
        self.bad_noise_layers = self._parse_bad_layers(bad_noise_layers)
        if isinstance(latent_stats, dict):
            latent_stats = LatentStats(torch.as_tensor(latent_stats["mean"]), torch.as_tensor(latent_stats["std"]))
        self._stats = latent_stats
        from pulse_ext.pulse.progressive import PRECISIONS, check_search_resolution
        self.search_resolution = check_search_resolution(generator, search_resolution)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        if int(refine_steps) < 0:
            raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
        self.refine_steps = int(refine_steps)
        self.cuda_graph = bool(cuda_graph)
        from pulse_ext.pulse.intermediate import check_intermediate_resolutions
        self.intermediate_resolutions = check_intermediate_resolutions(generator, intermediate_resolutions)
        if int(intermediate_steps) < 1:
            raise ValueError(f"intermediate_steps must be >= 1, got {intermediate_steps}")
        if not 0 <= intermediate_radius < float("inf"):
            raise ValueError(f"intermediate_radius must be a finite number >= 0, got {intermediate_radius}")
        self.intermediate_steps = int(intermediate_steps)
        self.intermediate_radius = float(intermediate_radius)
        if enough_converged is not None:
            try:  # (NaN and infinity have no int: the same error as any other non-integer)
                whole = not isinstance(enough_converged, bool) and int(enough_converged) == enough_converged
            except (TypeError, ValueError, OverflowError):
                whole = False
            if not whole or enough_converged < 1:
                raise ValueError(f"enough_converged must be None or an integer >= 1, got {enough_converged!r}")
            if not self.plain:
                raise ValueError("enough_converged works with plain searches only, not with search_resolution, "
                                 "precision='bf16' or intermediate_resolutions (their later phases re-check "
                                 f"convergence); got search_resolution={self.search_resolution}, "
                                 f"precision={self.precision!r}, "
                                 f"intermediate_resolutions={self.intermediate_resolutions}")
        self.enough_converged = None if enough_converged is None else int(enough_converged)

    @property
    def plain(self) -> bool:
        """A single-phase search: no staged resolution, no bf16 phase, no intermediate-feature phases."""
        return self.search_resolution is None and self.precision == "fp32" and not self.intermediate_resolutions

    def quota(self) -> Optional[ConvergedQuota]:
        """The ``enough_converged`` rule of this searcher (None when every restart runs to the end)."""
        if self.enough_converged is None:
            return None
        return ConvergedQuota(self.enough_converged, self.sync_every, self.steps)

    def _parse_bad_layers(self, bad) -> List[int]:
        count = len(self.noise_shapes)
        if isinstance(bad, str):
            try:
                bad = [int(part) for part in bad.split(".") if part.strip()]
            except ValueError:
                raise ValueError(f"bad_noise_layers must be integers like '16' or '3.16', got {bad!r}") from None
        layers = []
        for index in bad:
            if not -count <= int(index) < count:
                raise ValueError(f"bad_noise_layers: index {index} is out of range for the generator's {count} "
                                 f"noise layers {[name for name, _ in self.noise_shapes]}")
            layers.append(int(index) % count)
        return sorted(set(layers))

    def layer_kinds(self) -> List[str]:
        """'zero' | 'fixed' | 'trainable' for each noise layer, in ``noise_shapes()`` order."""
        kinds = []
        for i in range(len(self.noise_shapes)):
            if self.noise_type == "zero" or i in self.bad_noise_layers:
                kinds.append("zero")
            elif self.noise_type == "trainable" and i < self.num_trainable_noise_layers:
                kinds.append("trainable")
            else:
                kinds.append("fixed")
        return kinds

    def latent_stats(self) -> LatentStats:
        """The mapping statistics (fitted on first use, cached per generator)."""
        param = next(self.generator.parameters())
        if self._stats is None:
            self._stats = fit_latent_stats(self.generator, self.stats_samples)
        return self._stats.to(device=param.device, dtype=param.dtype)

    def _init_rows(self, seeds: List[int], device, dtype):
        """Per-row initial latent and noise, each row from its own CPU generator (batch-independent)."""
        G = self.generator
        rows = 1 if self.tile_latent else G.num_ws
        kinds = self.layer_kinds()
        latents, noises = [], [[] for _ in kinds]
        for s in seeds:
            rng = torch.Generator().manual_seed(s)
            latents.append(torch.randn(rows, G.w_dim, generator=rng))
            for i, ((_, res), kind) in enumerate(zip(self.noise_shapes, kinds)):
                if kind != "zero":
                    noises[i].append(torch.randn(1, res, res, generator=rng))
        latent = torch.stack(latents).to(device=device, dtype=dtype)
        noise = []
        for (_, res), kind, maps in zip(self.noise_shapes, kinds, noises):
            if kind == "zero":
                noise.append(torch.zeros(1, 1, res, res, device=device, dtype=dtype))
            else:
                noise.append(torch.stack(maps).to(device=device, dtype=dtype))
        return latent, noise, kinds

    def search(self, target: torch.Tensor, restarts: int = 8, seed: int = 0,
               seeds: Optional[Sequence[Sequence[int]]] = None, progress: Union[bool, str] = False,
               callback: Optional[Callable[[SearchProgress], None]] = None, callback_every: int = 1,
               max_steps: Optional[int] = None) -> SearchResult:
        """Search for generator images whose downscaled version matches ``target``.

        Args:
            target: [B, C, h, w] (or [C, h, w]) in [0, 1], h and w at most the generator resolution (any
                size with downscale="area"; one integer factor for both sides with "bicubic").
            restarts: R, restarts per input.
            seed: derives every restart's seed (``latent.restart_seed(seed, b, r)``).
            seeds: explicit [B][R] restart seeds instead (a restart's trajectory depends only on its seed).
            progress: show a tqdm bar (updated at sync points) with the best L2 of each input; a string
                is used as the bar's label.
            callback: called as ``callback(SearchProgress)`` after every ``callback_every``-th step and
                after the last step (e.g. to record intermediate images). None (default) costs nothing:
                no copies and no host synchronisation are added to the loop.
            max_steps: end the search after this many steps at most (the learning-rate schedule still
                spans ``steps``, so a restart's trajectory is unchanged); plain searches only. Used to run
                the later parts of a split search no longer than the rule of ``enough_converged`` needs.
        """
        G = self.generator
        param = next(G.parameters())
        device, dtype = param.device, param.dtype
        if target.dim() == 3:
            target = target.unsqueeze(0)
        res = G.img_resolution
        if target.dim() != 4 or target.shape[1] != G.img_channels:
            raise ValueError(f"target must be [B, C, h, w] with C={G.img_channels}, got {list(target.shape)}")
        h, w = target.shape[-2:]
        problem = target_size_problem((res, res), (h, w), self.downscale)
        if problem:
            raise ValueError(f"target of size {w}x{h} (width x height): {problem}")
        num_images = target.shape[0]
        if seeds is None:
            if int(restarts) < 1:
                raise ValueError(f"restarts must be >= 1, got {restarts}")
            seeds = [[restart_seed(seed, b, r) for r in range(int(restarts))] for b in range(num_images)]
        seeds = [[int(s) for s in row] for row in seeds]
        if len(seeds) != num_images or len({len(row) for row in seeds}) != 1 or not seeds[0]:
            raise ValueError(f"seeds must be [B][R] with B={num_images} and R >= 1 the same for every input")
        num_restarts = len(seeds[0])
        n = num_images * num_restarts
        if int(callback_every) < 1:
            raise ValueError(f"callback_every must be >= 1, got {callback_every}")
        if max_steps is not None:
            if int(max_steps) < 1:
                raise ValueError(f"max_steps must be None or >= 1, got {max_steps}")
            if not self.plain:
                raise ValueError("max_steps works with plain searches only (no search_resolution, bf16 precision "
                                 "or intermediate_resolutions)")
        if self.cuda_graph:
            from pulse_ext.pulse import cuda_graph as graphs
            graphs.check_device(device)
        target = target.to(device=device, dtype=dtype)

        t0 = time.perf_counter()
        stats = self.latent_stats()
        stats_seconds = time.perf_counter() - t0

        saved_flags = [p.requires_grad for p in G.parameters()]
        saved_impl = getattr(G, "impl", None)
        # On the CPU, freed buffers stay in the process while the search runs (pulse_ext.allocator).
        with freed_memory_kept(device):
            try:
                G.requires_grad_(False)
                if self.impl is not None:
                    G.set_impl(self.impl)
                more = bool(self.intermediate_resolutions)  # phases after the latent search need its noise maps
                if self.search_resolution is not None or self.precision != "fp32":
                    from pulse_ext.pulse.progressive import staged_run
                    result = staged_run(self, target, seeds, n, num_images, num_restarts, stats, stats_seconds,
                                        device, dtype, progress, callback, int(callback_every), track_noise=more)
                else:
                    result = self._run(target, seeds, n, num_images, num_restarts, stats, stats_seconds, device, dtype,
                                       progress, callback, int(callback_every), track_noise=more,
                                       max_steps=None if max_steps is None else int(max_steps))
                if more:
                    from pulse_ext.pulse.intermediate import intermediate_run
                    result = intermediate_run(self, result, target, seeds, n, num_images, num_restarts, stats,
                                              stats_seconds, device, dtype, progress, callback, int(callback_every))
                result.noises = None
                return result
            finally:
                for p, flag in zip(G.parameters(), saved_flags):
                    p.requires_grad_(flag)
                if self.impl is not None and saved_impl is not None:
                    G.set_impl(saved_impl)

    def _run(self, target, seeds, n, num_images, num_restarts, stats, stats_seconds, device, dtype, progress,
             callback=None, callback_every=1, *, steps=None, synthesize=None, image_size=None, init=None,
             lr_schedule=None, sync_every=None, track_noise=False, cuda_graph=None, extra=None, max_steps=None):
        """The search loop. The keyword-only arguments serve ``progressive`` and ``intermediate``: steps /
        sync_every override the options; synthesize(w, noise) -> image in [-1, 1] of side image_size
        replaces G.synthesis; init = (latent, {noise layer: tensor}) replaces the random start of those
        tensors; lr_schedule(step, steps) replaces the schedule; track_noise returns the trainable noise maps
        at each best image; cuda_graph overrides the option. extra: [(tensor [n, ...], radius, project)]
        more per-row parameters, optimised with the latent under their own projection (see
        ``SphericalOptimizer``); synthesize is then called as synthesize(w, noise, extras, rows) (rows: the
        global rows in the batch) and the result's ``extras`` holds each at the best image. max_steps: stop
        after that many of the ``steps`` (see ``search``)."""
        G = self.generator
        loss_impl = self.impl or "auto"
        steps = self.steps if steps is None else int(steps)
        sync_every = self.sync_every if sync_every is None else int(sync_every)
        cuda_graph = self.cuda_graph if cuda_graph is None else cuda_graph
        if synthesize is None:
            def synthesize(w, noise):
                return G.synthesis(w, noise_mode="const", noise=noise)
        if lr_schedule is None:
            def lr_schedule(step, total):
                return lr_factor(self.lr_schedule, step, total)
        latent, noise, kinds = self._init_rows([s for row in seeds for s in row], device, dtype)
        if init is not None:
            latent = init[0].to(device=device, dtype=dtype).clone()
            for i, t in init[1].items():
                noise[i] = t.to(device=device, dtype=dtype).clone()
        latent.requires_grad_(True)
        trainable = [i for i, k in enumerate(kinds) if k == "trainable"]
        fixed = [i for i, k in enumerate(kinds) if k == "fixed"]
        for i in trainable:
            noise[i].requires_grad_(True)
        extra = extra or []
        extras = [t.to(device=device, dtype=dtype).clone().requires_grad_(True) for t, _, _ in extra]
        num_sphere = 1 + len(trainable)
        opt = SphericalOptimizer([latent] + [noise[i] for i in trainable] + extras, self.optimizer, self.learning_rate,
                                 projections=[None] * num_sphere + [project for _, _, project in extra],
                                 radii=[None] * num_sphere + [radius for _, radius, _ in extra])

        # Results for all N rows; rows that leave the batch (or the whole batch at the end) land here.
        size = G.img_resolution if image_size is None else int(image_size)
        out_img = torch.zeros(n, G.img_channels, size, size, device=device, dtype=dtype)
        out_latent = torch.zeros(n, *latent.shape[1:], device=device, dtype=dtype)
        out_l2 = torch.full((n,), float("inf"), device=device, dtype=dtype)
        out_l1, out_loss = out_l2.clone(), out_l2.clone()
        out_conv = torch.zeros(n, dtype=torch.bool, device=device)
        out_step = torch.full((n,), -1, dtype=torch.long, device=device)

        # The same for the rows in the batch (row i of the batch is global row st.rows[i]). Every step
        # updates these tensors in place (so that a CUDA graph can replay it); compaction replaces them.
        rows = torch.arange(n, device=device)
        st = SimpleNamespace(
            rows=rows, row_target=target if num_images == 1 else target.index_select(0, rows // num_restarts),
            latent=latent, noise=noise, best_img=out_img.clone(), best_latent=out_latent.clone(),
            best_l2=out_l2.clone(), best_l1=out_l1.clone(), best_loss=out_loss.clone(),
            active=torch.ones(n, dtype=torch.bool, device=device), conv_step=out_step.clone(),
            best_noise=[noise[i].detach().clone() for i in trainable] if track_noise else [],
            extras=extras, best_extras=[t.detach().clone() for t in extras])
        out_noise = [t.clone() for t in st.best_noise]
        out_extras = [t.clone() for t in st.best_extras]

        def flush():
            out_img.index_copy_(0, st.rows, st.best_img)
            out_latent.index_copy_(0, st.rows, st.best_latent)
            for dst, src in ((out_l2, st.best_l2), (out_l1, st.best_l1), (out_loss, st.best_loss),
                             (out_step, st.conv_step)):
                dst.index_copy_(0, st.rows, src)
            out_conv.index_copy_(0, st.rows, st.conv_step >= 0)  # (inactive rows include stopped ones)
            for dst, src in zip(out_noise + out_extras, st.best_noise + st.best_extras):
                dst.index_copy_(0, st.rows, src)

        def one_step(step, lr_scale, t=None):
            """A search step on st, in place. step / lr_scale / t: ints and floats, or (in a CUDA graph)
            0-dim device tensors set before each replay (t: the optimiser's 1-based step count)."""
            w = latent_to_w(st.latent, stats, G.num_ws)
            drawn = synthesize(w, st.noise, st.extras, st.rows) if extra else synthesize(w, st.noise)
            img = (drawn + 1) / 2
            l2, l1 = downscale_losses(img, st.row_target, self.downscale, loss_impl)
            loss = per_restart_loss(self.loss_terms, l2, l1, w[:, :1] if self.tile_latent else w, self.eps)
            loss.sum().backward()
            with torch.no_grad():
                newly = st.active & (l2 < self.eps)
                better = st.active & ((loss < st.best_loss) | newly)
                st.best_img.copy_(torch.where(better.view(-1, 1, 1, 1), img, st.best_img))
                st.best_latent.copy_(torch.where(better.view(-1, 1, 1), st.latent, st.best_latent))
                for i, best in zip(trainable, st.best_noise):
                    best.copy_(torch.where(better.view(-1, 1, 1, 1), st.noise[i], best))
                for current, best in zip(st.extras, st.best_extras):
                    best.copy_(torch.where(better.view(-1, *[1] * (best.dim() - 1)), current, best))
                st.best_l2.copy_(torch.where(better, l2, st.best_l2))
                st.best_l1.copy_(torch.where(better, l1, st.best_l1))
                st.best_loss.copy_(torch.where(better, loss, st.best_loss))
                st.conv_step.copy_(torch.where(newly, step, st.conv_step))
                st.active &= ~newly
            opt.step(lr_scale, active=st.active, t=t)
            opt.zero_grad()

        graphed = None
        if cuda_graph:
            from pulse_ext.pulse import cuda_graph as graphs
            graphed = graphs.GraphedStep(one_step, opt, device)

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc=progress if isinstance(progress, str) else "PULSE", unit="step")
        enough = self.enough_converged
        last_step = steps if max_steps is None else min(steps, int(max_steps))
        steps_run = 0
        start = time.perf_counter()
        for step in range(last_step):
            if graphed is not None:
                graphed(step, lr_schedule(step, steps))
            else:
                one_step(step, lr_schedule(step, steps))
            steps_run = step + 1
            finished = steps_run == last_step
            if steps_run % sync_every == 0 or finished:
                if enough is not None:
                    # Inputs with enough converged restarts stop the others (enough_converged).
                    seen = out_step.index_copy(0, st.rows, st.conv_step) >= 0
                    full = seen.view(num_images, num_restarts).sum(1) >= enough
                    st.active &= ~full.index_select(0, st.rows // num_restarts)
                num_active = int(st.active.sum())  # the only host synchronisation
                if bar is not None:
                    bar.update(steps_run - bar.n)
                    bar.set_postfix_str(self._progress_text(out_l2, st.rows, st.best_l2, num_images, num_restarts,
                                                            num_active))
                finished = finished or num_active == 0
            if callback is not None and (steps_run % callback_every == 0 or finished):
                callback(self._snapshot(steps_run, finished, st.rows, num_images, num_restarts, out_img, st.best_img,
                                        out_l2, st.best_l2, out_loss, st.best_loss, out_step, st.conv_step))
            if steps_run % sync_every == 0 or finished:
                if num_active == 0:
                    break
                # With a CUDA graph each compaction costs two eager steps and a capture: compact only once a
                # quarter of the batch has converged (frozen rows are masked, so results are the same).
                shrink_to = st.rows.numel() if graphed is None else 0.75 * st.rows.numel()
                if self.drop_converged and num_active < st.rows.numel() and num_active <= shrink_to:
                    flush()
                    keep = st.active.nonzero().squeeze(1)
                    params = opt.keep(keep)
                    st.latent = params[0]
                    for j, i in enumerate(trainable):
                        st.noise[i] = params[1 + j]
                    st.extras = params[num_sphere:]
                    for i in fixed:
                        st.noise[i] = st.noise[i].index_select(0, keep)
                    if num_images > 1:
                        st.row_target = st.row_target.index_select(0, keep)
                    for name in ("rows", "best_img", "best_latent", "best_l2", "best_l1", "best_loss", "conv_step",
                                 "active"):
                        setattr(st, name, getattr(st, name).index_select(0, keep))
                    st.best_noise = [b.index_select(0, keep) for b in st.best_noise]
                    st.best_extras = [b.index_select(0, keep) for b in st.best_extras]
                    if graphed is not None:
                        graphed.invalidate()  # the batch's tensors are new: capture again
        flush()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()

        def per_image(t):
            return t.view(num_images, num_restarts, *t.shape[1:])

        return SearchResult(
            images=per_image(out_img), latents=per_image(out_latent), l2=per_image(out_l2),
            l1=per_image(out_l1), loss=per_image(out_loss), converged=per_image(out_conv),
            converged_step=per_image(out_step), seeds=seeds, steps_run=steps_run, seconds=seconds,
            stats_seconds=stats_seconds,
            timings={"search_s": seconds, "seconds_per_step": seconds / max(steps_run, 1), "stats_s": stats_seconds,
                     **({"cuda_graph_captures": graphed.captures, "cuda_graph_replays": graphed.replays}
                        if graphed is not None else {})},
            noises=[per_image(t) for t in out_noise] if track_noise else None,
            extras=[per_image(t) for t in out_extras] if extra else None)

    @staticmethod
    def _snapshot(step, final, rows, num_images, num_restarts, out_img, best_img, out_l2, best_l2, out_loss,
                  best_loss, out_step, conv_step) -> SearchProgress:
        """Every restart's best so far (rows still in the batch from best_*, the others from out_*)."""
        with torch.no_grad():
            def merged(out, best):
                return out.index_copy(0, rows, best).view(num_images, num_restarts, *out.shape[1:])

            return SearchProgress(step=step, final=final, images=merged(out_img, best_img),
                                  l2=merged(out_l2, best_l2), loss=merged(out_loss, best_loss),
                                  converged=merged(out_step, conv_step) >= 0)

    @staticmethod
    def _progress_text(out_l2, rows, best_l2, num_images, num_restarts, num_active) -> str:
        l2 = out_l2.clone()
        l2.index_copy_(0, rows, best_l2)
        best = l2.view(num_images, num_restarts).min(1).values.tolist()
        return "best L2 " + " ".join(f"{v:.2e}" for v in best) + f" | active {num_active}"


def pulse_search(generator, target: torch.Tensor, *, restarts: int = 8, seed: int = 0, progress: bool = False,
                 **options) -> SearchResult:
    """One-call form: ``PULSE(generator, **options).search(target, restarts, seed, progress=progress)``."""
    return PULSE(generator, **options).search(target, restarts=restarts, seed=seed, progress=progress)

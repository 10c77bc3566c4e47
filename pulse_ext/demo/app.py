"""The demo's searches: submitted from HTTP threads, run one at a time by a worker thread, read back
as JSON-ready snapshots and PNG bytes. No HTTP here (see :mod:`pulse_ext.demo.server`)."""
from __future__ import annotations

import io
import itertools
import secrets
import sys
import threading
import time
import traceback
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from pulse_ext.errors import UserError
from pulse_ext.io import read_image
from pulse_ext.upscale import (PulseConvergenceWarning, PulseMemoryWarning, PulseRealismWarning, fit_size,
                               size_problem, tensor_to_pil, upscale)


@dataclass
class DemoLimits:
    """What one request may ask for: uploads up to ``max_upload_bytes``, at most ``max_restarts``
    restarts, ``max_steps`` steps and ``max_outputs`` outputs; the last ``keep_searches`` finished
    searches are kept in memory for their page."""
    max_upload_bytes: int = 8 * 2 ** 20
    max_restarts: int = 32
    max_steps: int = 1000
    max_outputs: int = 8
    keep_searches: int = 32


def png_bytes(image) -> bytes:
    """A PIL image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def size_text(size: int) -> str:
    """A byte count for people: "812 KB", "3.4 MB"."""
    return f"{size / 2 ** 20:.1f} MB" if size >= 2 ** 20 else f"{max(size / 2 ** 10, 0.1):.1f} KB"


def _int_option(params, name, default, low, high):
    text = params.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise UserError(f"{name}: expected {low} to {high}, got {value}")
    return value


@dataclass
class Search:
    """One submitted search. ``state``: queued -> running -> done | error. Images are PNG bytes."""
    id: str
    name: str
    generator: str
    restarts: int
    steps: int
    num_outputs: int
    seed: int
    align: bool
    framing: str
    image: object  # the uploaded image (PIL, upright, RGB)
    input_png: bytes
    state: str = "queued"
    message: str = ""
    notes: List[str] = field(default_factory=list)
    step: int = 0
    best_l2: Optional[float] = None  # the lowest L2 of any restart so far
    searched_png: Optional[bytes] = None  # what is searched for: the input, resized or aligned
    searched_size: Optional[List[int]] = None
    previews: List[bytes] = field(default_factory=list)  # the current best images
    outputs: List[dict] = field(default_factory=list)  # {"png", "down_png", "l2", "converged", "restart"}
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    version: int = 0  # bumped on every change, so the page reloads previews only when they changed

    def finished_state(self) -> bool:
        return self.state in ("done", "error")


class DemoApp:
    """Searches for the demo page.

    Args:
        generators: label -> loaded generator (``pulse_ext.load_generator``); the page picks one by label,
            never by path.
        device: torch device the generators are on.
        limits: :class:`DemoLimits`.
        aligner: a ``pulse_ext.align.FaceAligner``, or None with ``align_unavailable`` saying why.
        preview_every: steps between live previews.

    One search runs at a time (a PULSE search already uses every core or the GPU); the others wait in
    submission order. Call :meth:`start` once, :meth:`close` at the end.
    """

    def __init__(self, generators: Dict[str, torch.nn.Module], device, limits: Optional[DemoLimits] = None,
                 aligner=None, align_unavailable: str = "", preview_every: int = 5):
        if not generators:
            raise ValueError("DemoApp needs at least one generator")
        self.generators = dict(generators)
        self.device = torch.device(device)
        self.limits = limits or DemoLimits()
        self.aligner = aligner
        self.align_unavailable = align_unavailable if aligner is None else ""
        self.preview_every = int(preview_every)
        self._searches: "OrderedDict[str, Search]" = OrderedDict()
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="pulse-ext-demo-search", daemon=True)
        self._counter = itertools.count(1)

    # ---------------------------------------------------------------------------------------------
    # for the server

    def start(self):
        self._worker.start()

    def close(self, timeout: float = 5.0):
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)

    def config(self) -> dict:
        """What the page needs to build its form."""
        from pulse_ext.align import DEFAULT_FRAMING, FRAMINGS

        return {
            "generators": [{"label": label, "resolution": G.img_resolution, "channels": G.img_channels}
                           for label, G in self.generators.items()],
            "device": str(self.device),
            "limits": {"max_upload_bytes": self.limits.max_upload_bytes, "max_restarts": self.limits.max_restarts,
                       "max_steps": self.limits.max_steps, "max_outputs": self.limits.max_outputs},
            "align": {"available": self.aligner is not None, "why_not": self.align_unavailable,
                      "framings": list(FRAMINGS), "default_framing": DEFAULT_FRAMING},
        }

    def submit(self, data: bytes, params: Dict[str, str]) -> Search:
        """Check the options and the image (UserError naming the problem), then queue the search."""
        from pulse_ext.align import DEFAULT_FRAMING, FRAMINGS

        limits = self.limits
        if len(data) > limits.max_upload_bytes:
            raise UserError(f"the upload is {size_text(len(data))}; this demo takes images up to "
                            f"{size_text(limits.max_upload_bytes)}")
        generator = params.get("generator") or next(iter(self.generators))
        if generator not in self.generators:
            raise UserError(f"generator: expected one of {', '.join(self.generators)}, got {generator!r}")
        restarts = _int_option(params, "restarts", 8, 1, limits.max_restarts)
        steps = _int_option(params, "steps", 100, 1, limits.max_steps)
        num_outputs = _int_option(params, "num_outputs", min(4, restarts), 1, limits.max_outputs)
        if num_outputs > restarts:
            raise UserError(f"num_outputs: {num_outputs} outputs need at least as many restarts, got {restarts}")
        seed = _int_option(params, "seed", secrets.randbits(31), 0, 2 ** 63 - 1)
        align = params.get("align", "") in ("1", "true", "on", "yes")
        framing = params.get("framing") or DEFAULT_FRAMING
        if framing not in FRAMINGS:
            raise UserError(f"framing: expected one of {', '.join(FRAMINGS)}, got {framing!r}")
        if align and self.aligner is None:
            raise UserError(f"alignment is not available here: {self.align_unavailable}")
        name = (params.get("name") or "upload")[:100]
        image = read_image(data, 3, name=name)  # ImageReadError (a UserError) for broken files and bombs
        search = Search(id=f"{next(self._counter)}-{secrets.token_hex(4)}", name=name, generator=generator,
                        restarts=restarts, steps=steps, num_outputs=num_outputs, seed=seed, align=align,
                        framing=framing, image=image, input_png=png_bytes(image))
        with self._wake:
            if self._closed:
                raise UserError("the demo is shutting down")
            self._searches[search.id] = search
            self._queue.append(search.id)
            self._forget_old()
            self._wake.notify_all()
        return search

    def get(self, search_id: str) -> Optional[Search]:
        with self._lock:
            return self._searches.get(search_id)

    def snapshot(self, search_id: str) -> Optional[dict]:
        """The search as JSON-ready data (images as URLs relative to the search), or None if unknown."""
        with self._lock:
            s = self._searches.get(search_id)
            if s is None:
                return None
            ahead = None
            if s.state == "queued":
                queued = list(self._queue)
                running = any(other.state == "running" for other in self._searches.values())
                ahead = queued.index(s.id) + int(running) if s.id in queued else 0
            base = f"/api/search/{s.id}"
            return {
                "id": s.id, "name": s.name, "state": s.state, "message": s.message, "notes": list(s.notes),
                "ahead": ahead, "step": s.step, "steps": s.steps, "best_l2": s.best_l2, "version": s.version,
                "options": {"generator": s.generator, "restarts": s.restarts, "steps": s.steps,
                            "num_outputs": s.num_outputs, "seed": s.seed, "align": s.align, "framing": s.framing},
                "input": f"{base}/input.png", "input_size": list(s.image.size),
                "searched": f"{base}/searched.png" if s.searched_png else None, "searched_size": s.searched_size,
                "previews": [f"{base}/preview/{k}.png?v={s.version}" for k in range(len(s.previews))],
                "outputs": [{"image": f"{base}/output/{k}.png", "downscaled": f"{base}/downscaled/{k}.png",
                             "l2": o["l2"], "converged": o["converged"], "restart": o["restart"]}
                            for k, o in enumerate(s.outputs)],
                "seconds": ((s.finished or time.time()) - s.started) if s.started else 0.0,
            }

    def image(self, search_id: str, kind: str, index: int = 0) -> Optional[bytes]:
        """PNG bytes of one image of a search: input, searched, preview/k, output/k, downscaled/k."""
        with self._lock:
            s = self._searches.get(search_id)
            if s is None:
                return None
            if kind == "input":
                return s.input_png
            if kind == "searched":
                return s.searched_png
            pool = {"preview": s.previews, "output": [o["png"] for o in s.outputs],
                    "downscaled": [o["down_png"] for o in s.outputs]}.get(kind)
            if pool is None or not 0 <= index < len(pool):
                return None
            return pool[index]

    # ---------------------------------------------------------------------------------------------
    # the worker

    def _forget_old(self):
        finished = [sid for sid, s in self._searches.items() if s.finished_state()]
        for sid in finished[:max(0, len(finished) - self.limits.keep_searches)]:
            del self._searches[sid]

    def _update(self, search: Search, **changes):
        with self._lock:
            for key, value in changes.items():
                setattr(search, key, value)
            search.version += 1

    def _work(self):
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                search = self._searches[self._queue.popleft()]
                search.state, search.started = "running", time.time()
                search.version += 1
            try:
                self._run(search)
                self._update(search, state="done", finished=time.time())
            except UserError as exc:
                self._update(search, state="error", message=str(exc), finished=time.time())
            except Exception as exc:  # keep serving; the page shows it, the terminal gets the traceback
                traceback.print_exc(file=sys.stderr)
                self._update(search, state="error", finished=time.time(),
                             message=f"the search failed: {type(exc).__name__}: {exc}")

    def _searched_image(self, search: Search, G):
        """The low-resolution image to search for: aligned (first face) or the upload, fitted to G."""
        resolution = G.img_resolution
        image, notes = search.image, []
        if search.align:
            from pulse_ext.align import NoFaceError

            size = max(resolution // 4, 1)
            try:
                faces = self.aligner.align(image, size, framing=search.framing)
            except NoFaceError:
                raise UserError(f"no face found in {search.name} (try without alignment if it is already "
                                f"a cropped face)") from None
            image = faces[0].low
            notes.append(f"aligned ({search.framing} framing) to {size}x{size}"
                         + (f"; {len(faces)} faces found, the leftmost searched" if len(faces) > 1 else ""))
        if size_problem(image.size, resolution, "area"):
            w, h = image.size
            image = fit_size(image, resolution, "area")
            notes.append(f"resized {w}x{h} -> {image.size[0]}x{image.size[1]} to fit the "
                         f"{resolution}x{resolution} generator")
        if G.img_channels == 1:
            image = image.convert("L")
        return image, notes

    def _run(self, search: Search):
        from pulse_ext.pulse.losses import downscale

        G = self.generators[search.generator]
        image, notes = self._searched_image(search, G)
        self._update(search, searched_png=png_bytes(image), searched_size=list(image.size), notes=notes)
        keep = search.num_outputs

        def on_progress(state):
            ranking = state.ranking(0)[:keep]
            images = state.images[0, ranking].detach().float().clamp(0, 1).cpu()
            previews = [png_bytes(tensor_to_pil(x)) for x in images]
            self._update(search, step=int(state.step), best_l2=float(state.l2[0].min()), previews=previews)

        with warnings.catch_warnings(record=True) as caught:  # only this thread searches
            warnings.simplefilter("always", PulseConvergenceWarning)
            warnings.simplefilter("always", PulseMemoryWarning)
            warnings.simplefilter("always", PulseRealismWarning)
            result = upscale(image, generator=G, restarts=search.restarts, steps=search.steps,
                             num_outputs=search.num_outputs, seed=search.seed, device=self.device,
                             return_result=True, callback=on_progress, callback_every=self.preview_every,
                             original_size=None if search.align else search.image.size)
        for warning in caught:
            if issubclass(warning.category, (PulseConvergenceWarning, PulseMemoryWarning, PulseRealismWarning)):
                notes.append(str(warning.message).removeprefix("PULSE: "))
        w, h = image.size
        low = downscale(result.tensors, (h, w), "area").clamp(0, 1)
        outputs = [{"png": png_bytes(candidate), "down_png": png_bytes(tensor_to_pil(low[k])),
                    "l2": float(result.l2[k]), "converged": bool(result.converged[k]),
                    "restart": int(result.restart_indices[k])}
                   for k, candidate in enumerate(result.candidates)]
        self._update(search, outputs=outputs, step=int(result.steps_run), best_l2=float(result.search.l2[0].min()),
                     notes=notes)

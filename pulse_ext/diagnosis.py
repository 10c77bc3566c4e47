"""Saying plainly when a search went wrong, and what to try instead.

Two things go wrong with PULSE, and both are visible only after the search:

- no restart met eps: the generator could not make an image whose downscale matches the input (the
  best one is still returned);
- the best output does not look like a face (:mod:`pulse_ext.realism`, when dlib is installed): the
  search matched the pixels by melting the face, which happens when the input is framed unlike the
  generator's faces (measured in docs/evaluation.md: FFHQ-framed, wide and off-centre 16x16 faces).

:func:`diagnose` turns the search's outcome into a :class:`Diagnosis`: the facts, one sentence for
each problem, and the advice that measured best for that kind of input (docs/pulse.md): a photo
(an input with enough pixels for the face detector) is best cropped and aligned first (``--align``);
a tiny input whose framing is unknown, searched with the framing search.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from pulse_ext.realism import REALISM_THRESHOLD, is_face_like, realism_scores, realism_unavailable_reason

# Inputs whose shorter side has at least this many pixels count as photos, where face detection (and
# so --align) can work; dlib's HOG detector, upsampling once, finds faces from about 40 px.
PHOTO_MIN_SIDE = 48
REALISM_CHECKS = ("auto", "on", "off")

ALIGN_ADVICE = ("crop and align the face first, as the generator's training faces are: pulse-ext upscale --align "
                "PHOTO (Python: pulse_ext.align.FaceAligner)")
FRAMING_ADVICE = ("the face may be framed looser than the generator's (FFHQ-style, or a whole photo): search with "
                  "the framing search, pulse-ext upscale --framing-search (Python: upscale(..., framing_search=True))")
GENERIC_ADVICE = ("more restarts or steps (--restarts, --steps), a larger --eps, or a generator trained on faces "
                  "framed like this one")


@dataclass
class Diagnosis:
    """The outcome of one input's search.

    met_eps: some restart reached L2 < eps. best_l2: the best output's L2. realism_score: dlib's score of
    the best output (None when not checked), face_like: realism_score >= REALISM_THRESHOLD (None when not
    checked), realism_check: "done" or why it was skipped. problems: one sentence each (empty: all well).
    advice: what to try, or None when there is no problem.
    """
    met_eps: bool
    best_l2: float
    eps: float
    realism_score: Optional[float]
    face_like: Optional[bool]
    realism_check: str
    problems: List[str] = field(default_factory=list)
    advice: Optional[str] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> Optional[str]:
        """The problems and the advice as one line, or None when there is no problem."""
        if self.ok:
            return None
        return "; ".join(self.problems) + f". Try: {self.advice}"

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def choose_advice(input_size: Tuple[int, int], *, framing_search: bool = False, aligned: bool = False) -> str:
    """The option that measured best for this kind of input (docs/pulse.md), not yet in use."""
    if not aligned and min(input_size) >= PHOTO_MIN_SIDE:
        return ALIGN_ADVICE
    if not framing_search and not aligned:
        return FRAMING_ADVICE
    return GENERIC_ADVICE


def check_realism_option(realism_check: Union[str, bool]) -> str:
    """The realism_check option as "auto" | "on" | "off" (True / False accepted); ValueError otherwise,
    RuntimeError for "on" without dlib. Called before a search so that it fails fast."""
    value = {True: "on", False: "off"}.get(realism_check, realism_check) if isinstance(realism_check, bool) \
        else realism_check
    if value not in REALISM_CHECKS:
        raise ValueError(f"realism_check must be one of {REALISM_CHECKS} or a bool, got {realism_check!r}")
    reason = realism_unavailable_reason() if value == "on" else None
    if reason:
        raise RuntimeError(f"the realism check needs dlib: {reason}")
    return value


def diagnose(*, met_eps: bool, best_l2: float, eps: float, best_image, input_size: Sequence[int],
             framing_search: bool = False, aligned: bool = False,
             realism_check: Union[str, bool] = "auto") -> Diagnosis:
    """Diagnose one input's search.

    met_eps / best_l2 / eps: the search's outcome. best_image: the best output (PIL image, uint8 array or
    [C, H, W] tensor in [0, 1]). input_size: (width, height) of the input as the user gave it (before
    any resizing). framing_search / aligned: options already in use (not advised again).
    realism_check: "auto" (when dlib is installed), "on" (RuntimeError without dlib), "off".
    """
    realism_check = check_realism_option(realism_check)
    score, face_like, check = None, None, "done"
    if realism_check == "off":
        check = "skipped (turned off)"
    else:
        reason = realism_unavailable_reason()
        if reason:
            check = f"skipped: {reason}"
        else:
            score = realism_scores([best_image])[0]
            face_like = is_face_like(score)
    problems = []
    if not met_eps:
        problems.append(f"no restart met eps={eps:g} (best L2 {best_l2:.3g}): the generator cannot make this input")
    if face_like is False:
        problems.append(f"the best output does not look like a face (dlib face score {score:.2f} < "
                        f"{REALISM_THRESHOLD}): the search distorted the face to match the pixels")
    advice = choose_advice(tuple(input_size), framing_search=framing_search, aligned=aligned) if problems else None
    return Diagnosis(met_eps=bool(met_eps), best_l2=float(best_l2), eps=float(eps), realism_score=score,
                     face_like=face_like, realism_check=check, problems=problems, advice=advice)

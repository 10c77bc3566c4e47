"""``pulse-ext upscale``: its options, registered in :mod:`pulse_ext.cli`. Image files are searched by
:func:`pulse_ext.files.upscale_files`, folders and ``--align`` by :func:`pulse_ext.jobs.run_job`.
"""
from __future__ import annotations

import argparse
import math
import os

from pulse_ext.files import upscale_files
from pulse_ext.jobs import run_job
from pulse_ext.runtime import apply_thread_setting


# --------------------------------------------------------------------------------------------------
# argument parsing

def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text):
    value = _nonnegative_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _resolutions(text):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected block resolutions like 8 or 8,16, got {text!r}") from None
    return values


def _seed(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**63), got {text!r}")
    return value


def _one_line_error(parser):
    """Make ``parser`` report bad arguments as one line ``pulse-ext: error: …`` (exit 2), no usage dump."""
    def error(message):
        from pulse_ext.cli import PROG

        parser.exit(2, f"{PROG}: error: {' '.join(str(message).split())} (see {parser.prog} --help)\n")
    parser.error = error
    parse_known_args = parser.parse_known_args

    def parse_known_args_strict(args=None, namespace=None):
        # Unknown options would otherwise reach the top-level parser, which prints its usage too.
        namespace, extras = parse_known_args(args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras
    parser.parse_known_args = parse_known_args_strict


def add_arguments(parser):
    from pulse_ext.pulse.losses import DOWNSCALERS
    from pulse_ext.pulse.optim import LR_SCHEDULES, OPTIMIZERS
    from pulse_ext.pulse.progressive import PRECISIONS
    from pulse_ext.pulse.search import DEFAULT_INTERMEDIATE_RADIUS, NOISE_TYPES
    from pulse_ext.diagnosis import REALISM_CHECKS
    from pulse_ext.upscale import DEFAULT_STEPS

    _one_line_error(parser)
    parser.add_argument("inputs", nargs="+", metavar="IN",
                        help="low-resolution face image(s), any format PIL reads, or folder(s) of them (a folder "
                             "job: batched, with a manifest, resumable, sharded under torchrun; docs/jobs.md)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output image file (one input, one output per input) or folder (created if missing)")
    parser.add_argument("--generator", default="default", metavar="PATH",
                        help="StyleGAN2 checkpoint (.pkl, .pt, .safetensors) or 'default' (the embedded one)")
    parser.add_argument("--restarts", type=_positive_int, default=8, metavar="R",
                        help="random restarts per input, searched as one batch (default %(default)s)")
    parser.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS,
                        help="maximum optimisation steps (default %(default)s)")
    parser.add_argument("--eps", type=_nonnegative_float, default=2e-3,
                        help="a restart succeeds when the mean squared error of its downscaled image is below "
                             "this (default %(default)s)")
    parser.add_argument("--loss", default="100*L2+0.05*GEOCROSS",
                        help="weighted loss terms L2, L1, GEOCROSS (default %(default)s)")
    parser.add_argument("--seed", type=_seed, default=None,
                        help="random seed (default: drawn, and recorded in the JSON metadata)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=_threads_option, default="auto", metavar="N|auto",
                        help="CPU threads; 'auto' (default) leaves out the cores other processes are running on now "
                             "(Linux: /proc/stat), since OpenMP threads that wait for a busy core slow the whole "
                             "search down many times over; OMP_NUM_THREADS, if set, wins")
    parser.add_argument("--lr", type=_positive_float, default=0.4, help="base learning rate (default %(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimiser (default %(default)s)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="linear1cycledrop",
                        help="learning-rate schedule (default %(default)s)")
    parser.add_argument("--noise-type", choices=NOISE_TYPES, default="trainable",
                        help="how noise maps are treated (default %(default)s)")
    parser.add_argument("--downscale", choices=DOWNSCALERS, default="area",
                        help="how a candidate is downscaled for comparison with the input (default %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: search with the generator's 3x3 convolutions in bfloat16 (faster on CPUs with "
                             "AVX512-BF16/AMX and tensor-core GPUs), then render, check and refine the results in "
                             "fp32 (default %(default)s; docs/performance.md)")
    parser.add_argument("--framing-search", action="store_true",
                        help="for tiny inputs framed looser than the generator's faces (FFHQ-style, a whole photo): "
                             "first probe square boxes of the input with short searches and search the best one; the "
                             "output is the face drawn for that box (recorded in the JSON; docs/pulse.md)")
    parser.add_argument("--intermediate", type=_resolutions, default=None, metavar="RES[,RES]",
                        help="after the latent search, search the features entering these synthesis blocks (e.g. "
                             "8,16), kept within an l1 ball around the generator's own (ILO; docs/pulse.md)")
    parser.add_argument("--intermediate-steps", type=_positive_int, default=50, metavar="N",
                        help="steps per --intermediate block (default %(default)s)")
    parser.add_argument("--intermediate-radius", type=_nonnegative_float, default=DEFAULT_INTERMEDIATE_RADIUS,
                        metavar="R", help="l1 radius of the feature change, as a fraction of the features' own l1 "
                                          "norm (default %(default)s)")
    parser.add_argument("--realism-check", choices=REALISM_CHECKS, default="auto",
                        help="score the best output with dlib's face detector and warn when it does not look like a "
                             "face: auto (default) when dlib is installed, on (an error without it), off")
    parser.add_argument("--num-outputs", type=_positive_int, default=1, metavar="K",
                        help="K distinct faces per input, converged ones first; K <= restarts (default %(default)s)")
    parser.add_argument("--all-restarts", action="store_true",
                        help="run every restart until it meets eps or the steps end (default: stop an input's "
                             "search once --num-outputs of its restarts met eps: about half the steps, docs/pulse.md)")
    parser.add_argument("--save-all", action="store_true",
                        help="also write every restart's result (NAME.restartNN); implies --all-restarts")
    parser.add_argument("--save-intermediate", action="store_true",
                        help="also write an animated GIF of the search (NAME.search.gif): the best image so far")
    parser.add_argument("--intermediate-every", type=_positive_int, default=5, metavar="N",
                        help="steps between GIF frames (default %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when no restart of some input met eps (the best is still written)")
    parser.add_argument("--resize", action="store_true",
                        help="resize inputs that do not fit the generator (larger than it; with --downscale bicubic, "
                             "sizes that do not divide it) to the nearest size that does (default: refuse them)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no 'wrote' lines "
                        "(warnings and errors are still printed)")
    jobs = parser.add_argument_group("folder jobs and face alignment (docs/jobs.md)")
    jobs.add_argument("--batch", type=_positive_int, default=4, metavar="B",
                      help="folder jobs: same-size inputs searched together (default %(default)s)")
    jobs.add_argument("--retry-errors", action="store_true",
                      help="folder jobs: on resume, retry inputs the manifest records as failed")
    jobs.add_argument("--align", action="store_true",
                      help="detect and align every face of each (photo) input first, as 'pulse-ext align' (needs "
                           "the align extra: pip install 'pulse_ext[align]'); runs as a folder job")
    from pulse_ext.cli_align import add_alignment_arguments
    add_alignment_arguments(jobs, size_default=None, size_option="--align-size")


# --------------------------------------------------------------------------------------------------
# the command

def _threads_option(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def run(args):
    apply_thread_setting(args.threads)
    if getattr(args, "align", False) or any(os.path.isdir(path) for path in args.inputs):
        return run_job(args)
    return upscale_files(args)


UPSCALE = ("super-resolve low-resolution face images with PULSE", add_arguments, run)

"""``pulse-ext align PHOTO… -o DIR``: detect, align and downscale every face (see :mod:`pulse_ext.align`).

For each face ``i`` of ``photo.jpg`` it writes ``DIR/photo_face{i}.png`` (the ``--size`` low-resolution
input for ``upscale``) and ``DIR/photo_face{i}.hr.png`` (the aligned high-resolution crop it was
area-downscaled from). A photo with no face, or one that cannot be read, is reported and skipped
(exit status 1 at the end); a missing dlib is one line and exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_alignment_arguments(parser, *, size_default=16, size_option="--size"):
    """The options ``align`` and ``upscale --align`` share."""
    from pulse_ext.align import DEFAULT_FRAMING, DEFAULT_MIN_SCORE, FRAMINGS
    from pulse_ext.cli_upscale import _positive_int

    parser.add_argument(size_option, type=_positive_int, default=size_default, metavar="S", dest="align_size",
                        help="side of the low-resolution aligned face" +
                             (" (default %(default)s)" if size_default else
                              " (default: a quarter of the generator resolution)"))
    parser.add_argument("--framing", choices=sorted(FRAMINGS), default=DEFAULT_FRAMING,
                        help="crop like the generator's training data: utkface (tight, the default generator's) "
                             "or ffhq (loose, for FFHQ generators) (default %(default)s)")
    parser.add_argument("--landmarks", default=None, metavar="PATH",
                        help="dlib 68-point shape predictor .dat (default: face-recognition-models' copy, "
                             "else /usr/share/dlib)")
    parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE, metavar="T",
                        help="drop face detections scoring below T (default %(default)s)")


def add_arguments(parser):
    from pulse_ext.cli_upscale import _one_line_error, _positive_int

    _one_line_error(parser)
    parser.add_argument("inputs", nargs="+", metavar="PHOTO", help="photo(s) with faces, any format PIL reads")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if missing)")
    add_alignment_arguments(parser)
    parser.add_argument("--hr-size", type=_positive_int, default=None, metavar="H",
                        help="side of the aligned high-resolution crop, a multiple of --size "
                             "(default: the smallest multiple >= 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no 'wrote' lines")


def run(args):
    from pulse_ext.align import AlignError, FaceAligner, NoFaceError, default_hr_size, face_names
    from pulse_ext.cli import PROG, UsageError
    from pulse_ext.io import ImageReadError, make_output_folder, probe_writable, read_image, save_image

    hr_size = default_hr_size(args.align_size) if args.hr_size is None else args.hr_size
    if hr_size % args.align_size:
        raise UsageError(f"--hr-size {hr_size} is not a multiple of --size {args.align_size}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} exists and is not a folder")
    try:
        aligner = FaceAligner(args.landmarks, min_score=args.min_score)
    except AlignError as exc:
        raise UsageError(str(exc)) from None
    make_output_folder(out)
    probe_writable(out, "to the output folder")
    failures = 0
    for path in args.inputs:
        try:
            faces = aligner.align(read_image(path), args.align_size, hr_size=hr_size, framing=args.framing)
        except (ImageReadError, NoFaceError) as exc:
            failures += 1
            print(f"{PROG}: warning: {path}: {exc}" if isinstance(exc, NoFaceError) else f"{PROG}: warning: {exc}",
                  file=sys.stderr)
            continue
        for name, face in zip(face_names(Path(path).stem, len(faces)), faces):
            low, high = out / f"{name}.png", out / f"{name}.hr.png"
            for target in (low, high):
                if target.exists() and not args.overwrite:
                    raise UsageError(f"{target} exists (pass --overwrite to replace it)")
            save_image(face.high, high)
            save_image(face.low, low)
            if not args.quiet:
                print(f"wrote {low} ({args.align_size}x{args.align_size}) and {high} ({hr_size}x{hr_size})",
                      file=sys.stderr)
    return 1 if failures else 0


ALIGN = ("detect, align (FFHQ-style geometry, UTKFace or FFHQ framing) and downscale faces in photos",
         add_arguments, run)

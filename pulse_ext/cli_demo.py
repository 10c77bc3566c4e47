"""``pulse-ext demo``: serve the demo page (:mod:`pulse_ext.demo`) on this machine until Ctrl-C.

Generators are loaded, and alignment set up, before the server starts, so a bad checkpoint path is an
error here and not in the page. The page chooses among the generators named on this command line by
label; it cannot name a file.
"""
from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from pulse_ext.cli_upscale import _one_line_error, _positive_int, _threads_option


def add_arguments(parser):
    _one_line_error(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default %(default)s: this machine only; 0.0.0.0 serves "
                             "everyone who can reach it, with no login)")
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--generator", action="append", default=[], metavar="PATH",
                        help="a StyleGAN2 checkpoint to offer besides the embedded default (repeatable)")
    parser.add_argument("--no-default", action="store_true", help="do not offer the embedded default generator")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=_threads_option, default="auto", metavar="N|auto",
                        help="CPU threads for the searches (default %(default)s, as pulse-ext upscale)")
    parser.add_argument("--max-upload-mb", type=float, default=8.0, metavar="MB",
                        help="largest upload accepted (default %(default)s)")
    parser.add_argument("--max-restarts", type=_positive_int, default=32, metavar="R",
                        help="most restarts one search may ask for (default %(default)s)")
    parser.add_argument("--max-steps", type=_positive_int, default=1000, metavar="N",
                        help="most steps one search may ask for (default %(default)s)")
    parser.add_argument("--landmarks", default=None, metavar="PATH",
                        help="dlib 68-point shape predictor for the page's alignment option (default: "
                             "face-recognition-models' copy, else /usr/share/dlib)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")


def _label(path, taken):
    label = Path(path).name
    while label in taken:
        label = f"{label}'"
    return label


def run(args):
    from pulse_ext.align import AlignError, FaceAligner
    from pulse_ext.checkpoints import load_generator
    from pulse_ext.cli import PROG, UsageError
    from pulse_ext.demo import DemoApp, DemoLimits, DemoServer
    from pulse_ext.runtime import apply_thread_setting, resolve_device

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0 to 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb: expected a size > 0, got {args.max_upload_mb}")
    if args.no_default and not args.generator:
        raise UsageError("--no-default needs at least one --generator PATH")
    device = resolve_device(args.device, "--device")
    apply_thread_setting(args.threads)
    generators = {}
    for spec in ([] if args.no_default else ["default"]) + list(args.generator):
        label = "default" if spec == "default" else _label(spec, generators)
        generators[label] = load_generator(spec, device=device)  # CheckpointError: one line, exit 2
    try:
        aligner, why_not = FaceAligner(args.landmarks), ""
    except AlignError as exc:
        aligner, why_not = None, str(exc)
    limits = DemoLimits(max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_restarts=args.max_restarts,
                        max_steps=args.max_steps)
    app = DemoApp(generators, device, limits, aligner=aligner, align_unavailable=why_not)
    try:
        server = DemoServer(app, args.host, args.port, verbose=args.verbose)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"{PROG}: warning: serving on {args.host}: anyone who can reach this address can run searches",
              file=sys.stderr)
    app.start()
    print(f"pulse-ext demo: {server.url} (generators: {', '.join(generators)}; device {device}; "
          f"alignment {'on' if aligner else 'off: ' + why_not}); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print(f"{PROG}: demo stopped", file=sys.stderr)
    finally:
        server.server_close()
        app.close()
    return 0


DEMO = ("serve a local web page to try PULSE in a browser, watching the search live", add_arguments, run)

"""The demo's HTTP side: the page (``static/``) and a JSON API over :class:`~pulse_ext.demo.app.DemoApp`,
on the standard library's threading HTTP server.

    GET  /                                  the page (and /static/<file>: its script and style)
    GET  /api/config                        generators, limits, alignment
    POST /api/search?restarts=&steps=&num_outputs=&seed=&generator=&align=&framing=&name=
                                            body: the image file's bytes -> {"id": ...} (201) or {"error"} (4xx)
    GET  /api/search/<id>                   the search's state (queued/running/done/error), progress, image URLs
    GET  /api/search/<id>/<kind>[/<k>].png  input, searched, preview/k, output/k, downscaled/k

Errors are JSON ``{"error": message}`` with a 4xx status; nothing the page sends names a file on the
server.
"""
from __future__ import annotations

import json
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qsl, urlsplit

from pulse_ext.demo.app import size_text
from pulse_ext.errors import UserError

_STATIC = {"index.html": "text/html; charset=utf-8", "demo.js": "text/javascript; charset=utf-8",
           "demo.css": "text/css; charset=utf-8"}
_IMAGE_PATH = re.compile(r"^/api/search/([0-9a-f-]+)/(input|searched|preview|output|downscaled)(?:/(\d+))?\.png$")
_SEARCH_PATH = re.compile(r"^/api/search/([0-9a-f-]+)$")
# Bodies over the limit are still read (and dropped) up to this, so the browser gets the 413 message
# instead of a reset connection; larger ones are refused without reading.
_DRAIN_LIMIT = 256 * 2 ** 20


def static_file(name: str) -> bytes:
    return resources.files("pulse_ext.demo").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "DemoServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name)
        if self.server.verbose:
            super().log_message(format, *args)

    # responses -----------------------------------------------------------------------------------

    def _send(self, status, body: bytes, content_type: str, cache: str = "no-store"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, data):
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status, message):
        self._json(status, {"error": message})

    # routes --------------------------------------------------------------------------------------

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        app = self.server.app
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, static_file("index.html"), _STATIC["index.html"])
        if path.startswith("/static/") and path[len("/static/"):] in _STATIC:
            name = path[len("/static/"):]
            return self._send(HTTPStatus.OK, static_file(name), _STATIC[name])
        if path == "/api/config":
            return self._json(HTTPStatus.OK, app.config())
        match = _SEARCH_PATH.match(path)
        if match:
            snapshot = app.snapshot(match.group(1))
            if snapshot is None:
                return self._error(HTTPStatus.NOT_FOUND, "no such search (the demo keeps the last "
                                   f"{app.limits.keep_searches} finished ones)")
            return self._json(HTTPStatus.OK, snapshot)
        match = _IMAGE_PATH.match(path)
        if match:
            search_id, kind, index = match.group(1), match.group(2), int(match.group(3) or 0)
            data = app.image(search_id, kind, index)
            if data is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no {kind} image {index} for search {search_id}")
            return self._send(HTTPStatus.OK, data, "image/png", cache="private, max-age=3600")
        return self._error(HTTPStatus.NOT_FOUND, f"not found: {path}")

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        app = self.server.app
        url = urlsplit(self.path)
        if url.path != "/api/search":
            return self._error(HTTPStatus.NOT_FOUND, f"not found: {url.path}")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self._error(HTTPStatus.LENGTH_REQUIRED, "the upload needs a Content-Length")
        limit = app.limits.max_upload_bytes
        if length > limit:
            left = length if length <= _DRAIN_LIMIT else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 2 ** 20))
                if not chunk:  # the client went away
                    break
                left -= len(chunk)
            self.close_connection = True
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the upload is {size_text(length)}; this demo takes images up to "
                               f"{size_text(limit)}")
        data = self.rfile.read(length)
        try:
            search = app.submit(data, dict(parse_qsl(url.query)))
        except UserError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        return self._json(HTTPStatus.CREATED, {"id": search.id, "url": f"/api/search/{search.id}"})


class DemoServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving a :class:`~pulse_ext.demo.app.DemoApp` on (host, port); port 0
    picks a free one (see :attr:`url`). ``serve_forever()`` to run, ``shutdown()`` from another thread."""

    daemon_threads = True

    def __init__(self, app, host: str = "127.0.0.1", port: int = 7860, verbose: bool = False):
        self.app = app
        self.verbose = verbose
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"

    def handle_error(self, request, client_address):  # a client that went away mid-response is no news
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

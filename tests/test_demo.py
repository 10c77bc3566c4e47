"""pulse-ext demo: the HTTP API without a browser (tests/test_demo_browser.py drives the page)."""
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo_helpers import running_demo
from pulse_ext.demo import DemoLimits


def _png(size=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _request(url, data=None):
    """(status, body bytes, content type) for a GET, or a POST of ``data``."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def _json(url, data=None):
    status, body, kind = _request(url, data)
    assert kind == "application/json", (status, body[:200])
    return status, json.loads(body)


def _wait(server, search_id, states=("done", "error"), timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, snapshot = _json(f"{server.url}api/search/{search_id}")
        assert status == 200
        if snapshot["state"] in states:
            return snapshot
        time.sleep(0.1)
    raise AssertionError(f"search {search_id} did not reach {states} in {timeout} s: {snapshot}")


def test_page_and_assets_are_served_with_no_outside_urls():
    with running_demo() as server:
        for path, kind in (("", "text/html"), ("static/demo.js", "text/javascript"), ("static/demo.css", "text/css")):
            status, body, content_type = _request(server.url + path)
            assert status == 200 and content_type.startswith(kind)
            text = body.decode()
            # no CDN: every script, style and image comes from this server
            assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert _request(server.url + "static/../../setup.py")[0] == 404
        assert _request(server.url + "static/app.py")[0] == 404
        status, config = _json(server.url + "api/config")
        assert status == 200 and config["generators"][0]["label"] == "default"
        assert config["align"] == {"available": False, "why_not": "alignment not set up in this test",
                                   "framings": ["ffhq", "utkface"], "default_framing": "utkface"}


def test_a_search_runs_and_its_outputs_downscale_to_the_input():
    from pulse_ext.pulse.losses import downscale
    from pulse_ext.upscale import image_to_tensor

    upload = _png()
    with running_demo(preview_every=2) as server:
        status, reply = _json(server.url + "api/search?restarts=3&steps=12&num_outputs=2&seed=7&name=face.png",
                              upload)
        assert status == 201
        snapshot = _wait(server, reply["id"])
        assert snapshot["state"] == "done", snapshot
        assert snapshot["options"]["seed"] == 7 and snapshot["step"] == 12 and len(snapshot["outputs"]) == 2
        l2s = [o["l2"] for o in snapshot["outputs"]]
        assert l2s == sorted(l2s) or not all(o["converged"] for o in snapshot["outputs"])
        target = image_to_tensor(upload)
        for output in snapshot["outputs"]:
            status, body, kind = _request(server.url + output["image"].lstrip("/"))
            assert status == 200 and kind == "image/png"
            image = Image.open(io.BytesIO(body))
            assert image.size == (64, 64)
            low = downscale(image_to_tensor(image), (16, 16), "area")
            l2 = float(((low - target) ** 2).mean())
            assert l2 == pytest.approx(output["l2"], rel=0.05, abs=2e-5)  # 8-bit PNG rounding only
            status, body, _ = _request(server.url + output["downscaled"].lstrip("/"))
            assert status == 200 and Image.open(io.BytesIO(body)).size == (16, 16)
        assert _request(server.url + snapshot["input"].lstrip("/"))[1] == _request(
            server.url + snapshot["searched"].lstrip("/"))[1]  # a 16x16 upload is searched as it is


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(monkeypatch):
    limits = DemoLimits(max_upload_bytes=20_000, max_restarts=4, max_steps=50)
    with running_demo(limits) as server:
        url = server.url + "api/search"
        cases = [
            (f"{url}?name=x.png", b"not an image", 400, "cannot read x.png: not an image format PIL knows"),
            (f"{url}?name=empty.png", b"", 400, "it is empty"),
            (f"{url}?restarts=5", _png(), 400, "restarts: expected 1 to 4, got 5"),
            (f"{url}?steps=abc", _png(), 400, "steps: expected a whole number, got 'abc'"),
            (f"{url}?restarts=2&num_outputs=3", _png(), 400, "num_outputs: 3 outputs need at least as many restarts"),
            (f"{url}?generator=/etc/passwd", _png(), 400, "generator: expected one of default"),
            (f"{url}?align=1", _png(), 400, "alignment is not available here"),
            (f"{url}?framing=wide", _png(), 400, "framing: expected one of ffhq, utkface"),
            (url, _png((128, 128)) + b"\0" * 30_000, 413, "this demo takes images up to"),
        ]
        for target, body, expected_status, message in cases:
            status, reply = _json(target, body)
            assert status == expected_status and message in reply["error"], (target, reply)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 16x16 upload counts as a bomb now
        status, reply = _json(url, _png())
        assert status == 400 and "decompression-bomb" in reply["error"]
        assert _json(server.url + "api/search/9-deadbeef")[0] == 404
        assert _json(server.url + "api/search/9-deadbeef/output/0.png")[0] == 404
        assert _json(server.url + "api/config")[0] == 200  # still serving


def test_searches_run_one_at_a_time_in_submission_order():
    with running_demo() as server:
        ids = []
        for seed, steps in enumerate((400, 20, 20)):  # the first is long enough for the others to wait
            status, reply = _json(f"{server.url}api/search?restarts=2&steps={steps}&num_outputs=1&seed={seed}", _png())
            assert status == 201
            ids.append(reply["id"])
        # while the first runs (or before it starts), the others wait with their place in the queue
        third = _json(f"{server.url}api/search/{ids[2]}")[1]
        assert third["state"] == "queued" and third["ahead"] == 2, third
        first = _wait(server, ids[0], states=("running", "done"))
        assert first["state"] in ("running", "done")
        if first["state"] == "running":
            assert _json(f"{server.url}api/search/{ids[1]}")[1]["ahead"] == 1
        finished = [_wait(server, i) for i in ids]
        assert [s["state"] for s in finished] == ["done"] * 3
        starts = [server.app.get(i).started for i in ids]
        ends = [server.app.get(i).finished for i in ids]
        assert starts[1] >= ends[0] and starts[2] >= ends[1]  # never two at once


def test_cli_demo_refuses_bad_options_in_one_line(capsys):
    from pulse_ext.cli import main

    assert main(["demo", "--port", "70000"]) == 2
    assert "--port: expected 0 to 65535, got 70000" in capsys.readouterr().err
    assert main(["demo", "--generator", "missing.pkl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pulse-ext: error:") and "missing.pkl" in err and err.count("\n") == 1
    assert main(["demo", "--no-default"]) == 2
    assert "--no-default needs at least one --generator" in capsys.readouterr().err


def test_align_searches_the_aligned_face_of_a_photo():
    """With dlib: the photo's face is aligned like `pulse-ext align` (the README's example input) and
    searched; an image with no face gets that message."""
    from test_align import _astronaut, _dlib_skip_reason

    if _dlib_skip_reason():
        pytest.skip(_dlib_skip_reason())
    from pulse_ext.align import FaceAligner

    photo = open(_astronaut(), "rb").read()
    with running_demo(aligner=FaceAligner()) as server:
        status, reply = _json(f"{server.url}api/search?align=1&restarts=2&steps=5&num_outputs=1&name=astronaut.png",
                              photo)
        assert status == 201
        snapshot = _wait(server, reply["id"])
        assert snapshot["state"] == "done" and snapshot["searched_size"] == [16, 16], snapshot
        assert snapshot["notes"][0] == "aligned (utkface framing) to 16x16"
        searched = np.asarray(Image.open(io.BytesIO(_request(server.url + snapshot["searched"].lstrip("/"))[1])),
                              dtype=np.int16)
        shipped = np.asarray(Image.open(Path(__file__).parent.parent / "examples/astronaut16.png").convert("RGB"), dtype=np.int16)
        assert np.abs(searched - shipped).max() <= 8  # as test_align: slack for other dlib / Pillow builds
        status, reply = _json(f"{server.url}api/search?align=1&name=flat.png", _png((64, 64)))
        snapshot = _wait(server, reply["id"])
        assert snapshot["state"] == "error" and snapshot["message"].startswith("no face found in flat.png")

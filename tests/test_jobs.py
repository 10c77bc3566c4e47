"""Folder jobs (``pulse-ext upscale IN_DIR -o OUT_DIR``): manifest, resume after a kill, per-image seeds,
per-image errors, input hardening, out-of-memory splitting. A 16-px random generator, 4x4 inputs."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_ext import jobs
from pulse_ext.pulse import batching
from conftest import reachable_targets, save_png
from pulse_ext.checkpoints import save_generator
from pulse_ext.cli import main
from pulse_ext.errors import UserError
from pulse_ext.io import read_image
from pulse_ext.stylegan2 import Generator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator():
    torch.manual_seed(0)
    return Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
                     mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32))


def make_faces(G, folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        save_png(reachable_targets(G, 1, seed=i)[0], folder / f"face{i}.png")


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "g.safetensors"
    save_generator(tiny_generator(), str(path))
    return str(path)


def job(generator, inputs, out, *extra, steps=10, restarts=2, seed=7):
    """argv of a job run. On the CPU: these tests compare runs bit for bit (a resumed job with an
    uninterrupted one, batch 3 with batch 1), which cuDNN does not promise across batch sizes."""
    return ["upscale", *map(str, inputs), "-o", str(out), "--generator", generator, "--steps", str(steps),
            "--restarts", str(restarts), "--seed", str(seed), "--device", "cpu", "-q", *extra]


def records(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# --------------------------------------------------------------------------------------------------

def test_image_seed_is_a_stable_hash():
    assert jobs.image_seed(1, "a.png") == jobs.image_seed(1, "a.png")
    assert len({jobs.image_seed(1, "a.png"), jobs.image_seed(2, "a.png"), jobs.image_seed(1, "b.png")}) == 3
    assert 0 <= jobs.image_seed(2 ** 63 - 1, "x") < 2 ** 63


def test_list_inputs(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"")
    (tmp_path / "d" / "sub").mkdir()
    assert [name for name, _ in jobs.list_inputs([tmp_path / "d"])] == ["a.jpg", "b.png"]
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="share the name 'b'"):
        jobs.list_inputs([tmp_path / "d", tmp_path / "b.jpg"])
    with pytest.raises(UserError, match="not found"):
        jobs.list_inputs([tmp_path / "missing"])


def test_folder_job_manifest_errors_and_resume(generator_file, tmp_path, capsys):
    make_faces(tiny_generator(), tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(job(generator_file, [tmp_path / "in"], out, "--batch", "2")) == 1  # 1: an input failed
    assert "broken.png" in capsys.readouterr().err
    rows = records(out)
    assert [r["input"] for r in rows] == ["broken.png", "face0.png", "face1.png", "face2.png"]
    assert rows[0]["error"].startswith("cannot read") and rows[0]["outputs"] == []
    for r in rows[1:]:
        assert r["error"] is None and r["outputs"] == [r["input"]] and (out / r["input"]).is_file()
        assert r["seed"] == jobs.image_seed(7, r["input"])
        assert {"loss", "converged", "time", "l2"} <= set(r)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # Again: nothing to do, nothing rewritten except the (merged) manifest.
    assert main(job(generator_file, [tmp_path / "in"], out)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "manifest.jsonl"} == \
        {k: v for k, v in stamps.items() if k != "manifest.jsonl"}
    assert records(out) == rows


def test_job_result_equals_single_file_run_with_the_image_seed(generator_file, tmp_path):
    make_faces(tiny_generator(), tmp_path / "in", 3)
    out = tmp_path / "out"
    assert main(job(generator_file, [tmp_path / "in"], out, "--batch", "3", restarts=3)) == 0
    seed = jobs.image_seed(7, "face1.png")
    single = tmp_path / "single.png"
    assert main(job(generator_file, [tmp_path / "in" / "face1.png"], single, restarts=3, seed=seed)) == 0
    assert np.abs(pixels(single).astype(int) - pixels(out / "face1.png")).max() <= 1


def test_folder_job_caps_cpu_batches_at_the_efficient_size(generator_file, tmp_path, monkeypatch, capsys):
    """Batches over cpu_efficient_rows restarts are slower per restart on the CPU: a folder job searches
    them in parts of that size, says so, and writes the images it writes uncapped."""
    from pulse_ext.pulse import batching

    caps = []
    split = batching.search_split

    def recording_split(search, targets, seeds, max_rows, **kwargs):
        caps.append(max_rows)
        return split(search, targets, seeds, max_rows, **kwargs)

    monkeypatch.setattr(batching, "search_split", recording_split)
    make_faces(tiny_generator(), tmp_path / "in", 2)
    assert main(job(generator_file, [tmp_path / "in"], tmp_path / "whole", "--batch", "2", restarts=3)) == 0
    assert caps[-1] is None or caps[-1] >= 6  # 2 inputs x 3 restarts in one batch
    monkeypatch.setattr(batching, "CPU_EFFICIENT_BATCH_BYTES", 2 * batching.activation_bytes(tiny_generator()))
    argv = [a for a in job(generator_file, [tmp_path / "in"], tmp_path / "capped", "--batch", "2", restarts=3)
            if a != "-q"]
    assert main(argv) == 0
    assert caps[-1] == 2
    assert "at most 2 restarts per batch: larger batches are slower per restart on the CPU" in capsys.readouterr().err
    for name in ("face0.png", "face1.png"):
        assert np.abs(pixels(tmp_path / "whole" / name).astype(int) - pixels(tmp_path / "capped" / name)).max() <= 1


def test_partial_manifest_line_and_missing_output_are_redone(generator_file, tmp_path):
    make_faces(tiny_generator(), tmp_path / "in", 3)
    out = tmp_path / "out"
    # --batch 1 both times: float32 results depend (slightly) on the batch a search ran in.
    assert main(job(generator_file, [tmp_path / "in"], out, "--batch", "1")) == 0
    first = records(out)
    # A crash mid-append leaves a partial line; face2's output was lost.
    kept = [r for r in first if r["input"] != "face2.png"]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"input": "face2.png", "outp')
    (out / "face2.png").unlink()
    before = (out / "face0.png").stat().st_mtime_ns
    assert main(job(generator_file, [tmp_path / "in"], out, "--batch", "1")) == 0
    again = records(out)
    assert [r["input"] for r in again] == ["face0.png", "face1.png", "face2.png"]
    assert (out / "face2.png").is_file() and (out / "face0.png").stat().st_mtime_ns == before
    assert again[2]["loss"] == first[2]["loss"] and again[2]["seed"] == first[2]["seed"]


def test_inputs_of_every_kind(generator_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray((rng.random((4, 4)) * 65535).astype(np.uint16)).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    Image.fromarray(rgb[:, :2].repeat(2, 1)).save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(rgb).resize((6, 5)).save(folder / "odd.png")  # no integer factor: exact area averaging
    Image.fromarray(rgb).resize((20, 20)).save(folder / "big.png")  # larger than the 16-px generator
    out = tmp_path / "out"
    assert main(job(generator_file, [folder], out, "--batch", "5", steps=3)) == 1  # big.png: a per-image error
    records_by_input = {r["input"]: r for r in records(out)}
    assert sorted(name for name, r in records_by_input.items() if r["error"] is None) == \
        ["deep16.png", "gray.png", "odd.png", "palette.png", "rgba.png", "rotated.jpg"]
    assert "must not be larger" in records_by_input["big.png"]["error"]
    with Image.open(out / "odd.png") as odd:
        assert odd.size == (16, 16)


def test_decompression_bomb_is_a_per_image_error(generator_file, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    make_faces(tiny_generator(), folder, 1)
    Image.new("RGB", (64, 64)).save(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 = 4096 > 2 * 1000: an error; 16 pixels fine
    with pytest.raises(UserError, match="decompression-bomb"):
        read_image(str(folder / "huge.png"))
    Image.new("RGB", (40, 40)).save(folder / "big.png")  # 1600: PIL only warns; still refused
    with pytest.raises(UserError, match="decompression-bomb"):
        read_image(str(folder / "big.png"))
    out = tmp_path / "out"
    assert main(job(generator_file, [folder], out, steps=2)) == 1
    errors = {r["input"]: r["error"] for r in records(out)}
    assert errors["face0.png"] is None and "decompression-bomb" in errors["huge.png"]


def test_unwritable_output_fails_before_searching(generator_file, tmp_path, capsys):
    make_faces(tiny_generator(), tmp_path / "in", 1)
    (tmp_path / "file").write_text("x")
    assert main(job(generator_file, [tmp_path / "in"], tmp_path / "file" / "out")) == 2
    assert "is a file" in capsys.readouterr().err
    # Existing outputs and no manifest to resume from: refused (not silently overwritten).
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "face0.png").write_bytes(b"mine")
    assert main(job(generator_file, [tmp_path / "in"], tmp_path / "out")) == 2
    assert (tmp_path / "out" / "face0.png").read_bytes() == b"mine"
    assert main(job(generator_file, [tmp_path / "in"], tmp_path / "out", "--save-all")) == 2


def test_align_without_dlib_is_one_line(generator_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dlib", None)
    make_faces(tiny_generator(), tmp_path / "in", 1)
    assert main(job(generator_file, [tmp_path / "in" / "face0.png"], tmp_path / "out", "--align")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'pulse_ext[align]'" in err[0]


# --------------------------------------------------------------------------------------------------
# out-of-memory splitting

def test_oom_split_merges_to_the_unsplit_result():
    from pulse_ext.pulse.search import PULSE

    G = tiny_generator().double()
    searcher = PULSE(G, steps=6, stats_samples=2000, drop_converged=False)
    targets = torch.rand(3, 3, 4, 4, dtype=torch.float64)
    seeds = [[10 * b + r for r in range(4)] for b in range(3)]
    calls = []

    def search(x, s):
        rows = len(s) * len(s[0])
        calls.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("fake: CUDA out of memory")
        return searcher.search(x, seeds=s)

    messages = []
    split = batching.search_split(search, targets, seeds, on_split=messages.append)
    whole = searcher.search(targets, seeds=seeds)
    assert calls[0] == 12 and max(calls[1:]) <= 6 and "out of memory" in messages[0]
    assert split.seeds == whole.seeds and split.images.shape == whole.images.shape
    for key in ("images", "l2", "loss", "latents"):
        torch.testing.assert_close(getattr(split, key), getattr(whole, key), rtol=1e-9, atol=1e-9)
    assert torch.equal(split.converged, whole.converged)
    # A cap from free memory splits up front, without waiting for an error.
    calls.clear()
    capped = batching.search_split(search, targets, seeds, max_rows=2)
    assert max(calls) <= 2
    torch.testing.assert_close(capped.images, whole.images, rtol=1e-9, atol=1e-9)
    # One row that does not fit is a real error.
    with pytest.raises(torch.OutOfMemoryError):
        batching.search_split(lambda x, s: (_ for _ in ()).throw(torch.OutOfMemoryError("fake")), targets[:1], [[1]])


def test_cpu_rows_are_capped_from_the_estimate_and_the_available_memory(monkeypatch):
    from pulse_ext.pulse import batching

    G = tiny_generator()
    assert batching.probe_row_bytes(None, (3, 4, 4), "cpu") is None  # measuring is for CUDA
    # one sample's synthesis-layer outputs: 32 channels at 4, 8, 8, 16, 16 px (fp32)
    assert batching.activation_bytes(G) == 32 * (4 ** 2 + 2 * 8 ** 2 + 2 * 16 ** 2) * 4
    assert batching.cpu_row_bytes(G) == 5 * batching.activation_bytes(G)
    assert batching.cpu_row_bytes(G, "reference") == 2 * batching.cpu_row_bytes(G)
    monkeypatch.setattr(batching, "available_cpu_bytes", lambda: 10_000)
    assert jobs.rows_that_fit(1_000, "cpu") == 8 and jobs.rows_that_fit(50_000, "cpu") == 1
    assert jobs.rows_that_fit(None, "cpu") is None
    monkeypatch.setattr(batching, "available_cpu_bytes", lambda: None)  # not Linux: no cap
    assert jobs.rows_that_fit(1_000, "cpu") is None


def test_available_cpu_bytes_reads_meminfo():
    from pulse_ext.pulse import batching

    available = batching.available_cpu_bytes()
    if not os.path.exists("/proc/meminfo"):
        assert available is None
    else:
        assert available is not None and 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --------------------------------------------------------------------------------------------------
# kill and resume

def test_kill_midway_and_resume(generator_file, tmp_path):
    make_faces(tiny_generator(), tmp_path / "in", 6)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pulse_ext", *job(generator_file, [tmp_path / "in"], out, "--batch", "1",
                                                    steps=60, restarts=2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            if manifest.exists() and jobs.read_records(manifest):
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    first = {r["input"]: r for r in jobs.read_records(manifest)}
    assert first, "the job wrote no record before it was killed"
    assert len(first) < 6, "the job finished before it could be killed (make it slower)"
    done_stamps = {name: (out / name).stat().st_mtime_ns for name in first}

    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = records(out)
    assert [r["input"] for r in rows] == [f"face{i}.png" for i in range(6)]  # one valid line per input
    assert all(r["error"] is None and (out / r["outputs"][0]).is_file() for r in rows)
    for name, record in first.items():  # finished before the kill: not redone
        assert (out / name).stat().st_mtime_ns == done_stamps[name]
        assert next(r for r in rows if r["input"] == name) == record
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

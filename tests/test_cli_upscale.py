"""``pulse-ext upscale``: through main([...]) and through ``python -m pulse_ext``, on a 16-px random generator."""
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_ext.checkpoints import save_generator
from pulse_ext.cli import main
from pulse_ext.io import atomic_write, read_image
from pulse_ext.upscale import nearest_valid_size, resized_size
from conftest import reachable_targets, save_png, tiny_search_generator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved 16-px generator and a 4x4 PNG made by area-downscaling one of its samples."""
    folder = tmp_path_factory.mktemp("upscale")
    G = tiny_search_generator()
    generator = str(folder / "g.safetensors")
    save_generator(G, generator)
    face = str(folder / "face.png")
    save_png(reachable_targets(G, 1)[0], face)
    return {"generator": generator, "face": face}


def upscale(files, *args, steps=100, restarts=3, seed=1):
    """argv for ``pulse-ext upscale``; options in ``args`` come last, so they override these defaults."""
    return ["upscale", "--generator", files["generator"], "--steps", str(steps), "--restarts", str(restarts),
            "--seed", str(seed), *args]


def run_main(argv):
    """main(argv) -> exit code (argparse's own errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def as_array(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255


def area_downscale(array, factor):
    h, w, c = array.shape
    return array.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def assert_one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pulse-ext: error: "), err
    assert "Traceback" not in err


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".pulse-ext"))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-specific")
def test_command_line_keeps_freed_memory_in_the_process():
    code = "from pulse_ext.cli import tune_glibc_malloc; print(tune_glibc_malloc())"

    def applied(**env):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                env={**os.environ, **env})
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert applied() == "True"
    assert applied(MALLOC_TRIM_THRESHOLD_="131072") == "False"  # the user's own setting wins


def test_bf16_precision_from_the_command_line(files, tmp_path, capsys):
    out = tmp_path / "face_bf16.png"
    assert run_main(upscale(files, files["face"], "-o", str(out), "--precision", "bf16", "--quiet")) == 0
    meta = json.loads((tmp_path / "face_bf16.json").read_text())
    assert meta["options"]["precision"] == "bf16" and "coarse_search_s" in meta["timings"]
    # The written picture (the fp32 render) downscales back to the input.
    assert ((area_downscale(as_array(out), 4) - as_array(files["face"])) ** 2).mean() < 3e-3


def test_success_writes_image_and_metadata(files, tmp_path, capsys):
    out = tmp_path / "face_hr.png"
    assert run_main(upscale(files, files["face"], "-o", str(out))) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "best L2" in err  # the 'wrote' line and the progress bar, on stderr
    hr = as_array(out)
    assert hr.shape == (16, 16, 3)
    assert ((area_downscale(hr, 4) - as_array(files["face"])) ** 2).mean() < 3e-3
    meta = json.loads((tmp_path / "face_hr.json").read_text())
    assert meta["input"] == files["face"] and meta["outputs"] == [str(out)]
    assert meta["input_size"] == [4, 4] and meta["resized"] is False
    assert meta["seed"] == 1 and 1 <= meta["steps_run"] <= 100 and meta["converged"] is True
    [candidate] = meta["candidates"]
    assert candidate["converged"] and candidate["l2"] < 2e-3 and candidate["path"] == str(out)
    assert len(meta["restarts"]) == 3 and all({"seed", "l2", "converged"} <= set(r) for r in meta["restarts"])
    assert meta["generator"]["resolution"] == 16 and meta["generator"]["checkpoint"] == files["generator"]
    assert meta["options"]["restarts"] == 3 and meta["options"]["downscale"] == "area"
    assert {"search_s", "total_s", "generator_load_s"} <= set(meta["timings"])
    assert leftovers(tmp_path) == []

    # Existing outputs are kept unless --overwrite.
    before = out.read_bytes()
    assert run_main(upscale(files, files["face"], "-o", str(out), "--quiet")) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == before
    assert run_main(upscale(files, files["face"], "-o", str(out), "--quiet", "--overwrite", "--steps", "2")) == 0
    err = capsys.readouterr().err.splitlines()  # --quiet: only the non-convergence warning remains
    assert len(err) == 1 and err[0].startswith("pulse-ext: warning: ") and "no restart of 3 reached" in err[0]
    assert json.loads((tmp_path / "face_hr.json").read_text())["steps_run"] == 2


def test_num_outputs_and_save_all_give_distinct_files(files, tmp_path, capsys):
    out = tmp_path / "results"
    assert run_main(upscale(files, files["face"], "-o", str(out), "--num-outputs", "3", "--save-all", "-q")) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["face.json", "face.restart00.png", "face.restart01.png", "face.restart02.png",
                     "face_1.png", "face_2.png", "face_3.png"]
    images = [as_array(out / f"face_{k}.png") for k in (1, 2, 3)]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2]) \
        and not np.array_equal(images[0], images[2])
    meta = json.loads((out / "face.json").read_text())
    assert [c["path"] for c in meta["candidates"]] == [str(out / f"face_{k}.png") for k in (1, 2, 3)]
    assert sorted(c["restart"] for c in meta["candidates"]) == [0, 1, 2]
    assert [r["path"] for r in meta["restarts"]] == [str(out / f"face.restart0{r}.png") for r in range(3)]


def test_all_restarts_runs_every_restart_and_the_default_stops_at_the_first_converged(files, tmp_path):
    metas = {}
    for name, extra in (("default", []), ("all", ["--all-restarts"])):
        out = tmp_path / f"face_{name}.png"
        assert run_main(upscale(files, files["face"], "-o", str(out), "-q", "--restarts", "6", *extra)) == 0
        metas[name] = json.loads((tmp_path / f"face_{name}.json").read_text())
    assert metas["all"]["options"]["all_restarts"] is True and metas["default"]["options"]["all_restarts"] is False
    assert all(r["converged"] for r in metas["all"]["restarts"])
    assert 1 <= sum(r["converged"] for r in metas["default"]["restarts"]) < 6
    assert metas["default"]["steps_run"] < metas["all"]["steps_run"] and metas["default"]["converged"] is True


def test_save_intermediate_writes_an_animated_gif(files, tmp_path):
    out = tmp_path / "face_hr.png"
    args = upscale(files, files["face"], "-o", str(out), "-q", "--save-intermediate", "--intermediate-every", "2",
                   "--eps", "0", "--steps", "8", "--restarts", "2")
    assert run_main(args) == 0  # eps 0: never converges, warned, not --strict
    gif = tmp_path / "face_hr.search.gif"
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.size == (16, 16)
        assert getattr(image, "n_frames", 1) == 4 and image.is_animated
    meta = json.loads((tmp_path / "face_hr.json").read_text())
    assert meta["intermediate"] == {"path": str(gif), "frames": 4, "steps": [2, 4, 6, 8]}


def test_multiple_inputs_with_resize(files, tmp_path, capsys):
    big = tmp_path / "big.jpg"
    Image.open(files["face"]).convert("RGB").resize((20, 10)).save(big)  # wider than the 16-px generator
    out = tmp_path / "out"
    argv = upscale(files, files["face"], str(big), "-o", str(out), "--steps", "2", "-q")
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "big.jpg is 20x10" in err and "must not be larger" in err and "--resize to resize it to 16x8" in err
    assert run_main(argv + ["--resize"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["big.json", "big.png", "face.json", "face.png"]
    meta = json.loads((out / "big.json").read_text())
    assert meta["input_size"] == [20, 10] and meta["searched_size"] == [16, 8] and meta["resized"] is True
    assert nearest_valid_size((20, 20), 1024) == 16 and nearest_valid_size((30, 30), 1024) == 32
    assert resized_size((20, 10), 16, "area") == (16, 8) and resized_size((5, 5), 16, "bicubic") == (4, 4)


def test_sizes_that_do_not_divide_the_resolution(files, tmp_path, capsys):
    """Area downscaling takes a 5x5 input for the 16-px generator as it is; bicubic needs --resize."""
    odd = tmp_path / "odd.png"
    Image.open(files["face"]).convert("RGB").resize((5, 5), Image.Resampling.BOX).save(odd)
    out = tmp_path / "out"
    assert run_main(upscale(files, str(odd), "-o", str(out), "--steps", "2", "-q")) == 0
    meta = json.loads((out / "odd.json").read_text())
    assert meta["searched_size"] == [5, 5] and meta["resized"] is False
    with Image.open(out / "odd.png") as result:
        assert result.size == (16, 16)
    capsys.readouterr()  # (2 steps do not converge: a warning)
    argv = upscale(files, str(odd), "-o", str(tmp_path / "bicubic"), "--steps", "2", "-q", "--downscale", "bicubic")
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "integer factor" in err and "--resize to resize it to 4x4" in err
    assert not (tmp_path / "bicubic").exists()


def test_strict_without_convergence_exits_1_and_still_writes_the_best(files, tmp_path, capsys):
    out = tmp_path / "best.png"
    assert run_main(upscale(files, files["face"], "-o", str(out), "--eps", "1e-12", "--steps", "3",
                            "--strict", "-q")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("pulse-ext: warning: ") and "no restart of 3 reached L2 < eps" in err[0]
    assert err[-1].startswith("pulse-ext: error: --strict") and len(err) == 2
    assert out.exists() and as_array(out).shape == (16, 16, 3)
    meta = json.loads((tmp_path / "best.json").read_text())
    assert meta["converged"] is False and meta["candidates"][0]["converged"] is False
    # Without --strict the same run succeeds, with the warning.
    assert run_main(upscale(files, files["face"], "-o", str(out), "--eps", "1e-12", "--steps", "3", "-q",
                            "--overwrite")) == 0
    assert "warning" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "not-an-image", "wrong-size", "bad-int", "bad-choice", "bad-loss",
                                  "bad-device", "unknown-option", "too-many-outputs", "file-for-many", "unwritable",
                                  "unwritable-folder", "no-generator"])
def test_user_errors_exit_2_with_one_line_and_write_nothing(files, tmp_path, capsys, case):
    out = tmp_path / "out"
    inputs, extra, generator_files = [files["face"]], [], files
    if case == "missing":
        inputs = [str(tmp_path / "nope.png")]
    elif case == "not-an-image":
        (tmp_path / "text.png").write_text("hello")
        inputs = [str(tmp_path / "text.png")]
    elif case == "wrong-size":
        Image.new("RGB", (20, 4)).save(tmp_path / "wide.png")  # wider than the 16-px generator
        inputs = [str(tmp_path / "wide.png")]
    elif case == "bad-int":
        extra = ["--num-outputs", "0"]
    elif case == "bad-choice":
        extra = ["--downscale", "nearest"]
    elif case == "bad-loss":
        extra = ["--loss", "100*L3"]
    elif case == "bad-device":
        extra = ["--device", "gpu7"]
    elif case == "unknown-option":
        extra = ["--bogus"]
    elif case == "too-many-outputs":
        extra = ["--num-outputs", "4"]
    elif case == "file-for-many":
        out = tmp_path / "one.png"
        extra = ["--num-outputs", "2"]
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("not a folder")
        out = tmp_path / "a_file" / "face.png"
    elif case == "unwritable-folder":
        (tmp_path / "a_file").write_text("not a folder")
        out = tmp_path / "a_file" / "results" / "faces"
    elif case == "no-generator":
        generator_files = dict(files, generator=str(tmp_path / "missing.safetensors"))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_main(upscale(generator_files, *inputs, "-o", str(out), *extra)) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, not even the output folder


def test_failure_while_writing_leaves_no_partial_file(files, tmp_path, capsys, monkeypatch):
    def broken_save(self, fp, format=None, **params):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    out = tmp_path / "face_hr.png"
    assert run_main(upscale(files, files["face"], "-o", str(out), "--steps", "2", "--eps", "1", "-q",
                            "--realism-check", "off")) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "No space left on device" in err
    assert list(tmp_path.iterdir()) == []

    target = tmp_path / "x.json"
    target.write_text("old")
    def interrupted(tmp):
        with open(tmp, "w") as f:
            f.write("new, partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_read_image_converts_modes_and_honours_exif(tmp_path):
    rgb = Image.fromarray(np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10)  # 4 wide, 2 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgb.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    rotated = read_image(str(tmp_path / "rotated.jpg"))
    assert rotated.mode == "RGB" and rotated.size == (2, 4)

    rgb.convert("L").save(tmp_path / "gray.png")
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    rgb.convert("P").save(tmp_path / "palette.gif")
    for name in ("gray.png", "rgba.png", "palette.gif"):
        image = read_image(str(tmp_path / name))
        assert image.mode == "RGB" and image.size == (4, 2), name
    np.testing.assert_array_equal(np.asarray(read_image(str(tmp_path / "rgba.png"))), np.asarray(rgb))
    gray = np.asarray(read_image(str(tmp_path / "gray.png")))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pulse_ext", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_python_dash_m(files, tmp_path):
    out = tmp_path / "sub"
    proc = run_cli(*upscale(files, files["face"], "-o", str(out), "--steps", "5", "--restarts", "2"))
    assert proc.returncode == 0, proc.stderr
    assert (out / "face.png").exists() and json.loads((out / "face.json").read_text())["steps_run"] == 5
    assert "Traceback" not in proc.stderr and "face.png" in proc.stderr  # the progress bar's label

    proc = run_cli(*upscale(files, str(tmp_path / "missing.png"), "-o", str(out)))
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr)
    assert "input not found" in proc.stderr


def test_search_callback_sees_progress_and_costs_nothing_when_unused(files, monkeypatch):
    from pulse_ext.checkpoints import load_generator
    from pulse_ext.pulse.search import PULSE, SearchProgress

    G = load_generator(files["generator"])
    target = torch.from_numpy(as_array(files["face"])).permute(2, 0, 1).float()[None]
    searcher = PULSE(G, steps=7, stats_samples=1000, sync_every=3)
    calls = []

    def callback(state):
        assert isinstance(state, SearchProgress)
        calls.append((state.step, state.final, state.images.shape, state.converged.shape, state.ranking(0)))

    with_callback = searcher.search(target, restarts=2, seed=3, callback=callback, callback_every=2)
    assert [c[0] for c in calls] == [2, 4, 6, 7] and [c[1] for c in calls] == [False, False, False, True]
    assert all(c[2] == (1, 2, 3, 16, 16) and c[3] == (1, 2) for c in calls)
    monkeypatch.setattr(PULSE, "_snapshot", staticmethod(lambda *a: pytest.fail("snapshot without a callback")))
    without = searcher.search(target, restarts=2, seed=3)
    assert torch.equal(with_callback.images, without.images) and torch.equal(with_callback.l2, without.l2)
    with pytest.raises(ValueError, match="callback_every"):
        searcher.search(target, restarts=2, seed=3, callback=callback, callback_every=0)


def test_busy_cores_sees_a_running_process():
    from pulse_ext.runtime import busy_cores

    idle = busy_cores()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores() >= min(idle + 1, 1)  # at least the spinner (other load may come and go)
    finally:
        spinner.kill()
        spinner.wait()


def test_threads_option(monkeypatch):
    from pulse_ext import runtime
    from pulse_ext.cli_upscale import _threads_option
    from pulse_ext.runtime import apply_thread_setting

    threads = torch.get_num_threads()
    try:
        assert apply_thread_setting(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(runtime, "busy_cores", lambda: 50)  # every core busy
        assert apply_thread_setting("auto") == 1
        monkeypatch.setattr(runtime, "busy_cores", lambda: 0)
        assert apply_thread_setting("auto") == min(threads, os.cpu_count())
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's explicit setting wins
        torch.set_num_threads(2)
        assert apply_thread_setting("auto") == 2
    finally:
        torch.set_num_threads(threads)
    assert _threads_option("auto") == "auto" and _threads_option("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(Exception, match="positive integer or 'auto'"):
            _threads_option(bad)


def test_restarts_that_do_not_fit_the_memory_are_announced_before_the_search(files, tmp_path, capsys, monkeypatch):
    from pulse_ext.pulse import batching

    monkeypatch.setattr(batching, "available_cpu_bytes", lambda: 1)  # room for one restart at a time
    out = tmp_path / "out.png"
    # The CPU caps restarts by memory before searching (CUDA splits on an out-of-memory error instead).
    assert run_main(upscale(files, files["face"], "-o", str(out), "--device", "cpu", steps=3, restarts=3)) == 0
    err = capsys.readouterr().err
    assert "3 restarts need about" in err and "1 fit the memory available now: searching them in batches" in err
    assert err.index("searching them in batches") < err.index("best L2")  # before the search's progress bar
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert len(metadata["restarts"]) == 3 and out.exists()


def test_framing_search_and_diagnosis_land_in_the_json(files, tmp_path, capsys):
    out = tmp_path / "framed.png"
    assert run_main(upscale(files, files["face"], "-o", str(out), "--framing-search", "--steps", "20", "-q")) == 0
    meta = json.loads((tmp_path / "framed.json").read_text())
    box = meta["frame_box"]
    assert set(box) == {"left", "top", "side"} and 2 <= box["side"] <= 4
    assert {(r["left"], r["top"], r["side"]) for r in meta["framing_probe"]} >= {(0, 0, 4)}
    assert meta["options"]["framing_search"] is True
    diagnosis = meta["diagnosis"]
    assert diagnosis["met_eps"] == meta["converged"] and diagnosis["ok"] == (not diagnosis["problems"])
    if not diagnosis["ok"]:  # advice never repeats the option in use
        assert "--framing-search" not in diagnosis["advice"]
        assert "Try: " in capsys.readouterr().err


def test_framing_search_is_refused_for_folder_jobs(files, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    save_png(torch.rand(3, 4, 4), str(folder / "a.png"))
    assert run_main(upscale(files, str(folder), "-o", str(tmp_path / "out"), "--framing-search")) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "--framing-search is not supported for folder jobs" in err
    assert not (tmp_path / "out").exists()


def test_realism_check_option_is_validated(files, tmp_path, capsys):
    assert run_main(upscale(files, files["face"], "-o", str(tmp_path / "x.png"), "--realism-check", "maybe")) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "--realism-check" in err and "'maybe'" in err
    assert not (tmp_path / "x.png").exists()


def test_intermediate_search_from_the_command_line(files, tmp_path, capsys):
    out = tmp_path / "ilo.png"
    assert run_main(upscale(files, files["face"], "-o", str(out), "--intermediate", "8,16", "--intermediate-steps",
                            "4", "--steps", "10", "-q", "--realism-check", "off")) == 0
    meta = json.loads((tmp_path / "ilo.json").read_text())
    assert meta["options"]["intermediate"] == [8, 16] and meta["steps_run"] <= 10 + 4 + 4
    assert set(meta["timings"]["intermediate"]) <= {"8", "16"}
    capsys.readouterr()  # (10 steps: the no-eps warning)
    for bad, message in ((["--intermediate", "32"], "--intermediate: 32 is not a block resolution"),
                         (["--intermediate", "8,x"], "expected block resolutions like 8 or 8,16")):
        assert run_main(upscale(files, files["face"], "-o", str(tmp_path / "bad.png"), *bad)) == 2
        err = capsys.readouterr().err
        assert_one_error_line(err)
        assert message in err
        assert not (tmp_path / "bad.png").exists()

"""bench_e2e runs in a tiny mode and its paths (fused, fused_onednn, reference, grouped) agree. No timing assertions."""
import json
import os
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCH)
    try:
        import bench_e2e
        yield bench_e2e
    finally:
        sys.path.remove(BENCH)


def test_flop_model_matches_config_f():
    sys.path.insert(0, BENCH)
    try:
        import flops
    finally:
        sys.path.remove(BENCH)
    macs = flops.synthesis_macs(1024, 32768, 512)["total"]
    assert abs(macs / 75.5e9 - 1) < 0.01  # DESIGN.md §6
    assert flops.step_flops(1024, 32768, 512) == 4 * macs


def test_grouped_modconv_matches_reference(bench):
    from grouped_modconv import grouped_modulated_conv2d
    from pulse_ext.ops import reference
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 8, 6, 6), torch.randn(5, 8, 3, 3), torch.randn(3, 8)
    for up in (1, 2):
        for demod in (True, False):
            torch.testing.assert_close(grouped_modulated_conv2d(x, weight, styles, demodulate=demod, up=up),
                                       reference.modulated_conv2d(x, weight, styles, demodulate=demod, up=up),
                                       rtol=1e-5, atol=1e-5)


def test_bench_e2e_tiny_run_paths_agree(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "write_results", lambda name, device, rows, columns, notes, extra=None: str(tmp_path / f"{name}.md"))
    threads, cpu_conv = torch.get_num_threads(), os.environ.get("PULSE_EXT_CPU_CONV")
    try:
        rows = bench.main(["--device", "cpu", "--threads", "1", "--sizes", "16", "--restarts", "2", "--steps", "2",
                           "--inprocess", "--no-cli"])
    finally:
        torch.set_num_threads(threads)
    assert [r["path"] for r in rows] == ["fused", "fused_onednn", "reference", "grouped"]
    assert all(r["status"] == "ok" and r["s_per_step"] > 0 and r["TFLOPs"] > 0 for r in rows)
    assert all(r["max_rel_diff_vs_ref"] < 1e-4 for r in rows if r["path"] != "reference")
    # same seeds, same search: every path reaches the same loss
    l2 = [r["best_l2"] for r in rows]
    assert max(l2) - min(l2) < 1e-4 * max(l2)
    assert all(f"fused_vs_{other}" in rows[0] for other in ("fused_onednn", "reference", "grouped"))
    assert os.environ.get("PULSE_EXT_CPU_CONV") == cpu_conv  # fused_onednn's setting stays in its configuration
    json.dumps(rows)


def test_plot_e2e_draws_the_results_and_rejects_a_missing_file(bench, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e '.[test]' brings it)")
    import plot_e2e

    rows = [dict(size=16, R=r, path=path, variant="base", status="ok", restart_steps_per_s=float(r * k))
            for r in (1, 4) for k, path in enumerate(("fused", "reference"), start=1)]
    results = tmp_path / "e2e-cpu.json"
    results.write_text(json.dumps({"machine": {"device": "cpu", "date": "2026-11-29"}, "rows": rows}))
    out = tmp_path / "plot.png"
    assert plot_e2e.main([str(results), "-o", str(out)]) == 0
    from PIL import Image
    with Image.open(out) as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert not list(tmp_path.glob("*.tmp.png"))
    assert plot_e2e.main([str(tmp_path / "absent.json")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_profile_step_writes_its_table(bench, tmp_path):
    """benchmarks/profile_step.py on a tiny generator: the table names our ops and the step time is recorded."""
    import profile_step
    out = tmp_path / "profile.md"
    threads = torch.get_num_threads()
    try:
        profile_step.main(["--device", "cpu", "--size", "16", "--restarts", "2", "--steps", "2", "--threads", "1",
                           "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "pulse_ext::modulated_conv2d" in text and "s per step" in text
    assert "Input Shapes" not in text


def test_profile_step_by_shape_names_the_layers(bench, tmp_path):
    """--by-shape: one row per op and input shapes, so the 16-px layer's [2, C, 16, 16] input is listed."""
    import profile_step
    out = tmp_path / "profile.md"
    threads = torch.get_num_threads()
    try:
        profile_step.main(["--device", "cpu", "--size", "16", "--restarts", "2", "--steps", "2", "--threads", "1",
                           "--by-shape", "--rows", "200", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "Input Shapes" in text and "--by-shape" in text
    assert any("pulse_ext::modulated_conv2d" in line and ", 16, 16]" in line for line in text.splitlines())


def test_gpu_check_refuses_an_unknown_step_before_doing_anything(tmp_path):
    """gpu_check.sh STEP...: a misspelt step name stops it at once (exit 2, the known names listed),
    before it builds anything or spends device time."""
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_check.sh")
    proc = subprocess.run(["bash", script, "tests", "sanitiser"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown step 'sanitiser'" in proc.stderr and "sanitizer" in proc.stderr


def test_bench_search_options_times_every_configuration(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import bench_search_options
    from pulse_ext.checkpoints import save_generator
    from conftest import tiny_search_generator

    generator = str(tmp_path / "g.safetensors")
    save_generator(tiny_search_generator(), generator)
    out = tmp_path / "options.json"
    assert bench_search_options.main(["--generator", generator, "--steps", "3", "--repeats", "1",
                                      "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["median_s"]) == {"plain", "framing_search", "intermediate_8_16",
                                       "framing_search+intermediate_8_16"}
    assert result["ratio_to_plain"]["plain"] == 1.0 and all(v > 0 for v in result["median_s"].values())


def test_bench_ops_reports_the_spread_over_interleaved_rounds():
    """bench_ops.bench times both paths in every round and reports medians, minima and the speed-up's range
    (consistency of the report only; no timing is asserted)."""
    sys.path.insert(0, BENCH)
    try:
        import bench_ops
    finally:
        sys.path.remove(BENCH)
    x = torch.randn(64, 64, requires_grad=True)
    once = lambda: (x @ x).tanh()  # noqa: E731
    twice = lambda: ((x @ x) @ x).tanh() + (x @ x).tanh()  # noqa: E731
    out = bench_ops.bench(once, twice, torch.device("cpu"), backward_inputs=[x], reps_seconds=0.0, repeats=3)
    for p in ("fwd", "fwdbwd"):
        low, high = out[f"speedup_{p}_range"]
        assert low <= out[f"speedup_{p}"] <= high
        assert out[f"speedup_{p}_spread"] == f"{low:.2f}-{high:.2f}"
        for impl in ("fused", "reference"):
            assert 0 < out[f"{impl}_{p}_min_ms"] <= out[f"{impl}_{p}_ms"]


def test_roofline_tiny_run_covers_every_layer(bench, tmp_path, monkeypatch):
    import flops
    import roofline
    monkeypatch.setattr(roofline, "write_results", lambda name, device, rows, columns, notes, extra=None: str(tmp_path / f"{name}.md"))
    threads = torch.get_num_threads()
    try:
        rows, steps = roofline.main(["--device", "cpu", "--threads", "1", "--size", "16", "--restarts", "1,2",
                                     "--rounds", "1", "--steps", "1"])
    finally:
        torch.set_num_threads(threads)
    cfg = bench.config_for(16)
    layers = flops.synthesis_layers(16, cfg["channel_base"], cfg["channel_max"])
    assert [(s["precision"], s["R"]) for s in steps] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    for precision, r in [(s["precision"], s["R"]) for s in steps]:
        mine = [row for row in rows if row["precision"] == precision and row["R"] == r]
        assert [row["layer"] for row in mine] == [layer["name"] for layer in layers]
        # the per-layer FLOPs add up to the whole step's FLOP model
        total = sum(row["GFLOP"] for row in mine) * 1e9
        assert abs(total / (r * flops.step_flops(16, cfg["channel_base"], cfg["channel_max"])) - 1) < 1e-9
        assert all(row["bound"] in ("compute", "memory") and row["measured_ms"] > 0 for row in mine)
    assert all(s["s_per_step"] > 0 and s["layers_s"] > 0 for s in steps)


def test_bench_upscale_tiny_run_compares_the_same_search(bench, tmp_path, monkeypatch):
    import bench_upscale
    monkeypatch.setattr(bench_upscale, "write_results", lambda name, device, rows, columns, notes: str(tmp_path / f"{name}.md"))
    rows = bench_upscale.main(["--size", "16", "--restarts", "3", "--steps", "2", "--threads", "1"])
    assert [r["variant"] for r in rows] == ["before", "now"]
    assert all(r["search_s"] > 0 and r["peak_rss_MB"] > 0 for r in rows)
    assert abs(rows[0]["best_l2"] - rows[1]["best_l2"]) < 1e-5 * rows[0]["best_l2"]  # the same restarts


def test_bench_original_names_what_is_missing_from_the_checkout(bench, tmp_path):
    import bench_original
    (tmp_path / "PULSE.py").write_text("")
    with pytest.raises(SystemExit, match="not a checkout of adamian98/pulse .*missing stylegan.py"):
        bench_original.main(["--original", str(tmp_path)])


@pytest.mark.skipif(not os.environ.get("PULSE_ORIGINAL_PATH"),
                    reason="needs a checkout of github.com/adamian98/pulse in PULSE_ORIGINAL_PATH (never vendored)")
def test_bench_original_times_the_original_loop_on_the_cpu(bench):
    row = json.loads(subprocess_output([sys.executable, os.path.join(BENCH, "bench_original.py"), "--worker",
                                        "original", "--original", os.environ["PULSE_ORIGINAL_PATH"], "--steps", "1",
                                        "--threads", "1"]))
    assert row["s_per_restart_step"] > 0


def subprocess_output(cmd):
    import subprocess
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_bench_convergence_compares_stopping_at_the_first_converged_restart(bench, tmp_path, monkeypatch):
    import bench_convergence
    from pulse_ext.checkpoints import save_generator
    from conftest import tiny_search_generator

    written = {}

    def record(name, device, rows, columns, notes, extra=None):
        written.update(name=name, rows=rows, extra=extra)
        return str(tmp_path / f"{name}.md")

    monkeypatch.setattr(bench_convergence, "write_results", record)
    generator = str(tmp_path / "g.safetensors")
    save_generator(tiny_search_generator(), generator)
    assert bench_convergence.main(["--generator", generator, "--reachable", "3", "--utkface", "0",
                                   "--celeba-per-framing", "0", "--steps", "60", "--tag", "smoke"]) == 0
    assert written["name"] == "convergence-smoke" and written["extra"]["complete"] is True
    all_row, first_row = written["rows"]
    assert (all_row["variant"], first_row["variant"]) == ("all", "first") and all_row["n"] == first_row["n"] == 3
    assert first_row["eps_met"] == all_row["eps_met"]  # an input meets eps in both or in neither
    records = written["extra"]["records"]["reachable"]
    for full, quick in zip(records["all"], records["first"]):
        assert quick["steps_run"] <= full["steps_run"] and quick["met"] == full["met"]
        assert quick["first_converged_step"] == full["first_converged_step"]


def test_bench_checkouts_times_each_checkout_in_its_own_process(tmp_path, monkeypatch):
    """Two names for this checkout: both rows come from processes that imported it, and reach the same L2."""
    sys.path.insert(0, BENCH)
    try:
        import bench_checkouts
    finally:
        sys.path.remove(BENCH)
    monkeypatch.setattr(bench_checkouts, "write_results", lambda *args, **kwargs: str(tmp_path / "checkouts.md"))
    (tmp_path / "checkouts.md").write_text("table")
    root = os.path.dirname(BENCH)
    rows = bench_checkouts.main(["--checkout", f"a={root}", "--checkout", f"b={root}", "--sizes", "16",
                                 "--restarts", "1", "--steps", "2", "--rounds", "1", "--threads", "1"])
    assert [r["checkout"] for r in rows] == ["a", "b"]
    assert all(r["s_per_step"] > 0 for r in rows) and rows[0]["speedup_vs_first"] == 1.0
    assert rows[0]["best_l2"] == rows[1]["best_l2"]
    with pytest.raises(SystemExit):
        bench_checkouts.main(["--checkout", f"a={root}", "--checkout", "b=/nonexistent"])

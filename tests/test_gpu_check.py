"""benchmarks/gpu_check.sh rehearsed without a GPU (GPU_CHECK_DRY_RUN=1): its own logic -- step order,
budget, arch list, refusal handling, report and delivery to $OUT -- is what a lent GPU's 15 minutes
depend on, so it is tested here, where it costs nothing."""
import os
import re
import subprocess
import tarfile

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_check.sh")
STEP_ORDER = ["build from source", "extension has CUDA kernels", "all tests (CUDA included)",
              "compute-sanitizer memcheck: CUDA op tests", "op microbenchmarks", "bench_e2e.py (R = 1, 32)",
              "bench_e2e.py --study", "profile_step.py", "bench_e2e.py --progressive", "bench_e2e.py (R = 8, 64)"]


def run_dry(tmp_path, *args, **env):
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir(exist_ok=True)
    full_env = dict(os.environ, GPU_CHECK_DRY_RUN="1", OUT=str(out), GPU_CHECK_RESULTS=str(results),
                    TORCH_CUDA_ARCH_LIST="5.0;6.0;7.0", **env)
    proc = subprocess.run(["bash", SCRIPT, *args], env=full_env, capture_output=True, text=True, timeout=120)
    reports = list(results.glob("gpu-check-*.md"))
    return proc, (reports[0].read_text() if reports else ""), out


def headings(report):
    return re.findall(r"^## (.+)$", report, flags=re.M)


def test_dry_run_goes_through_every_step_in_order_and_delivers(tmp_path):
    proc, report, out = run_dry(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = headings(report)
    assert len(found) == len(STEP_ORDER), found
    for heading, expected in zip(found, STEP_ORDER):
        assert heading.startswith(expected), (heading, expected)
    assert report.count("skipped: no GPU (dry run)") == len(STEP_ORDER)
    # The image's arch list (sm_50-70: nvcc 13 cannot build it) is overridden for the build.
    assert "TORCH_CUDA_ARCH_LIST=9.0;" in report and "DRY RUN" in report
    # The pytest step gives each xdist worker its share of the cores.
    assert re.search(r"env OMP_NUM_THREADS=\d+ \S+ -m pytest", report)
    delivered = sorted(p.name for p in out.iterdir())
    assert any(name.startswith("gpu-check-") and name.endswith(".md") for name in delivered), delivered
    tarball = next(out.glob("gpu-check-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert any(name.endswith(".md") for name in names) and any(name.endswith(".log") for name in names), names


def test_arch_list_override_variable(tmp_path):
    _, report, _ = run_dry(tmp_path, GPU_CHECK_CUDA_ARCH="9.0a")
    assert "TORCH_CUDA_ARCH_LIST=9.0a;" in report


def test_steps_that_do_not_fit_the_budget_are_reported_as_skipped(tmp_path):
    # 70 s: the 60-s steps start (a dry step takes no time), the 90-s ones (e2e, progressive) cannot.
    proc, report, _ = run_dry(tmp_path, GPU_CHECK_SECONDS="70")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(re.findall(r"skipped: \d+ s of the budget left, this step needs about 90 s", report)) == 3
    assert report.count("skipped: no GPU (dry run)") == len(STEP_ORDER) - 3


def test_named_steps_only(tmp_path):
    proc, report, _ = run_dry(tmp_path, "sanitizer", "profile")
    assert proc.returncode == 0
    assert [h.split()[0] for h in headings(report)] == ["build", "extension", "compute-sanitizer", "profile_step.py"]
    proc, _, _ = run_dry(tmp_path, "sanitiser")
    assert proc.returncode == 2 and "unknown step 'sanitiser'" in proc.stderr


def fake_sanitizer(tmp_path, output, rc):
    path = tmp_path / "compute-sanitizer"
    path.write_text(f"#!/bin/sh\necho '{output}'\nexit {rc}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("output, rc, refused", [
    ("========= Error: Device not supported", 1, True),
    ("========= Error: Target application terminated before first instrumented API call", 255, True),
    ("========= ERROR SUMMARY: 2 errors", 3, False),
])
def test_a_refused_sanitizer_is_recorded_not_fatal(tmp_path, output, rc, refused):
    proc, report, _ = run_dry(tmp_path, COMPUTE_SANITIZER=fake_sanitizer(tmp_path, output, rc),
                              GPU_CHECK_DRY_RUN_EXECUTE="^compute-sanitizer")
    assert output in report
    assert ("refused by this machine" in report) == refused
    # Every later step still ran (here: its dry-run stand-in).
    assert headings(report)[-1].startswith(STEP_ORDER[-1])
    assert proc.returncode == (0 if refused else 1), proc.stdout + proc.stderr

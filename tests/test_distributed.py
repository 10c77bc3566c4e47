"""``torchrun --nproc_per_node=2 -m pulse_ext upscale IN_DIR -o OUT_DIR`` on CPU (gloo): inputs are sharded
across the two ranks, rank 0 merges the per-rank manifests, and the outputs equal a single-process run's."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reachable_targets, save_png
from pulse_ext.checkpoints import save_generator
from pulse_ext.stylegan2 import Generator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")


def test_two_process_gloo_run_equals_single_process(tmp_path):
    torch.manual_seed(0)
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32))
    generator = str(tmp_path / "g.safetensors")
    save_generator(G, generator)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(5):
        save_png(reachable_targets(G, 1, seed=i)[0], inputs / f"face{i}.png")
    (inputs / "broken.png").write_bytes(b"not an image")

    common = ["upscale", str(inputs), "--generator", generator, "--steps", "8", "--restarts", "2", "--seed", "3",
              "--batch", "1", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    single = subprocess.run([sys.executable, "-m", "pulse_ext", *common, "-o", str(tmp_path / "single")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 1, single.stderr  # 1: broken.png is a per-image error
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "pulse_ext", *common, "-o", str(tmp_path / "multi")],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    # Exit 1 (broken.png) makes torchrun print its own traceback; the workers must not have one.
    assert multi.returncode == 1 and "Traceback" not in multi.stderr.split("failed (exitcode")[0], multi.stderr

    def manifest(folder):
        return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]

    one, two = manifest(tmp_path / "single"), manifest(tmp_path / "multi")
    assert not list((tmp_path / "multi").glob("manifest.rank*.jsonl"))  # merged by rank 0
    assert [r["input"] for r in two] == [r["input"] for r in one] == ["broken.png"] + [f"face{i}.png" for i in range(5)]
    assert {r["rank"] for r in two} == {0, 1}
    for a, b in zip(one, two):
        assert (a["seed"], a["error"] is None, a["outputs"]) == (b["seed"], b["error"] is None, b["outputs"])
        if a["error"] is None:
            assert a["loss"] == b["loss"]
            with Image.open(tmp_path / "single" / a["outputs"][0]) as x, \
                    Image.open(tmp_path / "multi" / b["outputs"][0]) as y:
                assert np.array_equal(np.asarray(x), np.asarray(y))

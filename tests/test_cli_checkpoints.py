"""``pulse-ext convert`` / ``pulse-ext info``: through main([...]) and through ``python -m pulse_ext``."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO_ROOT, os.path.dirname(__file__)]
from fixtures_checkpoints import images, tiny_generator, write_nvidia_pickle, write_rosinality_pt  # noqa: E402

from pulse_ext.checkpoints import load_generator  # noqa: E402
from pulse_ext.cli import SUBCOMMANDS, main  # noqa: E402


@pytest.fixture(scope="module")
def G():
    return tiny_generator(seed=0)


@pytest.fixture(scope="module")
def nvidia_pkl(G, tmp_path_factory):
    return str(write_nvidia_pickle(G, tmp_path_factory.mktemp("ckpt") / "network-snapshot.pkl"))


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pulse_ext", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_convert_then_info(G, nvidia_pkl, tmp_path, capsys):
    out = str(tmp_path / "g.safetensors")
    assert main(["convert", nvidia_pkl, out]) == 0
    assert "wrote" in capsys.readouterr().out
    G2 = load_generator(out)
    torch.testing.assert_close(images(G2), images(G), rtol=0, atol=0)

    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    assert "pulse_ext (converted from nvidia-pickle)" in text
    assert "16x16" in text and "num_ws          6" in text and "4:32  8:32  16:16" in text
    assert f"{sum(p.numel() for p in G.parameters()):,}" in text
    assert "PULSE stats     100000 samples, seed 0" in text  # fitted at conversion, stored in the file


def test_convert_without_latent_stats(nvidia_pkl, tmp_path, capsys):
    from pulse_ext.pulse import latent

    latent._STATS_CACHE.clear()  # as in a fresh process (an earlier test fitted these weights)
    out = str(tmp_path / "g.safetensors")
    assert main(["convert", nvidia_pkl, out, "--no-latent-stats"]) == 0
    assert main(["info", "--json", out]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["pulse_latent_stats"] == []


def test_info_json(G, tmp_path, capsys):
    path = str(write_rosinality_pt(G, tmp_path / "r.pt"))
    assert main(["info", "--json", path]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "rosinality"
    assert (info["resolution"], info["z_dim"], info["w_dim"], info["num_ws"], info["mapping_layers"]) == (16, 32, 32,
                                                                                                           6, 2)
    assert info["channels"] == {"4": 32, "8": 32, "16": 16}
    assert info["parameters"] == sum(p.numel() for p in G.parameters())


@pytest.mark.parametrize("argv, message", [
    (["info", "/nonexistent/ckpt.pkl"], "checkpoint not found"),
    (["convert", "/nonexistent/ckpt.pkl", "out.safetensors"], "checkpoint not found"),
])
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pulse-ext: error: ") and message in err and err.count("\n") == 1


def test_convert_refuses_bad_output(nvidia_pkl, tmp_path, capsys):
    assert main(["convert", nvidia_pkl, str(tmp_path / "g.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    existing = tmp_path / "g.safetensors"
    existing.write_bytes(b"keep")
    assert main(["convert", nvidia_pkl, str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_bytes() == b"keep"
    assert main(["convert", nvidia_pkl, str(existing), "--overwrite"]) == 0


def test_malicious_file_reported_in_one_line(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    import pickle
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}))
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refused global" in err and "system" in err and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists()


def test_registry_is_extensible():
    assert {"convert", "info"} <= set(SUBCOMMANDS)
    assert all(":" in target for target in SUBCOMMANDS.values())


def test_python_dash_m(G, nvidia_pkl, tmp_path):
    out = tmp_path / "g.safetensors"
    result = run_cli("convert", nvidia_pkl, str(out))
    assert result.returncode == 0, result.stderr
    result = run_cli("info", str(out))
    assert result.returncode == 0 and "converted from nvidia-pickle" in result.stdout

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x00not a checkpoint")
    for args, message in [(("info", str(tmp_path / "missing.pkl")), "checkpoint not found"),
                          (("info", str(garbage)), "unknown checkpoint format")]:
        result = run_cli(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("pulse-ext: error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr

    result = run_cli("--help")
    assert result.returncode == 0 and "convert" in result.stdout and "info" in result.stdout

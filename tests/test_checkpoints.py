"""Checkpoint loaders: every format round-trips to the same generator, and nothing in a file runs."""
import builtins
import collections
import io
import json
import os
import pickle
import stat
import subprocess
import sys

import pytest
import safetensors.torch
import torch

# Runs from a checkout without installing: the repo root for pulse_ext, tests/ for the fixtures.
sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(__file__)]
from fixtures_checkpoints import (TINY_CONFIG, images, rosinality_state_dict, tiny_generator,  # noqa: E402
                                  write_nvidia_pickle, write_rosinality_pt, write_tensorflow_pickle)

from pulse_ext.checkpoints import (CheckpointError, UnsafeCheckpointError, UnsupportedArchitectureError,  # noqa: E402
                                   load_generator, read_checkpoint, save_generator)
from pulse_ext.checkpoints._safe_pickle import safe_load_pickle  # noqa: E402

from conftest import tiny_search_generator  # noqa: E402


@pytest.fixture(scope="module")
def G():
    return tiny_generator(seed=0)


def assert_same_generator(G, G2, exact=True):
    sd, sd2 = G.state_dict(), G2.state_dict()
    assert list(sd) == list(sd2)
    for name in sd:
        if exact:
            assert torch.equal(sd[name], sd2[name]), name
        else:
            torch.testing.assert_close(sd2[name], sd[name], rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(images(G2), images(G), rtol=0, atol=1e-5)
    assert G2.init_kwargs["synthesis_kwargs"]["channel_base"] == G.init_kwargs["synthesis_kwargs"]["channel_base"]
    assert not G2.training and not any(p.requires_grad for p in G2.parameters())


# --------------------------------------------------------------------------- NVIDIA network pickles

def test_nvidia_pickle_loads_exact_tensors_without_running_module_src(G, tmp_path):
    trace = tmp_path / "module_src_ran"
    src = f"open({str(trace)!r}, 'w').write('ran')\nclass Generator:\n    pass\n"
    path = write_nvidia_pickle(G, tmp_path / "network-snapshot.pkl", module_src=src)
    G2 = load_generator(path)
    assert not trace.exists()
    assert_same_generator(G, G2)
    assert read_checkpoint(path).source_format == "nvidia-pickle"


def test_fixture_is_live_plain_pickle_would_run_module_src(G, tmp_path, monkeypatch):
    """Control: the fixture's persistence stand-in really executes module_src under plain pickle."""
    import fixtures_checkpoints as fx

    trace = tmp_path / "ran"
    src = f"open({str(trace)!r}, 'w').write('ran')\nclass Generator:\n    pass\n"
    path = write_nvidia_pickle(G, tmp_path / "n.pkl", module_src=src)
    modules, _, _ = fx._nvidia_stand_ins()
    with fx._fake_modules(**modules):
        with open(path, "rb") as f:
            pickle.load(f)
    assert trace.exists()


def test_nvidia_pickle_drops_fp16_settings_and_keeps_conv_clamp(G, tmp_path):
    kwargs = json.loads(json.dumps(G.init_kwargs))
    kwargs["synthesis_kwargs"].update(num_fp16_res=4, conv_clamp=256, fp16_channels_last=False)
    kwargs["mapping_kwargs"]["w_avg_beta"] = 0.995
    checkpoint = read_checkpoint(write_nvidia_pickle(G, tmp_path / "n.pkl", init_kwargs=kwargs))
    assert "num_fp16_res" not in checkpoint.config["synthesis_kwargs"]
    assert "fp16_channels_last" not in checkpoint.config["synthesis_kwargs"]
    assert checkpoint.config["synthesis_kwargs"]["conv_clamp"] == 256
    assert any("num_fp16_res" in note for note in checkpoint.notes)


def test_stylegan3_repo_stylegan2_pickle_with_flat_synthesis_kwargs(G, tmp_path):
    """stylegan3's networks_stylegan2.Generator takes synthesis options flat (**synthesis_kwargs)."""
    kwargs = json.loads(json.dumps(G.init_kwargs))
    kwargs.update(kwargs.pop("synthesis_kwargs"), fused_modconv_default="inference_only", num_fp16_res=0,
                  conv_clamp=None)
    path = write_nvidia_pickle(G, tmp_path / "stylegan2-tiny.pkl", init_kwargs=kwargs)
    checkpoint = read_checkpoint(path)
    assert checkpoint.config["synthesis_kwargs"] == {**G.init_kwargs["synthesis_kwargs"], "conv_clamp": None}
    assert_same_generator(G, load_generator(path))


def test_stylegan3_pickle_refused_naming_what_was_found(G, tmp_path):
    src = "class SynthesisInput:\n    pass\nclass Generator:\n    pass\n"
    with pytest.raises(UnsupportedArchitectureError, match="StyleGAN3.*SynthesisInput"):
        load_generator(write_nvidia_pickle(G, tmp_path / "sg3.pkl", module_src=src))


def test_conditional_generator_refused(G, tmp_path):
    kwargs = json.loads(json.dumps(G.init_kwargs))
    kwargs["c_dim"] = 10
    with pytest.raises(UnsupportedArchitectureError, match="conditional.*c_dim=10"):
        load_generator(write_nvidia_pickle(G, tmp_path / "cond.pkl", init_kwargs=kwargs))


def test_wrong_class_refused(G, tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match="'Discriminator'"):
        load_generator(write_nvidia_pickle(G, tmp_path / "d.pkl", class_name="Discriminator"))


# --------------------------------------------------------------------------- TensorFlow pickles

def test_tensorflow_pickle_converts_to_same_images(G, tmp_path):
    G2 = load_generator(write_tensorflow_pickle(G, tmp_path / "stylegan2-tiny-config-f.pkl"))
    assert_same_generator(G, G2, exact=False)  # mod_bias - 1 + 1 rounds in the last bit
    assert read_checkpoint(tmp_path / "stylegan2-tiny-config-f.pkl").source_format == "tensorflow-pickle"


def test_tensorflow_stylegan1_refused(G, tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match="version 3"):
        load_generator(write_tensorflow_pickle(G, tmp_path / "sg1.pkl", version=3))


def test_tensorflow_unknown_option_refused(G, tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match="fancy_option"):
        load_generator(write_tensorflow_pickle(G, tmp_path / "x.pkl", static_kwargs={"fancy_option": 1}))


# --------------------------------------------------------------------------- rosinality

def test_rosinality_converted_layout_reproduces_images(G, tmp_path):
    G2 = load_generator(write_rosinality_pt(G, tmp_path / "stylegan2-ffhq-config-f.pt"))
    assert_same_generator(G, G2)


def test_rosinality_training_checkpoint_estimates_w_avg(G, tmp_path):
    path = write_rosinality_pt(G, tmp_path / "550000.pt", latent_avg=False, training_layout=True)
    checkpoint = read_checkpoint(path)
    assert checkpoint.estimate_w_avg and any("w_avg" in note for note in checkpoint.notes)
    G2 = load_generator(path)
    z = torch.randn([10_000, G.z_dim], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = G.mapping(z, None)[:, 0].mean(0)
    torch.testing.assert_close(G2.mapping.w_avg, expected, rtol=0, atol=1e-5)
    with torch.no_grad():  # without truncation, w_avg plays no part: images equal
        z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(G2(z, None, noise_mode="const"), G(z, None, noise_mode="const"), rtol=0, atol=0)


def test_rosinality_infers_other_layouts(tmp_path):
    G = tiny_generator(seed=1, img_resolution=32, z_dim=16, w_dim=16, mapping_kwargs=dict(num_layers=3),
                       synthesis_kwargs=dict(channel_base=512, channel_max=32))
    G2 = load_generator(write_rosinality_pt(G, tmp_path / "r.pt"))
    assert G2.init_kwargs["mapping_kwargs"]["num_layers"] == 3
    assert_same_generator(G, G2)


def test_rosinality_wrong_blur_kernel_refused(G, tmp_path):
    sd = rosinality_state_dict(G)
    sd["convs.0.conv.blur.kernel"] = torch.ones(4, 4) / 4
    torch.save({"g_ema": sd}, tmp_path / "r.pt")
    with pytest.raises(UnsupportedArchitectureError, match="convs.0.conv.blur.kernel"):
        load_generator(tmp_path / "r.pt")


def test_rosinality_missing_tensor_named(G, tmp_path):
    sd = rosinality_state_dict(G)
    del sd["convs.1.noise.weight"]
    torch.save({"g_ema": sd}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match="convs.1.noise.weight"):
        load_generator(tmp_path / "r.pt")


# --------------------------------------------------------------------------- pulse_ext safetensors

def test_safetensors_round_trip(G, tmp_path):
    path = tmp_path / "g.safetensors"
    save_generator(G, path)
    assert_same_generator(G, load_generator(path))
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]  # no temp file left behind
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "1" and json.loads(meta["pulse_ext_config"]) == G.init_kwargs


def test_safetensors_recognised_by_content_not_name(G, tmp_path):
    path = tmp_path / "weights.bin"
    save_generator(G, path)
    assert read_checkpoint(path).source_format == "pulse_ext"
    pkl = write_rosinality_pt(G, tmp_path / "looks-like.pkl")
    assert read_checkpoint(pkl).source_format == "rosinality"


def test_save_is_atomic_on_failure(G, tmp_path, monkeypatch):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_generator(G, path)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_safetensors_file_mode_follows_umask(G, tmp_path):
    old = os.umask(0o027)
    try:
        save_generator(G, tmp_path / "g.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "g.safetensors").st_mode) == 0o640


def test_safetensors_carries_pulse_latent_stats(tmp_path):
    from pulse_ext.pulse import latent

    G = tiny_search_generator(seed=11)
    save_generator(G, tmp_path / "bare.safetensors")  # nothing fitted yet: nothing stored
    assert read_checkpoint(tmp_path / "bare.safetensors").latent_stats == []
    stats = latent.fit_latent_stats(G, 1500, seed=3)
    save_generator(G, tmp_path / "g.safetensors")
    assert [(r["num_samples"], r["seed"]) for r in read_checkpoint(tmp_path / "g.safetensors").latent_stats] \
        == [(1500, 3)]
    latent._STATS_CACHE.clear()  # a fresh process
    loaded = load_generator(tmp_path / "g.safetensors")
    loaded.mapping.forward = None  # fitting would fail: the stored statistics must be used
    again = latent.fit_latent_stats(loaded, 1500, seed=3)
    torch.testing.assert_close(again.mean, stats.mean, rtol=0, atol=0)
    torch.testing.assert_close(again.std, stats.std, rtol=0, atol=0)


def test_safetensors_with_corrupt_latent_stats_refused(G, tmp_path):
    sd = {k: v.contiguous() for k, v in G.state_dict().items()}
    safetensors.torch.save_file(sd, str(tmp_path / "bad.safetensors"),
                                metadata={"format_version": "1", "pulse_ext_config": json.dumps(G.init_kwargs),
                                          "pulse_ext_latent_stats": "{not json"})
    with pytest.raises(CheckpointError, match="pulse_ext_latent_stats metadata is not valid JSON"):
        load_generator(tmp_path / "bad.safetensors")


def test_foreign_safetensors_refused(tmp_path):
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="without pulse_ext metadata"):
        load_generator(tmp_path / "other.safetensors")


def test_future_format_version_refused(G, tmp_path):
    sd = {k: v.contiguous() for k, v in G.state_dict().items()}
    safetensors.torch.save_file(sd, str(tmp_path / "v2.safetensors"),
                                metadata={"format_version": "2", "pulse_ext_config": json.dumps(G.init_kwargs)})
    with pytest.raises(CheckpointError, match="format_version '2'"):
        load_generator(tmp_path / "v2.safetensors")


def test_default_generator(monkeypatch, tmp_path, G):
    import pulse_ext.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "DEFAULT_PATH", tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="ships no default generator"):
        load_generator("default")
    save_generator(G, tmp_path / "default.safetensors")
    monkeypatch.setattr(checkpoints, "DEFAULT_PATH", tmp_path / "default.safetensors")
    assert_same_generator(G, load_generator("default"))


# --------------------------------------------------------------------------- malicious files

class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(trace):
    cmd = f"touch {trace}"
    return {
        "os.system": (_Evil(os.system, cmd), "system"),
        "builtins.exec": (_Evil(builtins.exec, f"open({str(trace)!r}, 'w')"), "builtins.exec"),
        "builtins.eval": (_Evil(builtins.eval, f"open({str(trace)!r}, 'w')"), "builtins.eval"),
        "subprocess.Popen": (_Evil(subprocess.Popen, ["touch", str(trace)]), "subprocess.Popen"),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen"])
def test_malicious_pickle_refused(tmp_path, payload):
    trace = tmp_path / "pwned"
    evil, name = _payloads(trace)[payload]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": evil}, protocol=3))
    with pytest.raises(UnsafeCheckpointError, match=f"refused global '[^']*{name}'"):
        load_generator(path)
    assert not trace.exists()


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen"])
def test_malicious_torch_file_refused(tmp_path, payload):
    trace = tmp_path / "pwned"
    evil, name = _payloads(trace)[payload]
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {"x": evil}}, path)
    with pytest.raises(UnsafeCheckpointError, match=f"refused global '[^']*{name}'"):
        load_generator(path)
    assert not trace.exists()


def test_payload_nested_in_allowed_containers_refused(G, tmp_path):
    trace = tmp_path / "pwned"
    nested = collections.OrderedDict(a=[{"b": (_Evil(os.system, f"touch {trace}"),)}])
    path = write_nvidia_pickle(G, tmp_path / "nested.pkl", extra_state={"payload": nested})
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_generator(path)
    assert not trace.exists()


def test_payload_in_top_level_dict_refused(G, tmp_path):
    trace = tmp_path / "pwned"
    path = write_nvidia_pickle(G, tmp_path / "top.pkl", extra_top={"extra": _Evil(os.system, f"touch {trace}")})
    with pytest.raises(UnsafeCheckpointError):
        load_generator(path)
    assert not trace.exists()


def test_payload_hidden_in_module_src_never_runs(G, tmp_path):
    trace = tmp_path / "pwned"
    src = f"import os\nos.system('touch {trace}')\nclass Generator:\n    pass\n"
    load_generator(write_nvidia_pickle(G, tmp_path / "src.pkl", module_src=src))
    assert not trace.exists()


def test_refused_global_is_named_for_unknown_classes():
    data = pickle.dumps({"G_ema": collections.Counter(a=1)}, protocol=3)
    with pytest.raises(UnsafeCheckpointError, match="'collections.Counter'") as info:
        safe_load_pickle(io.BytesIO(data))
    assert info.value.global_name == "collections.Counter"


def test_persistent_ids_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if obj == "secret" else None

    buffer = io.BytesIO()
    P(buffer, protocol=3).dump({"G_ema": "secret"})
    with pytest.raises(UnsafeCheckpointError, match="persistent id"):
        safe_load_pickle(io.BytesIO(buffer.getvalue()))


# --------------------------------------------------------------------------- broken files

@pytest.mark.parametrize("kind", ["nvidia", "tensorflow", "rosinality", "safetensors"])
def test_truncated_files(G, tmp_path, kind):
    path = tmp_path / "ckpt"
    if kind == "nvidia":
        write_nvidia_pickle(G, path)
    elif kind == "tensorflow":
        write_tensorflow_pickle(G, path)
    elif kind == "rosinality":
        write_rosinality_pt(G, path)
    else:
        save_generator(G, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_generator(path)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\x00\x01garbage" * 10, "unknown checkpoint format"),
    (b"<!DOCTYPE html><html>Not Found</html>", "HTML"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
])
def test_unknown_content(tmp_path, content, message):
    path = tmp_path / "ckpt.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_generator(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "nope.pkl")
    with pytest.raises(CheckpointError, match="not a file"):
        load_generator(tmp_path)


def test_unknown_pickle_and_torch_content(tmp_path):
    (tmp_path / "a.pkl").write_bytes(pickle.dumps({"weights": [1, 2]}, protocol=3))
    with pytest.raises(CheckpointError, match="unknown pickle.*'weights'"):
        load_generator(tmp_path / "a.pkl")
    torch.save({"state_dict": {}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="unknown torch checkpoint.*'state_dict'"):
        load_generator(tmp_path / "b.pt")


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)
    assert TINY_CONFIG["img_resolution"] == 16

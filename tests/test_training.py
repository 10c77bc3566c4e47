"""Fast tests of the generator-training tool (python/train_generator.py) on a tiny 16-px config."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, ROOT)

tg = pytest.importorskip("train_generator")
from training.discriminator import Discriminator, minibatch_stddev  # noqa: E402

TINY = dict(tg.DEFAULT_CFG, resolution=16, z_dim=16, w_dim=16, map_layers=2, channel_base=64, channel_max=16,
            d_channel_base=64, d_channel_max=16, batch=4, r1_interval=2, pl_weight=2.0, pl_interval=2,
            conv_clamp=256, betas=[0.0, 0.99])
TINY_ARGS = ["--resolution", "16", "--channel-base", "64", "--channel-max", "16", "--z-dim", "16",
             "--map-layers", "2", "--batch", "4", "--threads", "1"]


def _images(n=24, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, res, res), generator=g, dtype=torch.uint8)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_discriminator_shapes_and_downsampling():
    torch.manual_seed(0)
    D = Discriminator(img_resolution=32, channel_base=128, channel_max=16)
    x = torch.randn(8, 3, 32, 32)
    assert D(x).shape == (8, 1)
    # The FIR blur + stride-2 path keeps a constant image constant (filter sums to 1) away from borders.
    from training.discriminator import blur, _fir_4x4
    c = torch.ones(1, 2, 8, 8)
    y = blur(c, _fir_4x4(), pad=1, stride=2)
    assert y.shape == (1, 2, 4, 4)
    assert torch.allclose(y[:, :, 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
    # minibatch stddev: one extra channel, zero for identical samples within a group
    z = torch.randn(1, 4, 4, 4).repeat(8, 1, 1, 1)
    out = minibatch_stddev(z, 4)
    assert out.shape == (8, 5, 4, 4)
    assert out[:, 4].abs().max() < 1e-3


@pytest.mark.parametrize("pad,stride", [(2, 1), (1, 2), (0, 1), (3, 1)])
def test_blur_matches_depthwise_conv_and_double_backward(pad, stride):
    from training.discriminator import blur, _fir_4x4
    g = torch.Generator().manual_seed(pad)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g, requires_grad=True)
    f = _fir_4x4().double()
    ref = torch.nn.functional.conv2d(x, f.reshape(1, 1, 4, 4).repeat(3, 1, 1, 1), stride=stride, padding=pad,
                                     groups=3)
    assert torch.allclose(blur(x, f, pad, stride), ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: blur(t, f, pad, stride), (x,))
    assert torch.autograd.gradgradcheck(lambda t: blur(t, f, pad, stride), (x,))
    # non-symmetric filter: the adjoint must flip it
    fa = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    assert torch.autograd.gradcheck(lambda t: blur(t, fa, pad, stride), (x,))


def test_steps_checkpoint_resume_identical(tmp_path):
    torch.set_num_threads(1)
    images = _images()
    tr = tg.Trainer(TINY, seed=1, images=images)
    for _ in range(3):
        tr.train_step()
    ckpt = tg.save_all(tr, str(tmp_path), samples=False, log=lambda m: None)
    for _ in range(3):  # crosses an R1 and a path-length step
        tr.train_step()

    tr2 = tg.Trainer(TINY, seed=1, images=images)
    tr2.load_state_dict(tg.load_checkpoint_file(ckpt))
    assert tr2.step == 3 and tr2.nimg == 12
    for _ in range(3):
        tr2.train_step()
    for a, b in ((tr.G, tr2.G), (tr.D, tr2.D), (tr.G_ema, tr2.G_ema)):
        _states_equal(a, b)
    assert torch.equal(tr.pl_mean, tr2.pl_mean)
    # training actually moved the weights and kept them finite
    fresh = tg.Trainer(TINY, seed=1, images=images)
    assert not torch.equal(fresh.G.synthesis.b16.conv1.weight, tr.G.synthesis.b16.conv1.weight)
    assert all(torch.isfinite(p).all() for p in tr.G.parameters())

    # compact and split exports round-trip
    sd = tg.load_checkpoint_file(ckpt)
    tg.export_compact(sd, str(tmp_path / "compact.pt"))
    compact = tg.load_checkpoint_file(str(tmp_path / "compact.pt"))
    assert "optG" not in compact and compact["step"] == 3
    for k in ("G", "D", "G_ema"):
        assert all(torch.equal(compact[k][n], sd[k][n]) for n in sd[k])
    n_parts = tg.export_parts(sd, str(tmp_path / "parts"), max_mib=0.05)
    assert n_parts > 2
    parts = tg.load_checkpoint_file(str(tmp_path / "parts"))
    for k in ("G", "D", "G_ema"):
        assert parts[k].keys() == sd[k].keys()
        assert all(torch.equal(parts[k][n], sd[k][n]) for n in sd[k])
    tr3 = tg.Trainer(TINY, seed=1, images=images)
    tr3.load_state_dict(parts)
    assert all(torch.equal(v, sd["G"][k]) for k, v in tr3.G.state_dict().items())
    assert tr3.optD.state_dict()["state"].keys() == tr2.optD.state_dict()["state"].keys()


def test_cli_train_resume_and_export(tmp_path):
    data = tmp_path / "faces.npy"
    np.save(data, _images(16).permute(0, 2, 3, 1).numpy())
    out = tmp_path / "run"
    base = ["--data", str(data), "--out", str(out)] + TINY_ARGS
    assert tg.main(base + ["--kimg", "0.008"]) == 0  # 2 steps
    assert tg.main(base + ["--kimg", "0.016", "--resume", "--milestone-kimg", "0.01"]) == 0  # 2 more
    ckpts = tg.list_checkpoints(str(out))
    assert len(ckpts) == 1
    assert (out / "milestone-000000kimg.pt").exists()  # 0.01 kimg rounds to 0 in the name
    sd = tg.load_checkpoint_file(ckpts[-1])
    assert sd["step"] == 4 and sd["nimg"] == 16
    assert (out / "samples-init.png").exists() and (out / "samples-000000.png").exists()
    log = [json.loads(line) for line in open(out / "log.jsonl")] if (out / "log.jsonl").exists() else []
    assert all("kimg" in r for r in log)

    # The exported G_ema loads with nothing but the safetensors layout + our Generator.
    from safetensors import safe_open
    from safetensors.torch import load_file
    from pulse_ext.stylegan2 import Generator
    path = str(out / "latest-G_ema.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "1"
    G = Generator(**json.loads(meta["pulse_ext_config"])).eval()
    G.load_state_dict(load_file(path))
    G.set_impl("reference")
    G_ema = Generator(**sd["G_kwargs"]).eval()
    G_ema.load_state_dict(sd["G_ema"])
    G_ema.set_impl("reference")
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        assert torch.equal(G(z, noise_mode="const"), G_ema(z, noise_mode="const"))

    # ... and through the package's own loader, when present
    import pulse_ext.checkpoints as pc
    if hasattr(pc, "load_generator"):
        G2 = pc.load_generator(path).eval()
        G2.set_impl("reference")
        with torch.no_grad():
            assert torch.allclose(G2(z, noise_mode="const"), G_ema(z, noise_mode="const"), atol=1e-6)

    # compact export via the CLI
    assert tg.main(["--out", str(out), "--export-compact", str(tmp_path / "c.pt")]) == 0
    assert tg.load_checkpoint_file(str(tmp_path / "c.pt"))["compact"] is True


def test_bf16_step_runs():
    tr = tg.Trainer(dict(TINY, pl_weight=0.0), seed=2, bf16=True, channels_last=True, images=_images())
    for _ in range(2):
        tr.train_step()
    stats = tr.pop_stats()
    assert all(np.isfinite(v) for v in stats.values())
    assert all(torch.isfinite(p).all() for p in tr.G.parameters())


def test_threads_auto_follows_the_free_cores(tmp_path, monkeypatch, capsys):
    """--threads auto: torch threads = cores no other process runs on, re-checked between steps."""
    import pulse_ext.runtime as cu

    data = tmp_path / "faces.npy"
    np.save(data, _images(16).permute(0, 2, 3, 1).numpy())
    busy = iter([0, 5, 5, 5, 5, 5, 5, 5])  # the start sees a free machine, every later check a full one
    monkeypatch.setattr(cu, "busy_cores", lambda: next(busy))
    monkeypatch.setattr(tg.os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    try:
        args = ["--data", str(data), "--out", str(tmp_path / "run"), "--kimg", "0.012",
                "--threads-check-seconds", "0"] + TINY_ARGS[:TINY_ARGS.index("--threads")]
        assert tg.main(args + ["--threads", "auto"]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                  if line.startswith("{") and '"event"' in line]
        changes = [e["threads"] for e in events if e["event"] == "threads"]
        start = next(e for e in events if e["event"] == "start")
        assert start["threads"] == 2 and changes[-1] == 1  # 2 when free, down to 1 when the cores are busy
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SystemExit):
        tg.parse_args(["--out", str(tmp_path), "--threads", "many"])


def test_carry_file_round_trips_the_faces_and_loads_like_the_npz(tmp_path):
    """prepare_faces --carry: the train split as WebP in one .npz, decoded by load_faces (and so by the
    trainer's --data) in order, to within WebP quality 90's error; smooth faces stay close."""
    from PIL import Image
    from prepare_faces import load_faces, write_carry_file

    yy, xx = np.mgrid[0:32, 0:32]
    faces = [np.stack([(xx * 8 + k * 20) % 256, (yy * 8) % 256, np.full_like(xx, 40 * k)], -1).astype(np.uint8)
             for k in range(5)]
    path = str(tmp_path / "carry-train.npz")
    write_carry_file([(f"{20 + k}_0_1_2017.jpg.chip.jpg", f) for k, f in enumerate(faces)], path)
    loaded = load_faces(path)
    assert loaded.shape == (5, 32, 32, 3) and loaded.dtype == np.uint8
    for k in range(5):
        assert np.abs(loaded[k].astype(int) - faces[k]).mean() < 6
    assert torch.equal(tg.load_train_images(path), torch.from_numpy(loaded).permute(0, 3, 1, 2))
    # A plain folder of images loads in name order.
    folder = tmp_path / "folder"
    folder.mkdir()
    for k in (1, 0):
        Image.fromarray(faces[k]).save(folder / f"{k}.png")
    assert np.array_equal(load_faces(str(folder)), np.stack(faces[:2]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no faces.npz or images in"):
        load_faces(str(tmp_path / "empty"))


def _framing_photo(h=90, w=70):
    """A synthetic photo with landmarks: a smooth colour ramp, its 68 points on a plausible face layout."""
    yy, xx = np.mgrid[0:h, 0:w]
    photo = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), (xx + yy) * 127 / (w + h)], -1).astype(np.uint8)
    lm = np.zeros((68, 2))
    lm[36:42] = (25, 40)   # left eye
    lm[42:48] = (45, 40)   # right eye
    lm[48], lm[54] = (28, 62), (42, 62)  # mouth corners
    return photo, lm


def test_framing_sampler_cuts_the_ffhq_square_like_pulse_ext_align():
    """At scale 1, no shift, no rotation, the sampler's crop is pulse_ext.align's FFHQ crop of the photo
    (the same square; resampling differs a little)."""
    from PIL import Image

    from pulse_ext.align import crop_quad, face_quad

    photo, lm = _framing_photo()
    photos = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    sampler = tg.FramingSampler(images, 4, False, 0, photos, lm[None], framed_fraction=1.0, scale_range=(1.0, 1.0),
                                max_shift=0.0, max_rotation=0.0)
    crop = sampler.framed(2, 32)
    assert crop.shape == (2, 3, 32, 32)
    expected = np.asarray(crop_quad(Image.fromarray(photo), face_quad(lm, "ffhq"), 32), np.float64)
    got = crop[0].permute(1, 2, 0).numpy()
    inside = slice(4, 28)  # away from the borders, where the two pad the photo differently
    assert np.abs(got[inside, inside] - expected[inside, inside]).mean() < 1.0  # 1.15x scale: 5.8, 5 deg: 2.2
    torch.testing.assert_close(crop[0], crop[1])


def test_framing_sampler_mixes_and_resumes_exactly():
    photo, lm = _framing_photo()
    photos = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
    images = torch.full((8, 3, 16, 16), 7, dtype=torch.uint8)

    def make():
        return tg.FramingSampler(images, 64, True, 3, photos, lm[None], framed_fraction=0.25)

    a = make()
    batch = a.next("cpu")
    assert batch.shape == (64, 3, 16, 16) and float(batch.min()) >= -1 and float(batch.max()) <= 1
    plain = (batch == 7 / 127.5 - 1).flatten(1).all(1)
    assert 5 <= int((~plain).sum()) <= 30  # about a quarter framed
    state = a.gen.get_state()
    after = a.next("cpu")
    b = make()
    b.gen.set_state(state)
    torch.testing.assert_close(b.next("cpu"), after)  # the RNG the checkpoint saves is all the state
    with pytest.raises(ValueError, match="framed_fraction"):
        tg.FramingSampler(images, 4, False, 0, photos, lm[None], framed_fraction=1.5)


def test_evaluate_mixture_fd_draws_the_training_mixture(tmp_path):
    """python/evaluate_mixture_fd.py's real sets: round(n * fraction) framed crops of the photos (by the
    trainer's FramingSampler), then a seeded subset of the UTKFace faces, uint8 NHWC, the same for the
    same seed; a fraction of 0 gives UTKFace faces only, and asking for more faces than the split has
    is refused."""
    mixture = pytest.importorskip("evaluate_mixture_fd")
    photo, lm = _framing_photo()
    np.savez(tmp_path / "photos.npz", photos=photo[None], landmarks=lm[None].astype(np.float32),
             names=np.asarray(["synthetic"]))
    rng = np.random.default_rng(0)
    utk = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    utk[:, 0, 0, 0] = np.arange(20)  # every face distinct
    mixed = mixture.mixture_sample(utk, str(tmp_path), 10, 0.3, 16, seed=5)
    assert mixed.shape == (10, 16, 16, 3) and mixed.dtype == np.uint8
    assert np.array_equal(mixed, mixture.mixture_sample(utk, str(tmp_path), 10, 0.3, 16, seed=5))
    is_utk = [any(np.array_equal(face, u) for u in utk) for face in mixed]
    assert is_utk == [False] * 3 + [True] * 7
    assert len({face.tobytes() for face in mixed[3:]}) == 7  # drawn without replacement
    # the framed crops are the photo's colour ramp, cut as the trainer cuts it
    sampler = tg.FramingSampler(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1, False, 5,
                                torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous(), lm[None])
    expected = sampler.framed(3, 16).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(mixed[:3], expected)
    only_utk = mixture.mixture_sample(utk, str(tmp_path), 6, 0.0, 16, seed=1)
    assert all(any(np.array_equal(face, u) for u in utk) for face in only_utk)
    with pytest.raises(SystemExit, match="the split has 20"):
        mixture.mixture_sample(utk, str(tmp_path), 30, 0.0, 16, seed=1)


# ---------------------------------------------------------------------------------------------
# Growing a run to twice the resolution (--grow-from)

TINY8 = dict(TINY, resolution=8, pl_weight=0.0)


def _trained_tiny8(steps=3):
    tr = tg.Trainer(TINY8, seed=3, images=_images(24, 8))
    for _ in range(steps):
        tr.train_step()
    return tr


def test_grown_models_start_as_the_old_ones_and_keep_their_adam_moments():
    from pulse_ext import ops
    torch.set_num_threads(1)
    old = _trained_tiny8()
    sd = old.state_dict()
    tr = tg.grow_trainer(sd, 16, fade_kimg=0.008, images=_images(24, 16))
    assert tr.cfg["resolution"] == 16 and tr.cfg["grow_nimg"] == old.nimg
    assert tr.step == old.step and tr.nimg == old.nimg

    # G and G_ema draw the old image, upsampled (the new toRGB starts at zero)
    z = torch.randn(3, old.G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for new_G, old_G in ((tr.G, old.G), (tr.G_ema, old.G_ema)):
            want = ops.upsample2d(old_G(z, None, noise_mode="const"), impl="reference")
            assert torch.allclose(new_G(z, None, noise_mode="const"), want, atol=1e-6)
        assert tr.G.num_ws == old.G.num_ws + 2

    # D at alpha 0 is the old D on the 2x2-mean image, exactly
    img = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(tr.D(img), old.D(torch.nn.functional.avg_pool2d(img, 2)))
        tr.D.fade_alpha.fill_(0.5)
        assert not torch.equal(tr.D(img), old.D(torch.nn.functional.avg_pool2d(img, 2)))

    # Adam moments moved with their parameters (D's old fromrgb under its new name)
    def moments(opt, module):
        names = [n for n, _ in module.named_parameters()]
        return {names[i]: st["exp_avg_sq"] for i, st in opt.state_dict()["state"].items()}

    old_mG, new_mG = moments(old.optG, old.G), moments(tr.optG, tr.G)
    assert old_mG.keys() == new_mG.keys() and all(torch.equal(old_mG[k], new_mG[k]) for k in old_mG)
    old_mD, new_mD = moments(old.optD, old.D), moments(tr.optD, tr.D)
    assert torch.equal(new_mD["fade_fromrgb.weight"], old_mD["b8.fromrgb.weight"])
    assert torch.equal(new_mD["b8.conv0.weight"], old_mD["b8.conv0.weight"])

    # the fade ramps with the images shown: 2 steps of 4 = 0.008 kimg
    seen = []
    for _ in range(3):
        tr.train_step()
        seen.append(float(tr.D.fade_alpha))
    assert seen == [0.0, 0.5, 1.0]
    assert all(torch.isfinite(p).all() for p in tr.G.parameters())
    assert tr.G.synthesis.b16.torgb.weight.abs().max() > 0  # the new block learns


def test_grow_rejects_a_wrong_resolution():
    sd = _trained_tiny8(1).state_dict()
    with pytest.raises(ValueError, match="expected 16 .* got 32"):
        tg.grow_trainer(sd, 32, fade_kimg=1, images=_images(24, 32))


def test_cli_grow_then_resume_with_the_same_command(tmp_path):
    torch.set_num_threads(1)
    small = tmp_path / "faces8.npy"
    np.save(small, _images(16, 8).permute(0, 2, 3, 1).numpy())
    args8 = [a if a != "16" else "8" for a in TINY_ARGS]
    assert tg.main(["--data", str(small), "--out", str(tmp_path / "r8"), "--kimg", "0.008"] + args8) == 0
    old_ckpt = tg.list_checkpoints(str(tmp_path / "r8"))[-1]

    big = tmp_path / "faces16.npy"
    np.save(big, _images(16, 16).permute(0, 2, 3, 1).numpy())
    grow = ["--data", str(big), "--out", str(tmp_path / "r16"), "--grow-from", old_ckpt, "--resume",
            "--fade-kimg", "0.008"] + TINY_ARGS
    assert tg.main(grow + ["--kimg", "0.016"]) == 0  # grows: starts at 8 images, 2 more steps
    sd = tg.load_checkpoint_file(tg.list_checkpoints(str(tmp_path / "r16"))[-1])
    assert sd["cfg"]["resolution"] == 16 and sd["cfg"]["grow_nimg"] == 8 and sd["nimg"] == 16
    assert float(sd["D"]["fade_alpha"]) == 0.5  # set at the start of the step from 12 images
    assert tg.main(grow + ["--kimg", "0.024"]) == 0  # the same command now resumes
    sd = tg.load_checkpoint_file(tg.list_checkpoints(str(tmp_path / "r16"))[-1])
    assert sd["nimg"] == 24 and sd["cfg"]["grow_nimg"] == 8 and float(sd["D"]["fade_alpha"]) == 1.0
    # a wrong --resolution is a clear exit, not a traceback
    with pytest.raises(SystemExit, match="expected 16"):
        tg.main(["--data", str(big), "--out", str(tmp_path / "bad"), "--grow-from", old_ckpt,
                 "--resolution", "32"] + TINY_ARGS[2:])


@pytest.mark.parametrize("activation,down,k,clamp", [("lrelu", 1, 3, None), ("lrelu", 2, 3, 0.5),
                                                     ("linear", 2, 1, None), ("lrelu", 1, 1, None)])
def test_equal_conv_folds_gain_and_bias_into_the_convolution_exactly(activation, down, k, clamp):
    from training.discriminator import EqualConv2d, blur, LRELU_GAIN, LRELU_SLOPE
    F = torch.nn.functional
    torch.manual_seed(k + down)
    conv = EqualConv2d(3, 5, k, activation=activation, down=down, conv_clamp=clamp).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    gain = 0.7

    def literal(t):  # NVIDIA's order: conv, + bias, act, * gain, clamp
        w = conv.weight * conv.weight_gain
        if down == 1:
            y = F.conv2d(t, w, padding=k // 2)
        elif k == 1:
            y = F.conv2d(blur(t, conv.resample_filter.double(), pad=1, stride=2), w)
        else:
            y = F.conv2d(blur(t, conv.resample_filter.double(), pad=k // 2 + 1), w, stride=2)
        y = y + conv.bias.reshape(1, -1, 1, 1)
        if activation == "lrelu":
            y = F.leaky_relu(y, LRELU_SLOPE) * LRELU_GAIN
        y = y * gain
        return y.clamp(-clamp * gain, clamp * gain) if clamp is not None else y

    assert torch.allclose(conv(x, gain=gain), literal(x), atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: conv(t, gain=gain), (x,))
    assert torch.autograd.gradgradcheck(lambda t: conv(t, gain=gain), (x,))  # R1 differentiates twice

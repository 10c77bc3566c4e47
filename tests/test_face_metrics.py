"""FD / KID math and grid writers of python/face_metrics.py (no dlib needed)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "python"))
import face_metrics as fm  # noqa: E402


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_diagonal():
    # Diagonal covariances: FD = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert fm.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_general_matches_eigen_formula_and_is_symmetric():
    rng = np.random.default_rng(0)
    d = 6
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # Tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)) (real, non-negative for SPD S1, S2)
    tr = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    got = fm.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert fm.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)
    assert fm.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_fd_on_gaussian_samples_approaches_the_population_value():
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) * 2 + 0.5
    expected = d * 0.5 ** 2 + d * (1 - 2) ** 2  # |mu|^2 + sum (1 - 2)^2
    assert fm.fd(a, b) == pytest.approx(expected, rel=0.02)


def test_fd_floor_shrinks_with_n():
    """Two samples of one distribution: FD > 0, falling roughly like 1/N (why N must be equal and reported)."""
    rng = np.random.default_rng(2)
    floors = []
    for n in (250, 1000, 4000):
        floors.append(np.mean([fm.fd(rng.normal(size=(n, 16)), rng.normal(size=(n, 16))) for _ in range(5)]))
    assert floors[0] > floors[1] > floors[2] > 0
    assert floors[0] / floors[2] == pytest.approx(16, rel=0.35)


def test_kid_unbiased_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_std = fm.kid(a, b, num_subsets=20, subset_size=300)
    shifted, _ = fm.kid(a, b + 0.5, num_subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(abs(same), same_std)
    # deterministic for a seed
    assert fm.kid(a, b, num_subsets=5, subset_size=100, seed=7) == fm.kid(a, b, num_subsets=5, subset_size=100, seed=7)


def test_kid_exact_unbiased_mmd_on_one_subset():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    k = lambda p, q: (p @ q.T / 3 + 1) ** 3  # noqa: E731
    m = 5
    expected = ((k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1)) + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
                - 2 * k(x, y).mean())
    # subset_size = N and choice without replacement: a permutation, which MMD^2 ignores
    assert fm.kid(x, y, num_subsets=3, subset_size=5)[0] == pytest.approx(expected, rel=1e-12)


def test_stats_and_kid_reject_bad_shapes():
    with pytest.raises(ValueError):
        fm.gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        fm.kid(np.zeros((4, 3)), np.zeros((4, 2)))


def test_make_grid_layout_and_padding():
    images = np.stack([np.full((4, 5, 3), i + 1, np.uint8) for i in range(5)])
    grid = fm.make_grid(images, ncols=3, pad=1, pad_value=0)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
    assert (grid[1:5, 1:6] == 1).all()          # image 0 at row 0, col 0
    assert (grid[1:5, 13:18] == 3).all()        # image 2 at row 0, col 2
    assert (grid[6:10, 7:12] == 5).all()        # image 4 at row 1, col 1
    assert (grid[6:10, 13:18] == 0).all()       # empty cell
    assert (grid[0] == 0).all() and (grid[:, 0] == 0).all()
    with pytest.raises(ValueError):
        fm.make_grid(images.astype(np.float32), 3)


def test_nearest_upscale_and_area_downscale_round_trip():
    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    big = fm.nearest_upscale(small, 4)
    assert big.shape == (2, 16, 16, 3)
    assert (big[:, ::4, ::4] == small).all() and (big[:, 3::4, 3::4] == small).all()
    assert (fm.area_downscale(big, 4) == small).all()
    block = np.array([[[[0], [1]], [[1], [1]]]], np.uint8).repeat(3, axis=3)  # mean 0.75 -> 1
    assert fm.area_downscale(block, 2)[0, 0, 0, 0] == 1


def test_save_png_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "g.png"
    size = fm.save_png(image, str(path))
    assert size == path.stat().st_size > 0
    assert (np.asarray(Image.open(path)) == image).all()
    fm.save_png(image, str(tmp_path / "p.png"), palette=True)
    assert Image.open(tmp_path / "p.png").mode == "P"


def test_dlib_missing_reason_is_none_or_names_the_install_command():
    reason = fm.dlib_missing_reason()
    assert reason is None or "pip install dlib-bin" in reason


def _stub_embedder(versions="test-1"):
    """A DlibEmbedder whose embed_one is a cheap deterministic stand-in that counts its calls (no dlib)."""
    embedder = object.__new__(fm.DlibEmbedder)
    embedder.versions = versions
    embedder.calls = 0

    def embed_one(image):
        embedder.calls += 1
        return np.full(128, float(image.sum())), bool(image[0, 0, 0] % 2)

    embedder.embed_one = embed_one
    return embedder


def _images(n=5):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_embedding_cache_reuses_only_identical_image_sets(tmp_path):
    """DlibEmbedder.embed(..., cache_dir): same images and versions -> no re-embedding; a changed
    pixel or other library/model versions -> embedded again."""
    embedder, images = _stub_embedder(), _images()
    features, detected = embedder.embed(images, cache_dir=str(tmp_path))
    assert embedder.calls == 5
    again, again_detected = embedder.embed(images.copy(), cache_dir=str(tmp_path))
    assert embedder.calls == 5
    np.testing.assert_array_equal(again, features)
    np.testing.assert_array_equal(again_detected, detected)
    assert [p.name.startswith("dlib-") and p.suffix == ".npz" for p in tmp_path.iterdir()] == [True]

    changed = images.copy()
    changed[3, 2, 2, 1] ^= 1
    embedder.embed(changed, cache_dir=str(tmp_path))
    assert embedder.calls == 10
    embedder.versions = "test-2"
    embedder.embed(images, cache_dir=str(tmp_path))
    assert embedder.calls == 15
    embedder.embed(images)  # no cache_dir: always embedded
    assert embedder.calls == 20 and len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_embedding_cache_rebuilds_a_damaged_file(tmp_path, capsys, damage):
    embedder, images = _stub_embedder(), _images()
    expected = embedder.embed(images, cache_dir=str(tmp_path))
    (path,) = tmp_path.iterdir()
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        np.savez(path, features=np.zeros((3, 128)), detected=np.zeros(3, bool))
    features, detected = embedder.embed(images, cache_dir=str(tmp_path))
    assert embedder.calls == 10  # embedded again
    np.testing.assert_array_equal(features, expected[0])
    np.testing.assert_array_equal(detected, expected[1])
    assert "embedding cache: ignoring" in capsys.readouterr().err
    embedder.embed(images, cache_dir=str(tmp_path))  # and the rewritten file is good
    assert embedder.calls == 10


def test_embedding_cache_write_failure_keeps_the_result(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    embedder, images = _stub_embedder(), _images()
    features, detected = embedder.embed(images, cache_dir=str(blocker / "cache"))
    assert features.shape == (5, 128) and detected.shape == (5,)
    assert "could not write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing half-written


def test_embedding_cache_removes_its_partial_file_when_writing_fails(tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fm.np, "savez", disk_full)
    embedder, images = _stub_embedder(), _images()
    features, _ = embedder.embed(images, cache_dir=str(tmp_path / "cache"))
    assert features.shape == (5, 128)
    assert "No space left" in capsys.readouterr().err
    assert list((tmp_path / "cache").iterdir()) == []

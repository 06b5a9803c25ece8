import jax
import numpy as np
import pytest

from sidjax.sid import quantizer, rqkmeans
from sidjax.sid.rqkmeans import RQKMeansConfig


def _blobs(n=240, k=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    return (centers[np.arange(n) % k] + rng.normal(size=(n, d))).astype(np.float32)


def _numpy_lloyd(x, centroids, iters):
    """Reference Lloyd iterations (empty clusters keep their centroid)."""
    c = centroids.astype(np.float64).copy()
    for _ in range(iters):
        assign = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        for j in range(len(c)):
            if np.any(assign == j):
                c[j] = x[assign == j].mean(0)
    return c, np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)


def test_kmeans_matches_numpy_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 5)).astype(np.float32)  # no clear clusters: Lloyd steps matter
    key = jax.random.key(4)
    init = np.asarray(rqkmeans.kmeans_plus_plus(key, x, 7))
    assert len({tuple(r) for r in init.tolist()}) == 7 and all(
        any(np.array_equal(r, xi) for xi in x) for r in init)
    centroids, assign = rqkmeans.kmeans(key, x, 7, 8)
    ref_c, ref_a = _numpy_lloyd(x, init, 8)
    np.testing.assert_allclose(np.asarray(centroids), ref_c, rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.asarray(assign), ref_a)


def test_per_level_codes_and_determinism():
    x = _blobs()
    cfg = RQKMeansConfig(levels=3, codes=(6, 4, 3), iters=5, seed=2)
    q1, c1 = rqkmeans.fit_with_codes(x, cfg)
    q2, c2 = rqkmeans.fit_with_codes(x, cfg)
    assert [cb.shape[0] for cb in q1.codebooks] == [6, 4, 3]
    assert all(np.array_equal(a, b) for a, b in zip(q1.codebooks, q2.codebooks))
    assert np.array_equal(c1, c2) and np.array_equal(rqkmeans.encode(q1, x), c1)
    assert c1.max(axis=0).tolist() <= [5, 3, 2]
    other = rqkmeans.fit(x, RQKMeansConfig(levels=3, codes=(6, 4, 3), iters=5, seed=3))
    assert not all(np.array_equal(a, b) for a, b in zip(q1.codebooks, other.codebooks))


def test_minibatch_kmeans_finds_clusters():
    x = _blobs(n=600, k=6)
    cfg = RQKMeansConfig(levels=1, codes=6, minibatch_above=100, batch_size=64, minibatch_steps=40)
    q, codes = rqkmeans.fit_with_codes(x, cfg)
    truth = np.arange(600) % 6
    for c in range(6):  # each blob maps to one code, all codes used
        assert len(set(codes[truth == c, 0])) == 1
    assert len(set(codes[:, 0])) == 6
    full, _ = rqkmeans.kmeans(jax.random.key(0), x, 6, 20)
    mb_err = np.mean(np.min(((x[:, None] - q.codebooks[0][None]) ** 2).sum(-1), 1))
    full_err = np.mean(np.min(((x[:, None] - np.asarray(full)[None]) ** 2).sum(-1), 1))
    assert mb_err < 1.05 * full_err


def test_balanced_assignment_respects_capacity():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(150, 4)), rng.normal(size=(30, 4)) + 8]).astype(np.float32)
    for slack in (0.0, 0.5):
        cfg = RQKMeansConfig(levels=2, codes=6, iters=5, balanced=True, slack=slack)
        _, codes = rqkmeans.fit_with_codes(x, cfg)
        cap = int(np.ceil(np.ceil(180 / 6) * (1 + slack)))
        for lv in range(2):
            assert np.bincount(codes[:, lv]).max() <= cap
    # unbalanced k-means on the same data exceeds the cap, so the constraint did something
    _, plain = rqkmeans.fit_with_codes(x, RQKMeansConfig(levels=1, codes=6, iters=5))
    assert np.bincount(plain[:, 0]).max() > 30


def test_balanced_assign_keeps_closest_items():
    d = np.array([[0.0, 5], [1, 5], [2, 5], [3, 0.5]], np.float32)
    assign = np.asarray(rqkmeans.balanced_assign(d, 2))
    assert assign.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("bad, match", [
    ({"levels": 0}, "levels=0"), ({"levels": 17}, "levels=17"), ({"codes": 1}, "out of range"),
    ({"codes": (4, 4)}, "gives 2 levels"), ({"codes": 100_000}, "out of range")])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        rqkmeans.fit(_blobs(), RQKMeansConfig(**{"levels": 3, "codes": 4, **bad}))


def test_bad_vectors():
    x = _blobs()
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="first row 7"):
        rqkmeans.fit(x, RQKMeansConfig(codes=4))
    x[7, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        rqkmeans.fit(x, RQKMeansConfig(codes=4))
    with pytest.raises(ValueError, match="at least as many items"):
        rqkmeans.fit(_blobs(n=10), RQKMeansConfig(codes=16))
    with pytest.raises(ValueError, match="shape"):
        rqkmeans.fit(np.zeros(5), RQKMeansConfig(codes=4))


def test_quantizer_save_load(tmp_path):
    x = _blobs()
    q = quantizer.fit(x, RQKMeansConfig(levels=2, codes=(5, 3), iters=4))
    quantizer.save_quantizer(q, tmp_path / "q.npz")
    assert not list(tmp_path.glob("*.tmp*"))
    again = quantizer.load_quantizer(tmp_path / "q.npz", dim=8)
    assert again.config == q.config
    assert np.array_equal(quantizer.encode(again, x), quantizer.encode(q, x))
    with pytest.raises(ValueError, match="dim 8, got dim 16"):
        quantizer.load_quantizer(tmp_path / "q.npz", dim=16)
    with pytest.raises(ValueError, match="dim 8"):
        quantizer.encode(q, np.zeros((3, 4), np.float32))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        quantizer.load_quantizer(tmp_path / "nope.npz")

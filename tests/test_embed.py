"""Collaborative item vectors (PPMI + truncated SVD) and loading user-supplied vectors."""

import numpy as np
import pytest

from sidjax.data import embed
from sidjax.data.embed import (
    collaborative_item_vectors,
    cooccurrence_matrix,
    load_item_vectors,
    ppmi_matrix,
)


def _paired_catalog(num_users: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Items 0 and 1 always appear together; items 2..11 are browsed at random; 12 never."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(num_users):
        others = rng.choice(np.arange(2, 12), size=3, replace=False)
        seq = list(others)
        if rng.random() < 0.5:
            pos = int(rng.integers(0, len(seq) + 1))
            seq[pos:pos] = [0, 1]
        seqs.append(np.array(seq, dtype=np.int32))
    return seqs


def test_cooccurrence_counts_within_window():
    counts = cooccurrence_matrix([np.array([0, 1, 2, 1]), np.array([3])], 5, window=1).toarray()
    expected = np.zeros((5, 5))
    for a, b in [(0, 1), (1, 2), (2, 1)]:
        expected[a, b] += 1
        expected[b, a] += 1
    np.testing.assert_array_equal(counts, expected)
    whole = cooccurrence_matrix([np.array([0, 1, 2, 1])], 3, window=None).toarray()
    assert whole[0, 2] == 1 and whole[0, 1] == 2 and np.all(np.diag(whole) == 0)


@pytest.mark.parametrize("alpha", [1.0, 0.75])
def test_ppmi_is_nonnegative_and_symmetric(alpha):
    counts = cooccurrence_matrix(_paired_catalog(), 13)
    ppmi = ppmi_matrix(counts, alpha).toarray()
    assert ppmi.min() >= 0 and ppmi[0, 1] > 0
    np.testing.assert_allclose(ppmi, ppmi.T, atol=1e-12)
    if alpha == 1.0:
        c = counts.toarray()
        expected = np.log(c[0, 1] * c.sum() / (c[0].sum() * c[1].sum()))
        np.testing.assert_allclose(ppmi[0, 1], expected)


@pytest.mark.parametrize("dense_max", [embed.DENSE_EIGH_MAX_ITEMS, 0])
def test_items_that_always_cooccur_are_closest(dense_max, monkeypatch):
    monkeypatch.setattr(embed, "DENSE_EIGH_MAX_ITEMS", dense_max)  # 0: the sparse eigsh path
    vecs = collaborative_item_vectors(_paired_catalog(), 13, dim=8, window=None, seed=0)
    assert vecs.shape == (13, 8) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    sims = vecs @ vecs.T
    pair = sims[0, 1]
    unrelated = np.concatenate([sims[0, 2:12], sims[1, 2:12]])
    assert pair > 0.99 and pair > unrelated.max() + 0.3, (pair, unrelated)


def test_deterministic_and_unseen_items_get_seeded_random_vectors():
    seqs = _paired_catalog()
    a = collaborative_item_vectors(seqs, 14, dim=8, seed=3)
    b = collaborative_item_vectors(seqs, 14, dim=8, seed=3)
    np.testing.assert_array_equal(a, b)
    c = collaborative_item_vectors(seqs, 14, dim=8, seed=4)
    # Items 12 and 13 are never seen: unit random vectors, fixed by the seed, unrelated to others.
    np.testing.assert_array_equal(a[:12], c[:12])
    assert not np.allclose(a[12:], c[12:])
    np.testing.assert_allclose(np.linalg.norm(a[12:], axis=1), 1.0, atol=1e-6)
    # More dims than co-occurring items: the extra columns are zero.
    wide = collaborative_item_vectors(seqs, 14, dim=20, seed=0)
    assert wide.shape == (14, 20) and np.all(wide[:12, 12:] == 0)


def test_collaborative_rejects_bad_indices():
    msg = r"item index 7 in training sequence 1 is outside \[0, 5\)"
    with pytest.raises(ValueError, match=msg):
        collaborative_item_vectors([np.array([0, 1]), np.array([2, 7])], 5)
    with pytest.raises(ValueError, match="window=0 must be >= 1"):
        collaborative_item_vectors([np.array([0, 1])], 5, window=0)


def test_load_npy_in_item_order(tmp_path):
    vecs = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "v.npy", vecs)
    out = load_item_vectors(tmp_path / "v.npy", ["a", "b", "c", "d"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, vecs)
    with pytest.raises(ValueError, match=r"shape \(4, 3\), expected \[5, d\]"):
        load_item_vectors(tmp_path / "v.npy", list("abcde"))


def test_load_npz_by_id(tmp_path):
    ids = np.array([30, 10, 20, 99])
    vecs = np.eye(4, 2, dtype=np.float32) + ids[:, None]
    np.savez(tmp_path / "v.npz", ids=ids, vectors=vecs)
    out = load_item_vectors(tmp_path / "v.npz", ["10", "20", "30"])
    np.testing.assert_array_equal(out, vecs[[1, 2, 0]])


def test_load_reports_nan_with_item_id_and_row(tmp_path):
    vecs = np.ones((4, 2))
    vecs[2, 1] = np.nan
    vecs[3, 0] = np.inf
    np.save(tmp_path / "v.npy", vecs)
    with pytest.raises(ValueError, match=r"item id 'c' \(row 2 of the file\).*2 bad rows"):
        load_item_vectors(tmp_path / "v.npy", list("abcd"))
    np.savez(tmp_path / "v.npz", ids=np.array(["x", "y"]), vectors=np.array([[1.0], [np.inf]]))
    with pytest.raises(ValueError, match=r"item id 'y' \(row 1 of the file\)"):
        load_item_vectors(tmp_path / "v.npz", ["y", "x"])


def test_load_reports_missing_and_duplicate_ids(tmp_path):
    np.savez(tmp_path / "v.npz", ids=np.array(["a", "b"]), vectors=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"3 of 5 catalog items have no vector \(first: 'c', 'd'"):
        load_item_vectors(tmp_path / "v.npz", list("abcde"))
    np.savez(tmp_path / "d.npz", ids=np.array(["a", "a"]), vectors=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"'a' appears twice in 'ids' \(rows 0 and 1\)"):
        load_item_vectors(tmp_path / "d.npz", ["a"])
    np.savez(tmp_path / "k.npz", emb=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"holds arrays \['emb'\], expected 'ids'"):
        load_item_vectors(tmp_path / "k.npz", ["a"])
    with pytest.raises(ValueError, match="unsupported suffix '.txt'"):
        (tmp_path / "v.txt").write_text("1 2")
        load_item_vectors(tmp_path / "v.txt", ["a"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_item_vectors(tmp_path / "nope.npy", ["a"])

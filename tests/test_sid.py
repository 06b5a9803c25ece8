import numpy as np
import pytest

from sidjax.sid.build import build_sid_table
from sidjax.sid.rqkmeans import encode_rqkmeans, fit_rqkmeans, kmeans
from sidjax.sid.table import (
    SIDTable,
    add_collision_level,
    load_sid_table,
    save_sid_table,
)
from sidjax.sid.trie import build_trie


def _blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 8)) * 10
    return (centers[np.arange(n) % 4] + rng.normal(size=(n, 8))).astype(np.float32)


def test_kmeans_separates_blobs():
    import jax

    x = _blobs()
    _, assign = kmeans(jax.random.key(0), x, 4, 10)
    assign = np.asarray(assign)
    for c in range(4):
        assert len(set(assign[np.arange(200) % 4 == c])) == 1
    assert len(set(assign)) == 4


def test_rqkmeans_is_deterministic_and_reduces_error():
    x = _blobs()
    a = fit_rqkmeans(x, 3, 8, iters=10, seed=1)
    b = fit_rqkmeans(x, 3, 8, iters=10, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    codes = encode_rqkmeans(a, x)
    assert codes.shape == (200, 3) and codes.max() < 8
    errors = []
    recon = np.zeros_like(x)
    for level, cb in enumerate(a):
        recon = recon + cb[codes[:, level]]
        errors.append(np.mean((x - recon) ** 2))
    assert errors[0] > errors[1] > errors[2]


def test_collision_level_makes_sids_unique():
    codes = np.array([[0, 1], [0, 1], [2, 2], [0, 1], [2, 2], [1, 0]])
    full = add_collision_level(codes)
    assert list(full[:, -1]) == [0, 1, 0, 2, 1, 0]
    assert len(np.unique(full, axis=0)) == len(full)


def test_build_sid_table_and_artifact(tmp_path):
    table, diag = build_sid_table(_blobs(), [f"i{i}" for i in range(200)], levels=2, codes=4,
                                  iters=5)
    assert table.codes.shape == (200, 3)
    assert len(np.unique(table.codes, axis=0)) == 200
    assert table.codes_per_level[:2] == (4, 4)
    assert table.codes_per_level[2] == diag["max_collision_group"]
    save_sid_table(table, tmp_path / "sids.npz")
    again = load_sid_table(tmp_path / "sids.npz")
    assert np.array_equal(again.codes, table.codes) and again.item_ids == table.item_ids
    assert again.content_hash() == table.content_hash()
    assert not list(tmp_path.glob("*.tmp*"))


def test_load_sid_table_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_sid_table(tmp_path / "missing.npz")
    dup = SIDTable(np.array([[0, 0], [0, 0]]), (1, 1), ("a", "b"))
    save_sid_table(dup, tmp_path / "dup.npz")
    with pytest.raises(ValueError, match="not unique"):
        load_sid_table(tmp_path / "dup.npz")


def _reference_children(codes, prefix):
    d = len(prefix)
    rows = codes[np.all(codes[:, :d] == prefix, axis=1)] if d else codes
    return sorted(set(rows[:, d].tolist()))


@pytest.mark.parametrize("seed", [0, 1])
def test_trie_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    codes = add_collision_level(rng.integers(0, 4, size=(150, 3)))
    trie = build_trie(codes)
    assert trie.depth == 4
    for item in range(len(codes)):
        assert trie.item_of(codes[item]) == item
    assert trie.item_of([9, 9, 9, 9]) == -1
    # children of every node match a brute-force scan of the codes
    for d in range(trie.depth):
        prefixes = np.unique(codes[:, :d], axis=0) if d else np.zeros((1, 0), int)
        assert trie.child_codes[d].shape[0] == len(prefixes)
        for node, prefix in enumerate(prefixes):
            row = trie.child_codes[d][node]
            assert sorted(row[row >= 0].tolist()) == _reference_children(codes, prefix)
            lo, hi = trie.offsets[d][node], trie.offsets[d][node + 1]
            assert hi - lo == np.sum(row >= 0)


def test_trie_rejects_duplicates():
    with pytest.raises(ValueError, match="unique"):
        build_trie(np.array([[0, 1], [0, 1]]))


@pytest.mark.parametrize("seed", [0, 3])
def test_trie_masks_match_brute_force_on_random_prefixes(seed):
    import jax

    from sidjax.sid.trie import child_mask, node_of

    rng = np.random.default_rng(seed)
    k = 5
    codes = add_collision_level(rng.integers(0, k, size=(120, 3)))
    trie = build_trie(codes)
    width = max(k, int(codes[:, -1].max()) + 1)
    masked = jax.jit(child_mask, static_argnums=2)
    for depth in range(trie.depth):
        prefixes = rng.integers(0, k, size=(40, depth))
        prefixes[:20] = codes[rng.integers(0, len(codes), 20), :depth]  # half valid, half random
        nodes = np.array([node_of(trie, p) for p in prefixes])
        got = np.asarray(masked(trie.child_codes[depth], nodes, width))
        for p, row in zip(prefixes, got):
            match = np.all(codes[:, :depth] == p, axis=1)
            want = np.zeros(width, bool)
            want[codes[match, depth]] = True
            assert np.array_equal(row, want), (depth, p)

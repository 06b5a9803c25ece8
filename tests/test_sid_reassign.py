import itertools

import numpy as np
import pytest

from sidjax.sid.build import build_sid_table
from sidjax.sid.diagnostics import collision_stats, level_stats, sid_diagnostics
from sidjax.sid.reassign import reassign_collisions, split_full_prefixes
from sidjax.sid.table import sid_to_items


def _case(seed, n=150, k=8):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, 10, n), rng.integers(0, 5, n), rng.integers(0, 3, n)], 1)
    return codes, rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(k, 5)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reassignment_removes_collisions_within_prefix(seed):
    codes, res, book = _case(seed)
    out = reassign_collisions(codes, res, book)
    sizes = np.unique(codes[:, :2], axis=0, return_counts=True)[1]
    assert out.unresolved == np.sum(np.maximum(sizes - 8, 0))  # only prefixes with > K items
    assert len(np.unique(out.codes, axis=0)) == len(codes)
    assert out.codes.shape[1] == 3 + (out.unresolved > 0)
    assert np.array_equal(out.codes[:, :2], codes[:, :2])  # never leaves its prefix
    changed = out.codes[:, 2] != codes[:, 2]
    assert out.moved == changed.sum() > 0
    d = lambda c: np.sum((res - book[c]) ** 2, axis=1)
    assert out.cost == pytest.approx(float(np.sum(d(out.codes[:, 2]) - d(codes[:, 2]))), rel=1e-4)


def test_reassignment_is_optimal_on_small_group():
    rng = np.random.default_rng(5)
    codes = np.array([[0, 1]] * 3 + [[0, 2], [1, 1]])
    res = rng.normal(size=(5, 3)).astype(np.float32)
    book = rng.normal(size=(5, 3)).astype(np.float32)
    out = reassign_collisions(codes, res, book)
    own = np.sum((res[:3] - book[1]) ** 2, axis=1)
    keeper = int(np.argmin(own))
    movers = [i for i in range(3) if i != keeper]
    free = [0, 3, 4]
    best = min(sum(np.sum((res[m] - book[f]) ** 2) for m, f in zip(movers, perm))
               for perm in itertools.permutations(free, 2))
    got = sum(np.sum((res[m] - book[out.codes[m, 1]]) ** 2) for m in movers)
    assert out.codes[keeper, 1] == 1 and got == pytest.approx(best, rel=1e-5)
    assert out.moved == 2 and np.array_equal(out.codes[3:], codes[3:])


def test_full_prefix_falls_back_to_extra_level():
    codes = np.array([[0, 0], [0, 1], [0, 1], [0, 1], [1, 0], [1, 0]])
    out = reassign_collisions(codes, np.zeros((6, 2), np.float32), np.eye(2, dtype=np.float32))
    # prefix 0 uses both codes: its two extra items stay and get numbered; prefix 1 moves one item
    assert out.unresolved == 2 and out.moved == 1 and out.codes.shape == (6, 3)
    assert len(np.unique(out.codes, axis=0)) == 6
    assert np.array_equal(out.codes[:, 0], codes[:, 0])


def test_build_sid_table_reassign_and_duplicate_ids():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    ids = [f"i{i}" for i in range(200)]
    table, diag = build_sid_table(x, ids, levels=2, codes=(4, 64), iters=5, reassign=True)
    assert table.codes.shape == (200, 2) and len(np.unique(table.codes, axis=0)) == 200
    assert diag["unique_after"] and diag["items_moved"] > 0 and diag["collision_rate_before_dedup"] > 0
    with pytest.raises(ValueError, match="duplicate item ids"):
        build_sid_table(x, ids[:-1] + ["i3"], levels=2, codes=4)
    with pytest.raises(ValueError, match="199 item ids"):
        build_sid_table(x, ids[:-1], levels=2, codes=4)


def test_level_stats_and_collision_hook():
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0]])
    s = level_stats(codes, (4, 2))
    assert s[0]["used"] == 2 and s[0]["utilization"] == 0.5 and s[0]["largest_group"] == 3
    assert s[0]["perplexity"] == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    assert s[1]["prefixes"] == 3 and s[1]["median_group"] == 1
    assert collision_stats(codes) == {"collision_rate": 0.5, "max_collision_group": 2}
    assert sid_to_items(codes)[(0, 0)] == [0, 1]
    x = np.ones((4, 2))
    diag = sid_diagnostics(codes, codes, (4, 2), x, x * 0.5, moved=1)
    assert diag["share_moved"] == 0.25 and not diag["unique_after"]
    assert diag["reconstruction_mse"] == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [0, 1])
def test_split_full_prefixes_caps_groups_within_parent(seed):
    rng = np.random.default_rng(seed)
    n, k2, k3 = 120, 6, 8  # 40 items per level-1 prefix, room for 6 x 8
    codes = np.stack([rng.integers(0, 3, n), rng.choice(k2, n, p=[0.5, 0.3, 0.1, 0.05, 0.05, 0.0]),
                      rng.integers(0, k3, n)], 1)
    res = rng.normal(size=(n, 4)).astype(np.float32)
    book, last = rng.normal(size=(k2, 4)).astype(np.float32), rng.normal(size=(k3, 4)).astype(np.float32)
    out = split_full_prefixes(codes, res, book, last)
    assert np.unique(out.codes[:, :2], axis=0, return_counts=True)[1].max() <= k3
    assert np.array_equal(out.codes[:, 0], codes[:, 0])  # items stay under their level-1 prefix
    changed = out.codes[:, 1] != codes[:, 1]
    assert out.moved == changed.sum() > 0 and out.unresolved == 0
    # an over-full group keeps its items closest to its centroid
    own = np.sum((res - book[codes[:, 1]]) ** 2, axis=1)
    for row in np.flatnonzero(changed):
        stayed = np.all(out.codes[:, :2] == codes[row, :2], axis=1) & ~changed
        assert own[row] >= own[stayed].max()
    rest = res[changed] - book[out.codes[changed, 1]]
    want_last = np.argmin(((rest[:, None] - last[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(out.codes[changed, 2], want_last)
    d = np.sum((res - book[out.codes[:, 1]]) ** 2, axis=1) - own
    assert out.cost == pytest.approx(float(d.sum()), rel=1e-4)
    final = reassign_collisions(out.codes, res - book[out.codes[:, 1]], last)
    assert final.unresolved == 0 and final.codes.shape == (n, 3)


def test_split_full_prefixes_without_room_reports_unresolved():
    codes = np.array([[0, 0, 0]] * 5 + [[1, 0, 0]])
    out = split_full_prefixes(codes, np.zeros((6, 2), np.float32), np.eye(2, dtype=np.float32),
                              np.eye(2, dtype=np.float32))
    # prefix (0,) holds 5 items but has room for 2 x 2: one item cannot be placed
    assert out.moved == 2 and out.unresolved == 1
    assert np.array_equal(out.codes[5], [1, 0, 0])


def test_greedy_fill_respects_room_and_takes_closest_first():
    from sidjax.sid.reassign import _greedy_fill

    dist = np.array([[0.1, 5.0, 9.0], [0.2, 4.0, 9.0], [0.3, 0.5, 9.0], [9.0, 9.0, 9.0]])
    # column 0 has room for 1: row 0 (closest) takes it; rows 1, 2 go to column 1 (room 2); row 3
    # finds only column 2 (room 1)
    assert _greedy_fill(dist, np.array([1, 2, 1])).tolist() == [0, 1, 1, 2]
    assert _greedy_fill(dist, np.array([1, 1, 0])).tolist() == [0, -1, 1, -1]

"""Tests for sidjax.eval.stats: metrics, bootstrap, paired test and slice breakdowns."""

import numpy as np
import pytest

from sidjax.eval import stats

RANKS = np.array([0, 1, 4, 9, -1, 19, 25])
L3, L6, L11 = 1 / np.log2(3), 1 / np.log2(6), 1 / np.log2(11)


@pytest.mark.parametrize(
    "k, recall, ndcg",
    [
        (1, [1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]),
        (2, [1, 1, 0, 0, 0, 0, 0], [1, L3, 0, 0, 0, 0, 0]),
        (5, [1, 1, 1, 0, 0, 0, 0], [1, L3, L6, 0, 0, 0, 0]),
        (10, [1, 1, 1, 1, 0, 0, 0], [1, L3, L6, L11, 0, 0, 0]),
        (20, [1, 1, 1, 1, 0, 1, 0], [1, L3, L6, L11, 0, 1 / np.log2(21), 0]),
    ],
)
def test_recall_and_ndcg_hand_computed(k, recall, ndcg):
    np.testing.assert_allclose(stats.recall_at_k(RANKS, k), recall)
    np.testing.assert_allclose(stats.ndcg_at_k(RANKS, k), ndcg)


def test_summarize_keys_and_means():
    out = stats.summarize(RANKS, ks=(1, 5))
    assert list(out) == ["recall@1", "ndcg@1", "recall@5", "ndcg@5"]
    assert out["recall@1"] == pytest.approx(1 / 7)
    assert out["recall@5"] == pytest.approx(3 / 7)
    assert out["ndcg@5"] == pytest.approx((1 + L3 + L6) / 7)


@pytest.mark.parametrize("bad", [np.array([0, -2]), np.array([[0, 1]]), np.array([0.0, 1.0])])
def test_bad_ranks_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        stats.recall_at_k(bad, 5)


def test_bootstrap_ci_contains_mean_narrows_and_is_deterministic():
    rng = np.random.default_rng(0)
    small = (rng.random(100) < 0.3).astype(float)
    large = (rng.random(10_000) < 0.3).astype(float)
    m_s, lo_s, hi_s = stats.bootstrap_ci(small, num_samples=500)
    m_l, lo_l, hi_l = stats.bootstrap_ci(large, num_samples=500)
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert m_s == pytest.approx(small.mean())
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4
    # Normal approximation of a 95% interval: 2 * 1.96 * sd / sqrt(U).
    expected = 2 * 1.96 * large.std() / np.sqrt(large.size)
    assert (hi_l - lo_l) == pytest.approx(expected, rel=0.2)
    assert stats.bootstrap_ci(small, num_samples=500) == (m_s, lo_s, hi_s)
    draws = stats.bootstrap_means(small, num_samples=50)
    np.testing.assert_array_equal(draws, stats.bootstrap_means(small, num_samples=50))
    assert not np.array_equal(draws, stats.bootstrap_means(small, num_samples=50, seed=1))


def test_bootstrap_chunking_matches_unchunked(monkeypatch):
    values = np.random.default_rng(1).random(50)
    whole = stats.bootstrap_means(values, num_samples=64, seed=3)
    monkeypatch.setattr(stats, "_MAX_CHUNK_ELEMENTS", 50 * 5)
    chunked = stats.bootstrap_means(values, num_samples=64, seed=3)
    assert chunked.shape == (64,)
    # Different chunking draws differently, but the distribution is the same.
    assert abs(chunked.mean() - whole.mean()) < 0.05


def test_paired_test_detects_clearly_better_model():
    rng = np.random.default_rng(0)
    u = rng.random(2000)
    base = (u < 0.25).astype(float)
    better = (u < 0.35).astype(float)  # same users, strictly more hits
    out = stats.paired_test(better, base, num_samples=1000)
    assert out["mean_diff"] == pytest.approx(better.mean() - base.mean())
    assert out["ci_lo"] > 0 and out["ci_lo"] <= out["mean_diff"] <= out["ci_hi"]
    assert out["p_value"] < 0.05
    assert out["num_users"] == 2000


def test_paired_test_identical_models():
    values = (np.random.default_rng(0).random(500) < 0.3).astype(float)
    out = stats.paired_test(values, values.copy(), num_samples=500)
    assert out["mean_diff"] == 0.0 and out["ci_lo"] == 0.0 and out["ci_hi"] == 0.0
    assert out["p_value"] == 1.0


def test_paired_test_same_distribution_is_not_significant():
    rng = np.random.default_rng(5)
    a = (rng.random(1000) < 0.3).astype(float)
    b = (rng.random(1000) < 0.3).astype(float)
    out = stats.paired_test(a, b, num_samples=1000)
    assert out["p_value"] > 0.05


def test_popularity_buckets_by_interaction_mass():
    # Sorted by count: 30 (mass before 0) 25 (.30) 15 (.55) 10 (.70) 8 6 4 2 0.
    sorted_counts = np.array([30, 25, 15, 10, 8, 6, 4, 2, 0])
    perm = np.array([4, 0, 7, 2, 8, 1, 3, 6, 5])  # item perm[i] has the i-th largest count
    counts = np.empty_like(sorted_counts)
    counts[perm] = sorted_counts
    expected_sorted = ["head", "head", "torso", "tail", "tail", "tail", "tail", "tail", "tail"]
    got = stats.popularity_buckets(perm, counts)
    assert got.tolist() == expected_sorted
    # Targets repeat and come in any order.
    assert stats.popularity_buckets([perm[2], perm[0], perm[0]], counts).tolist() == [
        "torso",
        "head",
        "head",
    ]


def test_popularity_buckets_exact_thirds_and_top_item_always_head():
    assert stats.popularity_buckets([0, 1, 2], [1, 1, 1]).tolist() == ["head", "torso", "tail"]
    assert stats.popularity_buckets([0, 1, 2], [90, 5, 5]).tolist() == ["head", "tail", "tail"]
    with pytest.raises(ValueError):
        stats.popularity_buckets([3], [1, 1, 1])


@pytest.mark.parametrize(
    "edges, lengths, expected",
    [
        (
            (5, 10, 20),
            [0, 4, 5, 9, 10, 19, 20, 100],
            ["<5", "<5", "5-9", "5-9", "10-19", "10-19", ">=20", ">=20"],
        ),
        ((3, 4), [2, 3, 4], ["<3", "3", ">=4"]),
    ],
)
def test_length_buckets(edges, lengths, expected):
    assert stats.length_buckets(lengths, edges).tolist() == expected
    assert set(expected) <= set(stats.length_bucket_names(edges))


def test_breakdown_means_and_counts():
    values = {"recall@5": np.array([1.0, 0.0, 1.0, 1.0]), "ndcg@5": np.array([1.0, 0, 0.5, 0.25])}
    labels = np.array(["tail", "head", "head", "tail"])
    out = stats.breakdown(values, labels, order=stats.POPULARITY_ORDER)
    assert list(out) == ["head", "torso", "tail"]
    assert out["head"] == {"count": 2, "recall@5": 0.5, "ndcg@5": 0.25}
    assert out["tail"] == {"count": 2, "recall@5": 1.0, "ndcg@5": 0.625}
    assert out["torso"]["count"] == 0 and np.isnan(out["torso"]["recall@5"])
    assert list(stats.breakdown(values, labels)) == ["head", "tail"]


def test_hard_example_mask():
    correct = np.array([True, False, True, False])
    np.testing.assert_array_equal(stats.hard_example_mask(correct), [False, True, False, True])
    with pytest.raises(TypeError):
        stats.hard_example_mask(np.array([1, 0]))

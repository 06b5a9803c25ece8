"""Comparison statistics and the Markdown report, on hand-made per-user arrays."""

import numpy as np
import pytest

from sidjax.eval.metrics import full_sid_correct, history_lengths
from sidjax.eval.report import (
    breakdowns,
    comparison_report,
    confidence_intervals,
    hard_examples,
    paired_comparison,
    per_user_values,
)


def _results(num_users=60, seed=0):
    rng = np.random.default_rng(seed)
    base_ranks = rng.integers(-1, 20, num_users)
    better = np.where(rng.random(num_users) < 0.5, np.minimum(base_ranks, 0), base_ranks)
    base_greedy = np.zeros(num_users, bool)
    base_greedy[: num_users // 3] = True
    return {
        "popularity": per_user_values(rng.integers(-1, 20, num_users)),
        "baseline": per_user_values(base_ranks, greedy_correct=base_greedy,
                                    level_correct=rng.random((num_users, 3)) < 0.5),
        "prefixmem": per_user_values(better, greedy_correct=rng.random(num_users) < 0.5,
                                     level_correct=rng.random((num_users, 3)) < 0.6),
    }


def test_full_sid_correct_and_history_lengths():
    pred = np.array([[1, 2, 3], [1, 2, 0]])
    assert full_sid_correct(pred, np.array([[1, 2, 3], [1, 2, 3]])).tolist() == [True, False]
    with pytest.raises(ValueError, match="must both"):
        full_sid_correct(pred, np.zeros((2, 2)))
    assert history_lengths([np.arange(3), np.arange(70)], max_history=50).tolist() == [3, 50]


def test_per_user_values_keys_and_checks():
    v = per_user_values(np.array([0, 3, -1]), greedy_correct=np.array([True, False, False]),
                        level_correct=np.array([[1, 1], [1, 0], [0, 0]], bool), ks=(1, 5))
    assert v["recall@1"].tolist() == [1, 0, 0] and v["recall@5"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(v["ndcg@5"], [1, 1 / np.log2(5), 0])
    assert v["greedy_acc"].tolist() == [1, 0, 0] and v["acc_L2"].tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="greedy_correct"):
        per_user_values(np.array([0, 1]), greedy_correct=np.array([True]))


def test_hard_examples_use_baseline_greedy_failures():
    results = _results()
    hard = hard_examples(results)
    mask = results["baseline"]["greedy_acc"] == 0
    assert hard["baseline"]["count"] == mask.sum() == 40
    assert hard["baseline"]["greedy_acc"] == 0.0
    for name, r in results.items():
        assert hard[name]["recall@10"] == pytest.approx(r["recall@10"][mask].mean())
    with pytest.raises(ValueError, match="greedy_acc"):
        hard_examples(results, baseline="popularity")


def test_intervals_paired_test_and_breakdowns():
    results = _results()
    cis = confidence_intervals(results)
    mean, lo, hi = cis["prefixmem"]["recall@10"]
    assert lo <= mean <= hi and mean == pytest.approx(results["prefixmem"]["recall@10"].mean())
    same = paired_comparison({"a": results["baseline"], "b": results["baseline"]}, "a", "b")
    assert same["ndcg@10"]["p_value"] == 1.0 and same["ndcg@10"]["mean_diff"] == 0.0
    diff = paired_comparison(results, "prefixmem", "baseline")
    assert diff["recall@10"]["mean_diff"] >= 0
    counts = np.arange(30)[::-1].astype(float)
    targets = np.arange(60) % 30
    slices = breakdowns(results, target_items=targets, item_counts=counts,
                        history_lengths=np.arange(60) % 25)
    assert list(slices["popularity"]["baseline"]) == ["head", "torso", "tail"]
    assert sum(v["count"] for v in slices["history"]["prefixmem"].values()) == 60
    with pytest.raises(ValueError, match="different numbers of users"):
        breakdowns({"a": per_user_values(np.zeros(3, int)), "b": per_user_values(np.zeros(4, int))},
                   history_lengths=np.zeros(3))


def test_comparison_report_sections():
    results = _results()
    md = comparison_report(results, target_items=np.arange(60) % 30,
                           item_counts=np.arange(30)[::-1].astype(float),
                           history_lengths=np.arange(60) % 25, num_samples=200)
    for heading in ("### Results with intervals", "### Paired test: prefixmem - baseline",
                    "### Hard examples, old definition (40 users", "by target popularity",
                    "by history length"):
        assert heading in md
    headings = [i for i, line in enumerate(md.splitlines()) if line.startswith("#")]
    lines = md.splitlines()
    assert all(any(x.strip() and not x.startswith("#") for x in lines[a + 1:b])
               for a, b in zip(headings, headings[1:] + [len(lines)])), "a heading with no text"
    assert "| prefixmem vs baseline |" in md
    row = next(line for line in md.splitlines() if line.startswith("| popularity |"))
    assert "–" in row  # popularity has no greedy decode
    only = comparison_report({"baseline": results["baseline"]}, num_samples=50)
    assert "Paired test" not in only and "Hard examples" in only

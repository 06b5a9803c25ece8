"""Compare-report pieces on hand-made inputs: plots, seed spreads, gain intervals, compute."""

import json

import numpy as np
import pytest
from conftest import assert_png

from sidjax.eval import compute, plots, seeds
from sidjax.eval.comparison import PLOT_FILES, json_ready, summarize_comparison
from sidjax.eval.report import per_user_values


def _records(valid: bool, scale: float = 1.0):
    out = []
    for step in (10, 20, 30):
        out.append({"step": step, "loss": scale * 3 / step, "acc_l1": 0.1 * step / 30,
                    "acc_l2": 0.05 * step / 30, "tokens_per_s": 4800.0 / 0.25, "step_time_s": 0.25,
                    "grad_norm": 1.0})
        if valid:
            out.append({"step": step, "valid/loss": scale * 4 / step, "valid/recall@10": step / 90})
    return out


@pytest.mark.parametrize("valid, kind, keys", [
    (False, "training", ["acc_l1", "acc_l2", "loss"]),
    (True, "validation", ["valid/loss", "valid/recall@10"]),
])
def test_curves_plot_validation_keys_else_training(tmp_path, valid, kind, keys):
    runs = {"baseline": [_records(valid), _records(valid, 1.2)], "prefixmem": [_records(valid, 0.8)]}
    assert plots.curve_keys(runs["baseline"][0]) == (keys, kind)
    path, got = plots.plot_curves(runs, tmp_path / "curves.png")
    assert got == kind and path == tmp_path / "curves.png"
    assert_png(path)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left
    steps, values = plots.curve(runs["baseline"][0], keys[0])
    assert steps.tolist() == [10, 20, 30] and len(values) == 3


def test_bar_plots_and_bad_metrics_file(tmp_path):
    levels = {"popularity": [0.1, 0.4, 0.5, 0.8],
              "baseline": [[0.5, 0.6, 0.6, 0.8], [0.52, 0.61, 0.58, 0.79]]}
    assert_png(plots.plot_level_accuracy(levels, tmp_path / "levels.png"))
    # Three identical seeds: the float mean of 0.8148210573627732 x 3 is an ulp below it.
    same = {"popularity": [[0.05, 0.14, 0.36, 0.8148210573627732]] * 3}
    assert_png(plots.plot_level_accuracy(same, tmp_path / "same.png"))
    hard = {"baseline": [{"greedy_acc": 0.0, "recall@10": 0.3}],
            "popularity": [{"recall@10": 0.05}]}  # no greedy decode: that bar is left out
    assert_png(plots.plot_hard_examples(hard, ["greedy_acc", "recall@10"],
                                        tmp_path / "hard.png", title="hard"))
    with pytest.raises(ValueError, match="different numbers of SID levels"):
        plots.plot_level_accuracy({"a": [0.1, 0.2], "b": [0.1]}, tmp_path / "x.png")
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1}\n{"step": \n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        plots.read_metrics(bad)


def _reference_gain_sample(c, b, w, seed_counts, user_counts):
    """Plain-loop version of one bootstrap resample: expand the counts into drawn indices."""
    num = den = 0.0
    for s in np.repeat(np.arange(c.shape[0]), seed_counts):
        for u in np.repeat(np.arange(c.shape[1]), user_counts):
            num += w[s, u] * c[s, u]
            den += w[s, u] * b[s, u]
    return num / den - 1


@pytest.mark.parametrize("num_seeds, masked", [(1, False), (3, False), (3, True)])
def test_relative_gain_matches_plain_bootstrap(num_seeds, masked):
    rng = np.random.default_rng(1)
    c = (rng.random((num_seeds, 40)) < 0.6).astype(float)
    b = (rng.random((num_seeds, 40)) < 0.5).astype(float)
    w = (rng.random((num_seeds, 40)) < 0.5).astype(float) if masked else np.ones_like(c)
    out = seeds.relative_gain(c, b, w if masked else None, num_samples=50, seed=7)
    assert out["gain"] == pytest.approx((w * c).sum() / (w * b).sum() - 1)
    assert out["per_seed"] == pytest.approx(list((w * c).sum(1) / (w * b).sum(1) - 1))
    # same draws as the vectorised version: all seed counts of a chunk, then all user counts
    draws = np.random.default_rng(7)
    sc = draws.multinomial(num_seeds, np.full(num_seeds, 1 / num_seeds), size=50)
    uc = draws.multinomial(40, np.full(40, 1 / 40), size=50)
    expected = [_reference_gain_sample(c, b, w, sc[i], uc[i]) for i in range(50)]
    lo, hi = np.quantile(expected, [0.025, 0.975])
    assert (out["lo"], out["hi"]) == pytest.approx((lo, hi))
    same = seeds.relative_gain(b, b, num_samples=20)
    assert (same["gain"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same"):
        seeds.relative_gain(c, b[:, :3])


def _per_user(seed, num_users=30):
    rng = np.random.default_rng(seed)
    base_greedy = rng.random(num_users) < 0.4
    return {
        "popularity": per_user_values(rng.integers(-1, 20, num_users), ks=(5, 10)),
        "baseline": per_user_values(rng.integers(-1, 20, num_users), greedy_correct=base_greedy,
                                    level_correct=rng.random((num_users, 3)) < 0.5, ks=(5, 10)),
        "prefixmem": per_user_values(rng.integers(-1, 12, num_users),
                                     greedy_correct=rng.random(num_users) < 0.5,
                                     level_correct=rng.random((num_users, 3)) < 0.6, ks=(5, 10)),
    }


def _result(per_user):
    r = {m: float(np.mean(v)) for m, v in per_user.items() if m.startswith(("recall", "ndcg"))}
    r["level_accuracy"] = [float(np.mean(per_user[f"acc_L{i}"])) if f"acc_L{i}" in per_user
                           else 0.3 for i in (1, 2, 3)]
    return r | {"users": 30, "users_per_s": 100.0}


def test_seed_metrics_spread_and_means():
    per_seed = [seeds.seed_metrics(_per_user(s)) for s in range(3)]
    hard = _per_user(0)["baseline"]["greedy_acc"] == 0
    assert per_seed[0]["prefixmem"]["hard/recall@10"] == pytest.approx(
        _per_user(0)["prefixmem"]["recall@10"][hard].mean())
    assert per_seed[0]["baseline"]["hard/greedy_acc"] == 0.0
    summary = seeds.summarize_seeds(per_seed)
    values = [p["prefixmem"]["recall@10"] for p in per_seed]
    assert summary["prefixmem"]["recall@10"] == pytest.approx(
        {"mean": np.mean(values), "std": np.std(values, ddof=1), "min": min(values),
         "max": max(values), "n": 3})
    assert np.isnan(seeds.spread([0.5])["std"])
    mean = seeds.mean_results([_result(_per_user(s)["baseline"]) for s in range(2)])
    assert mean["users"] == 30 and mean["seeds"] == 2 and set(mean["std"]) >= {"recall@10",
                                                                               "acc_L3"}


def _computes(pm_share=0, steps=100):
    return {"baseline": compute.TrainingCompute(1000, 0, 64 * 36, 100, 64),
            "prefixmem": compute.TrainingCompute(1000 + pm_share, pm_share, 64 * 36, steps, 64)}


@pytest.mark.parametrize("share, steps, matched, words", [
    (20, 100, True, "Matched compute"),
    (200, 100, False, "baseline would need 120 steps"),
    (0, 50, False, "steps set per model (baseline 100, prefixmem 50)"),
    (-500, 200, True, "steps set per model (baseline 100, prefixmem 200)"),
])
def test_matched_statement(share, steps, matched, words):
    ok, text = compute.matched_statement(_computes(share, steps), "baseline")
    assert ok is matched and words in text
    md = compute.compute_markdown(_computes(share, steps), "baseline")
    assert "| baseline | 1,000 | 0 | 2,304 |" in md and "run_compare(" in md


def test_matched_steps_equalise_training_flops():
    steps = compute.matched_steps({"baseline": 1000, "prefixmem": 1141}, 300)
    assert steps == {"baseline": 342, "prefixmem": 300}
    computes = {n: compute.TrainingCompute(f, 0, 64 * 36, steps[n], 64)
                for n, f in (("baseline", 1000), ("prefixmem", 1141))}
    assert compute.matched_statement(computes, "baseline")[0]
    with pytest.raises(ValueError, match="positive"):
        compute.matched_steps({"baseline": 0}, 10)


def test_tokens_per_step_from_the_loop_records():
    assert compute.tokens_per_step(_records(False)) == 4800
    with pytest.raises(ValueError, match="tokens_per_s"):
        compute.tokens_per_step([{"step": 1, "loss": 2.0}])


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_summarize_comparison_writes_plots_and_sections(tmp_path, num_seeds):
    users = {s: _per_user(s) for s in range(num_seeds)}
    results = {s: {name: _result(u) for name, u in users[s].items()} for s in users}
    records = {"baseline": [_records(False)] * num_seeds, "prefixmem": [_records(False)] * num_seeds}
    out = summarize_comparison(results, users, records, _computes(20), reference="baseline",
                               deepest_level=3, out_dir=tmp_path, num_samples=100)
    for _, name in out["plots"]:
        assert_png(tmp_path / name)
    assert sorted(n for _, n in out["plots"]) == sorted(PLOT_FILES.values())
    assert "### Relative gain of prefixmem over baseline" in out["seeds_markdown"]
    assert "| hard/acc_L3 |" in out["seeds_markdown"] and out["matched"]
    assert ("### Per-seed results" in out["seeds_markdown"]) == (num_seeds > 1)
    assert ("### Hard examples" in out["analysis"]) == (num_seeds == 1)
    assert ("std" in out["results"]["prefixmem"]) == (num_seeds > 1)
    json.loads(json.dumps(json_ready(out["json"]), allow_nan=False))  # strict JSON


def test_deep_subset_is_chosen_by_a_held_aside_seed_of_the_reference():
    """``deep/``: prefix right, deepest level wrong, judged on another seed's baseline decode, so
    a seed's subset does not depend on the errors of the run it is measured on."""
    def run(greedy_levels):
        ranks = np.zeros(4, int)
        return {"baseline": per_user_values(ranks, greedy_correct=greedy_levels.all(axis=1),
                                            greedy_levels=greedy_levels, ks=(5,)),
                "prefixmem": per_user_values(np.array([0, -1, 0, -1]), ks=(5,))}
    a = run(np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], bool))  # deep: users 0, 3
    b = run(np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0], [1, 1, 1]], bool))  # deep: user 1
    np.testing.assert_array_equal(seeds.deep_mask(a["baseline"], 3), [True, False, False, True])
    masks = seeds.deep_masks([a, b], "baseline", 3)
    np.testing.assert_array_equal(masks[0], [False, True, False, False])  # seed 0 judged by b
    np.testing.assert_array_equal(masks[1], [True, False, False, True])
    row = seeds.seed_metrics(a, "baseline", masks[0])
    assert row["prefixmem"]["deep/count"] == 1 and row["prefixmem"]["deep/recall@5"] == 0.0
    gains = seeds.gains_over_seeds([a, b], "prefixmem", "baseline", ["deep/recall@5"],
                                   num_samples=50, deep=masks)
    assert gains["deep/recall@5"]["per_seed"][0] == pytest.approx(-1.0)  # user 1: 0 vs 1
    assert gains["deep/recall@5"]["per_seed"][1] == pytest.approx(-0.5)  # users 0, 3: 1 of 2
    assert seeds.deep_masks([a], "baseline", 3) is None  # one seed: its own selection, degenerate
    no_levels = {"baseline": {"greedy_acc": np.ones(4)}}
    assert seeds.deep_masks([no_levels, no_levels], "baseline", 3) is None

"""Per-user evaluation arrays -> comparison statistics and a Markdown report.

A model's evaluation is summarised by :func:`per_user_values`: ``{metric: float [U]}`` with
``recall@k``, ``ndcg@k``, optionally ``greedy_acc`` (greedy full-SID decode correct) and ``acc_L<l>``
(teacher-forced level-l code correct). Every model must be evaluated on the same users in the same
order; the functions below compare those dicts: bootstrap intervals, a paired test, hard examples
(users whose baseline greedy decode of the full SID is wrong) and popularity / history-length
breakdowns. :func:`comparison_report` assembles them into ``report.md`` sections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sidjax.eval import stats

PerUser = Mapping[str, np.ndarray]


def per_user_values(ranks, *, greedy_correct=None, level_correct=None, greedy_levels=None,
                    ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-user metrics ``{name: float [U]}`` of one model.

    Args:
      ranks: int ``[U]``, 0-based rank of the target in the recommendation list, -1 if absent.
      greedy_correct: bool ``[U]`` from :func:`sidjax.eval.metrics.full_sid_correct` on the greedy
        codes, or None (a model without a greedy decode, e.g. popularity).
      level_correct: bool ``[U, L]``, teacher-forced correctness of each level's code, or None.
      greedy_levels: bool ``[U, L]``, whether the greedy decode's level-l code is the target's
        (``greedy_L<l>``; the deep-level subset of :func:`sidjax.eval.seeds.deep_masks`), or None.
      ks: Recall/NDCG cutoffs.
    """
    out = stats.per_user_metrics(ranks, ks)
    n = len(next(iter(out.values())))
    if greedy_correct is not None:
        out["greedy_acc"] = _check_users(greedy_correct, n, "greedy_correct").astype(np.float64)
    if level_correct is not None:
        lc = np.asarray(level_correct)
        if lc.ndim != 2 or lc.shape[0] != n:
            raise ValueError(f"level_correct must be [U={n}, L], got {lc.shape}")
        out.update({f"acc_L{i + 1}": lc[:, i].astype(np.float64) for i in range(lc.shape[1])})
    if greedy_levels is not None:
        gl = np.asarray(greedy_levels)
        if gl.ndim != 2 or gl.shape[0] != n:
            raise ValueError(f"greedy_levels must be [U={n}, L], got {gl.shape}")
        out.update({f"greedy_L{i + 1}": gl[:, i].astype(np.float64) for i in range(gl.shape[1])})
    return out


def _check_users(values, n: int, name: str) -> np.ndarray:
    v = np.asarray(values)
    if v.shape != (n,):
        raise ValueError(f"{name} must be [U={n}], got shape {v.shape}")
    return v


def _num_users(results: Mapping[str, PerUser]) -> int:
    sizes = {name: len(next(iter(r.values()))) for name, r in results.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"models were evaluated on different numbers of users: {sizes}")
    return next(iter(sizes.values()))


def confidence_intervals(results: Mapping[str, PerUser],
                         metrics: Sequence[str] = ("recall@10", "ndcg@10"), *,
                         num_samples: int = 1000, seed: int = 0) -> dict[str, dict[str, tuple]]:
    """95% bootstrap intervals over users: ``{model: {metric: (mean, lo, hi)}}``."""
    return {name: {m: stats.bootstrap_ci(r[m], num_samples=num_samples, seed=seed)
                   for m in metrics if m in r} for name, r in results.items()}


def paired_comparison(results: Mapping[str, PerUser], model_a: str, model_b: str,
                      metrics: Sequence[str] = ("recall@10", "ndcg@10"), *,
                      num_samples: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Paired test of ``model_a - model_b`` on the same users: ``{metric: stats.paired_test(...)}``."""
    _num_users({model_a: results[model_a], model_b: results[model_b]})
    return {m: stats.paired_test(results[model_a][m], results[model_b][m],
                                 num_samples=num_samples, seed=seed)
            for m in metrics if m in results[model_a] and m in results[model_b]}


def hard_examples(results: Mapping[str, PerUser], baseline: str = "baseline"
                  ) -> dict[str, dict[str, float]]:
    """Every model's mean metrics on the users whose ``baseline`` greedy full-SID decode is wrong.

    Returns ``{model: {"count": n, metric: mean, ...}}`` (NaN means when there is no such user).
    """
    if "greedy_acc" not in results.get(baseline, {}):
        raise ValueError(f"hard examples need the greedy_acc of model {baseline!r}; got models "
                         f"{sorted(results)} (pass greedy_correct to per_user_values)")
    _num_users(results)
    hard = stats.hard_example_mask(results[baseline]["greedy_acc"] > 0.5)
    labels = np.where(hard, "hard", "easy")
    return {name: stats.breakdown(r, labels, order=["hard"])["hard"] for name, r in results.items()}


def breakdowns(results: Mapping[str, PerUser], *, target_items=None, item_counts=None,
               history_lengths=None, length_edges: Sequence[int] = (5, 10, 20)
               ) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{"popularity" | "history": {model: {bucket: {"count", metric: mean}}}}``.

    Popularity buckets (head / torso / tail thirds of training interactions) need ``target_items``
    and ``item_counts``; history buckets need ``history_lengths`` (items in each user's input).
    """
    n = _num_users(results)
    out = {}
    if target_items is not None and item_counts is not None:
        labels = stats.popularity_buckets(_check_users(target_items, n, "target_items"), item_counts)
        out["popularity"] = {name: stats.breakdown(r, labels, order=stats.POPULARITY_ORDER)
                             for name, r in results.items()}
    if history_lengths is not None:
        labels = stats.length_buckets(_check_users(history_lengths, n, "history_lengths"),
                                      length_edges)
        order = stats.length_bucket_names(length_edges)
        out["history"] = {name: stats.breakdown(r, labels, order=order)
                          for name, r in results.items()}
    return out


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def comparison_report(results_per_model: Mapping[str, PerUser], *, baseline: str = "baseline",
                      candidate: str | Sequence[str] = "prefixmem", target_items=None,
                      item_counts=None, history_lengths=None, ks: Sequence[int] = (5, 10),
                      num_samples: int = 1000, seed: int = 0, include_hard: bool = True) -> str:
    """Markdown sections comparing models evaluated on the same users.

    ``results_per_model``: ``{model: per_user_values(...)}``, e.g. popularity, baseline, prefixmem.
    Sections: results with 95% bootstrap intervals for Recall@10 / NDCG@10 and relative gains of
    each ``candidate`` (a name or several) over ``baseline``; a paired test of each against it;
    hard examples (baseline greedy full-SID decode wrong) when the baseline has ``greedy_acc`` and
    ``include_hard``; breakdowns by target popularity and history length when the corresponding
    arrays are given. Missing models/metrics are skipped.
    """
    results = dict(results_per_model)
    candidates = [c for c in ([candidate] if isinstance(candidate, str) else candidate)
                  if c in results and c != baseline and baseline in results]
    _num_users(results)
    cis = confidence_intervals(results, num_samples=num_samples, seed=seed)
    metrics = ([f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["greedy_acc"]
               + sorted({m for r in results.values() for m in r if m.startswith("acc_L")}))
    metrics = [m for m in metrics if any(m in r for r in results.values())]

    def cell(name, m):
        r = results[name]
        if m not in r:
            return "–"
        if m in cis[name]:
            mean, lo, hi = cis[name][m]
            return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"
        return _fmt(float(np.mean(r[m])))

    rows = [[name] + [cell(name, m) for m in metrics] for name in results]
    for other in candidates:
        gain = []
        for m in metrics:
            a, b = results[other].get(m), results[baseline].get(m)
            base = None if b is None else float(np.mean(b))
            gain.append("–" if a is None or not base else f"{100 * (np.mean(a) / base - 1):+.1f}%")
        rows.append([f"{other} vs {baseline}"] + gain)
    lines = ["### Results with intervals", "",
             f"{_num_users(results)} users; [lo, hi] = 95% bootstrap interval over users "
             f"({num_samples} resamples).", ""]
    lines += _table(["model"] + metrics, rows)
    for other in candidates:
        lines += ["", f"### Paired test: {other} - {baseline} (same users)", ""]
        tests = paired_comparison(results, other, baseline, num_samples=2 * num_samples,
                                  seed=seed)
        lines += _table(["metric", "mean diff", "95% CI", "p (sign-flip)"],
                        [[m, f"{t['mean_diff']:+.4f}", f"[{t['ci_lo']:+.4f}, {t['ci_hi']:+.4f}]",
                          f"{t['p_value']:.4f}"] for m, t in tests.items()])
    if include_hard and "greedy_acc" in results.get(baseline, {}):
        hard = hard_examples(results, baseline)
        count = int(next(iter(hard.values()))["count"])
        cols = ["greedy_acc"] + [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks]
        lines += ["", f"### Hard examples, old definition ({count} users where {baseline}'s greedy "
                  "full-SID decode is wrong; selected by that run's own errors)", ""]
        lines += _table(["model"] + cols, [[name] + [_fmt(row.get(c)) for c in cols]
                                           for name, row in hard.items()])
    slices = breakdowns(results, target_items=target_items, item_counts=item_counts,
                        history_lengths=history_lengths)
    metric = f"recall@{max(ks)}"
    titles = {"popularity": "target popularity (training interaction mass thirds)",
              "history": "history length (items)"}
    for kind, per_model in slices.items():
        buckets = list(next(iter(per_model.values())))
        lines += ["", f"### {metric.capitalize()} by {titles[kind]}", ""]
        counts = next(iter(per_model.values()))
        lines += _table(["model"] + [f"{b} (n={int(counts[b]['count'])})" for b in buckets],
                        [[name] + [_fmt(rows[b].get(metric)) for b in buckets]
                         for name, rows in per_model.items()])
    return "\n".join(lines) + "\n"

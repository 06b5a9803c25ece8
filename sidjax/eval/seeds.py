"""Several training seeds of the same models, evaluated on the same users: mean and spread of
every metric, and relative gains with 95% intervals over seeds and users.

Inputs are per-user arrays (:func:`sidjax.eval.report.per_user_values`), one ``{model: PerUser}``
dict per seed, every model evaluated on the same users in the same order. Two subsets of users:

* ``hard/``: the users whose baseline greedy full-SID decode of that seed is wrong. It is selected
  by the reference's own errors (which favours any candidate: regression to the mean) and, at
  real-data accuracies, holds nearly every user; kept for continuity, labelled for what it is.
* ``deep/`` (:func:`deep_masks`): the users for whom a *held-aside* seed of the reference decodes
  every level above the deepest right and the deepest wrong: the fine distinctions under a known
  prefix that PrefixMem claims to improve. Seed s is judged on the selection of seed s + 1 (mod
  the seed count), so no run's errors select its own test users; it needs two seeds or more
  (one seed's own selection is degenerate: the reference scores 0 there by construction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sidjax.eval.report import PerUser, hard_examples

HARD = "hard/"  # prefix of metrics on the users whose reference greedy decode is wrong
DEEP = "deep/"  # prefix of metrics on the deep-level subset (:func:`deep_masks`)


def deep_mask(selector: PerUser, deepest: int) -> np.ndarray | None:
    """Bool ``[U]``: the selector's greedy decode has levels ``1..deepest-1`` right and level
    ``deepest`` wrong (None when it has no ``greedy_L<l>`` values)."""
    keys = [f"greedy_L{level}" for level in range(1, deepest + 1)]
    if any(k not in selector for k in keys):
        return None
    prefix_right = np.all([np.asarray(selector[k]) > 0.5 for k in keys[:-1]], axis=0) \
        if deepest > 1 else np.ones(len(selector[keys[0]]), bool)
    return prefix_right & (np.asarray(selector[keys[-1]]) < 0.5)


def deep_masks(per_user_by_seed: Sequence[Mapping[str, PerUser]], baseline: str,
               deepest: int) -> list[np.ndarray] | None:
    """The deep-level subset of each seed, selected by a held-aside seed of ``baseline``: seed
    ``i`` gets :func:`deep_mask` of seed ``(i + 1) % S``'s baseline. None with one seed: a run's
    own selection would make its deepest-level accuracy 0 by construction (greedy decoding is
    unconstrained, so a right prefix with a wrong deepest code is a wrong argmax there), and
    without ``greedy_L<l>`` values."""
    n = len(per_user_by_seed)
    if n < 2:
        return None
    masks = [deep_mask(per_user_by_seed[(i + 1) % n][baseline], deepest) for i in range(n)]
    return None if any(m is None for m in masks) else masks


def seed_metrics(per_user: Mapping[str, PerUser], baseline: str | None = "baseline",
                 deep: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Scalar metrics of one seed: ``{model: {metric: mean over users}}``, plus ``hard/<metric>``
    means on the users where ``baseline``'s greedy decode is wrong (and ``hard/count``) when the
    baseline has ``greedy_acc``, and ``deep/<metric>`` (and ``deep/count``) on the users of the
    bool mask ``deep`` (:func:`deep_masks`)."""
    out = {name: {m: float(np.mean(v)) for m, v in values.items()}
           for name, values in per_user.items()}
    if baseline is not None and "greedy_acc" in per_user.get(baseline, {}):
        for name, row in hard_examples(per_user, baseline).items():
            out[name].update({HARD + m: float(v) for m, v in row.items()})
    if deep is not None:
        for name, values in per_user.items():
            out[name][DEEP + "count"] = float(np.sum(deep))
            out[name].update({DEEP + m: float(np.mean(np.asarray(v)[deep])) if deep.any()
                              else float("nan") for m, v in values.items()})
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "min", "max", "n"}`` of per-seed values (``std`` with ``ddof=1``; NaN for
    one seed). NaN values (a metric undefined in a seed) are left out."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"),
                "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def summarize_seeds(per_seed: Sequence[Mapping[str, Mapping[str, float]]]
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {metric: spread(...)}}`` over seeds, from one :func:`seed_metrics` dict a seed."""
    if not per_seed:
        raise ValueError("no seeds to summarize")
    models = list(per_seed[0])
    return {name: {m: spread([s[name].get(m, np.nan) for s in per_seed])
                   for m in per_seed[0][name]} for name in models}


def relative_gain(candidate, baseline, weights=None, *, num_samples: int = 1000,
                  alpha: float = 0.05, seed: int = 0) -> dict[str, float | list[float]]:
    """Relative gain ``sum(w * c) / sum(w * b) - 1`` of paired per-seed, per-user values, with a
    percentile bootstrap interval over seeds and users.

    With unit weights the gain is that of the seed-averaged per-user means; a 0/1 ``weights`` mask
    restricts it to a subset (e.g. each seed's hard examples). Each resample draws seeds with
    replacement (the same seeds for both models: seed ``s`` of the candidate is paired with seed
    ``s`` of the baseline) and, independently, users with replacement. With one seed this is the
    bootstrap over users.

    Args:
      candidate, baseline: float ``[S, U]`` (or ``[U]`` for one seed).
      weights: float ``[S, U]`` or None (all ones).
      num_samples: bootstrap resamples.
      alpha: one minus the coverage.
      seed: seed of the resampling (deterministic given it).

    Returns:
      ``{"gain", "lo", "hi", "per_seed": [gain of each seed]}`` (NaN where the baseline sum is 0).
    """
    c = np.atleast_2d(np.asarray(candidate, np.float64))
    b = np.atleast_2d(np.asarray(baseline, np.float64))
    w = np.ones_like(c) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
    if not c.shape == b.shape == w.shape:
        raise ValueError(f"candidate, baseline and weights must have the same [seeds, users] "
                         f"shape, got {c.shape}, {b.shape}, {w.shape}")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    wc, wb = w * c, w * b
    num_seeds, num_users = c.shape

    def ratio(num, den):
        num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0) - 1.0, np.nan)

    rng = np.random.default_rng(seed)
    samples = []
    chunk = max(1, 4_000_000 // num_users)
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        seed_counts = rng.multinomial(num_seeds, np.full(num_seeds, 1 / num_seeds), size=n)
        user_counts = rng.multinomial(num_users, np.full(num_users, 1 / num_users), size=n)
        num = np.einsum("NS,SU,NU->N", seed_counts, wc, user_counts)
        den = np.einsum("NS,SU,NU->N", seed_counts, wb, user_counts)
        samples.append(ratio(num, den))
    samples = np.concatenate(samples)
    finite = samples[np.isfinite(samples)]
    lo, hi = (np.quantile(finite, [alpha / 2, 1 - alpha / 2]) if finite.size
              else (np.nan, np.nan))
    return {"gain": float(ratio(wc.sum(), wb.sum())), "lo": float(lo), "hi": float(hi),
            "per_seed": [float(g) for g in ratio(wc.sum(axis=1), wb.sum(axis=1))]}


def gains_over_seeds(per_user_by_seed: Sequence[Mapping[str, PerUser]], candidate: str,
                     baseline: str, metrics: Sequence[str], *, num_samples: int = 1000,
                     seed: int = 0, deep: Sequence[np.ndarray] | None = None) -> dict[str, dict]:
    """:func:`relative_gain` of ``candidate`` over ``baseline`` for each metric.

    A metric ``hard/<m>`` is ``<m>`` on each seed's hard examples (users whose baseline greedy
    full-SID decode is wrong in that seed); ``deep/<m>`` is ``<m>`` on each seed's mask of
    ``deep`` (:func:`deep_masks`). Metrics a model lacks are skipped.
    """
    out = {}
    for metric in metrics:
        name = metric.removeprefix(HARD).removeprefix(DEEP)
        if any(name not in s[candidate] or name not in s[baseline] for s in per_user_by_seed):
            continue
        weights = None
        if metric.startswith(DEEP):
            if deep is None:
                continue
            weights = np.stack(deep)
        elif metric.startswith(HARD):
            if any("greedy_acc" not in s[baseline] for s in per_user_by_seed):
                continue
            weights = np.stack([s[baseline]["greedy_acc"] < 0.5 for s in per_user_by_seed])
        out[metric] = relative_gain(np.stack([s[candidate][name] for s in per_user_by_seed]),
                                    np.stack([s[baseline][name] for s in per_user_by_seed]),
                                    weights, num_samples=num_samples, seed=seed)
    return out


def _cell(s: Mapping[str, float], count: bool = False) -> str:
    if not s["n"]:
        return "–"
    if count:
        return f"{s['mean']:.1f} ({s['min']:.0f}..{s['max']:.0f})"
    if s["n"] == 1:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['std']:.4f} ({s['min']:.4f}..{s['max']:.4f})"


def _pct(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{100 * v:+.1f}%"


def seeds_markdown(summary: Mapping[str, Mapping[str, Mapping[str, float]]],
                   per_seed: Mapping[int, Mapping[str, Mapping[str, float]]],
                   gains: Mapping[str, Mapping[str, Mapping]], metrics: Sequence[str],
                   baseline: str, num_samples: int) -> str:
    """Markdown: with several seeds, mean ± std (min..max) per metric and model and the per-seed
    rows; then the relative gains over ``baseline`` with their 95% intervals (``gains``:
    ``{model: {metric: relative_gain(...)}}``)."""
    seeds = list(per_seed)
    models = list(summary)
    metrics = [m for m in metrics if any(m in summary[name] for name in models)]
    hard_note = (f"`hard/` = on the users whose {baseline} greedy full-SID decode is wrong (in "
                 "that seed; selected by the reference's own errors). `deep/` = on the users for "
                 f"whom a held-aside seed (the next one) of {baseline} decodes the levels above "
                 "the deepest right and the deepest wrong (two seeds or more).")
    lines = []
    if len(seeds) > 1:
        lines += [f"## Over {len(seeds)} seeds (train.seed = {', '.join(map(str, seeds))})", "",
                  f"Mean ± std (min..max) over seeds of each metric; {hard_note}", "",
                  "| metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        for m in metrics:
            lines.append(f"| {m} | " + " | ".join(
                _cell(summary[name][m], m in (HARD + "count", DEEP + "count"))
                if m in summary[name] else "–"
                for name in models) + " |")
        lines += ["", "### Per-seed results", "",
                  "| model | seed | " + " | ".join(metrics) + " |",
                  "|---" * (len(metrics) + 2) + "|"]
        for name in models:
            for s in seeds:
                row = per_seed[s][name]
                lines.append(f"| {name} | {s} | " + " | ".join(
                    "–" if m not in row or not np.isfinite(row[m]) else
                    (f"{row[m]:.0f}" if m in (HARD + "count", DEEP + "count")
                     else f"{row[m]:.4f}")
                    for m in metrics) + " |")
        lines.append("")
    method = (f"95% percentile bootstrap over seeds and users ({num_samples} resamples; seeds "
              "paired across models; gain of the seed-averaged means)" if len(seeds) > 1 else
              f"95% percentile bootstrap over users ({num_samples} resamples)")
    for name, per_metric in gains.items():
        if not per_metric:
            continue
        lines += [f"### Relative gain of {name} over {baseline}", "",
                  f"{method}. {hard_note}", "",
                  "| metric | gain | 95% interval | per seed |", "|---|---|---|---|"]
        for m, g in per_metric.items():
            lines.append(f"| {m} | {_pct(g['gain'])} | [{_pct(g['lo'])}, {_pct(g['hi'])}] | "
                         + ", ".join(_pct(v) for v in g["per_seed"]) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def mean_results(per_seed: Sequence[Mapping]) -> dict:
    """One model's evaluation dicts of several seeds averaged: float fields and lists (e.g.
    ``level_accuracy``) by mean, other fields from the first seed; with several seeds ``std``
    holds the spread (``ddof=1``) of Recall/NDCG and ``acc_L<l>``."""
    first = per_seed[0]
    out = {}
    for key, value in first.items():
        if isinstance(value, float):
            out[key] = float(np.mean([r[key] for r in per_seed]))
        elif isinstance(value, list):
            out[key] = np.mean([r[key] for r in per_seed], axis=0).tolist()
        else:
            out[key] = value
    if len(per_seed) > 1:
        std = {k: float(np.std([r[k] for r in per_seed], ddof=1)) for k, v in first.items()
               if isinstance(v, float) and k.startswith(("recall@", "ndcg@"))}
        if "level_accuracy" in first:
            levels = np.std([r["level_accuracy"] for r in per_seed], axis=0, ddof=1)
            std.update({f"acc_L{i + 1}": float(v) for i, v in enumerate(levels)})
        out.update(std=std, seeds=len(per_seed))
    return out


def mean_per_user(per_seed: Sequence[PerUser]) -> dict[str, np.ndarray]:
    """Per-user values averaged over seeds (metrics every seed has)."""
    keys = [k for k in per_seed[0] if all(k in s for s in per_seed)]
    return {k: np.mean([np.asarray(s[k], np.float64) for s in per_seed], axis=0) for k in keys}

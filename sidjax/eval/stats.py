"""Per-user ranking metrics, bootstrap confidence intervals, paired tests and slice breakdowns.

Everything here is pure NumPy and works on the output of an evaluation pass:

* ``ranks``: int array ``[U]``, the 0-based rank of each test user's target item in the model's
  recommendation list, or ``-1`` when the target is not in the list (a miss at every cutoff).

With a single relevant item per user, Recall@k is the hit rate (``0 <= rank < k``) and NDCG@k is
``1 / log2(rank + 2)`` for a hit and ``0`` otherwise (the ideal DCG is 1).

Randomised procedures (:func:`bootstrap_ci`, :func:`paired_test`) draw from
``numpy.random.default_rng(seed)`` in fixed-size chunks, so they are deterministic for a given seed
and use bounded memory whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

HEAD, TORSO, TAIL = "head", "torso", "tail"
POPULARITY_ORDER = (HEAD, TORSO, TAIL)

# Resampling works on [chunk, U] index/sign matrices; this bounds chunk * U.
_MAX_CHUNK_ELEMENTS = 1 << 22


def _as_ranks(ranks) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 1:
        raise ValueError(f"ranks must be 1-D [U], got shape {r.shape}")
    if r.size and not np.issubdtype(r.dtype, np.integer):
        raise TypeError(f"ranks must be integers, got dtype {r.dtype}")
    if r.size and r.min() < -1:
        raise ValueError("ranks must be >= 0, or -1 for a target that is not in the list")
    return r.astype(np.int64, copy=False)


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def recall_at_k(ranks, k: int) -> np.ndarray:
    """Per-user Recall@k for a single target item: ``1.0`` if ``0 <= rank < k`` else ``0.0``.

    Args:
      ranks: int ``[U]``, 0-based rank of the target in the recommendation list, ``-1`` if absent.
      k: cutoff, ``>= 1``.

    Returns:
      float64 ``[U]`` of zeros and ones.
    """
    r = _as_ranks(ranks)
    k = _check_k(k)
    return ((r >= 0) & (r < k)).astype(np.float64)


def ndcg_at_k(ranks, k: int) -> np.ndarray:
    """Per-user NDCG@k for a single target item: ``1 / log2(rank + 2)`` on a hit, else ``0``.

    Args:
      ranks: int ``[U]``, 0-based rank of the target in the recommendation list, ``-1`` if absent.
      k: cutoff, ``>= 1``.

    Returns:
      float64 ``[U]`` in ``[0, 1]``; rank 0 scores 1, rank 1 scores ``1/log2(3)``, and so on.
    """
    r = _as_ranks(ranks)
    k = _check_k(k)
    hit = (r >= 0) & (r < k)
    return np.where(hit, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)


def per_user_metrics(ranks, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-user ``recall@k`` and ``ndcg@k`` arrays for every ``k`` in ``ks``.

    The result feeds :func:`bootstrap_ci`, :func:`paired_test` and :func:`breakdown`.

    Returns:
      ``{"recall@1": [U], "ndcg@1": [U], "recall@5": [U], ...}`` in the order of ``ks``.
    """
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    return out


def summarize(ranks, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """Mean Recall@k and NDCG@k over users, keyed ``"recall@5"``, ``"ndcg@5"``, ...

    An empty ``ranks`` gives NaN means.
    """
    out = {}
    for name, values in per_user_metrics(ranks, ks).items():
        out[name] = float(values.mean()) if values.size else float("nan")
    return out


def _as_values(values, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D [U], got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    return v


def _chunks(num_samples: int, num_users: int):
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(num_users, 1))
    for start in range(0, num_samples, chunk):
        yield min(chunk, num_samples - start)


def bootstrap_means(per_user_values, *, num_samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``num_samples`` bootstrap resamples of users (drawn with replacement).

    Args:
      per_user_values: float ``[U]``, one value per user (e.g. ``recall_at_k(ranks, 10)``).
      num_samples: number of bootstrap resamples.
      seed: seed of ``numpy.random.default_rng``; the result is deterministic given it.

    Returns:
      float64 ``[num_samples]``.
    """
    v = _as_values(per_user_values, "per_user_values")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    rng = np.random.default_rng(seed)
    n = v.size
    parts = [v[rng.integers(0, n, size=(c, n))].mean(axis=1) for c in _chunks(num_samples, n)]
    return np.concatenate(parts)


def bootstrap_ci(
    per_user_values, *, num_samples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of the mean over users.

    Users are resampled with replacement ``num_samples`` times; the interval is the
    ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled means.

    Args:
      per_user_values: float ``[U]``, one value per user.
      num_samples: number of bootstrap resamples.
      alpha: one minus the coverage, e.g. ``0.05`` for a 95% interval.
      seed: seed of the resampling; the result is deterministic given it.

    Returns:
      ``(mean, lo, hi)``: the sample mean and the interval bounds.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = _as_values(per_user_values, "per_user_values")
    means = bootstrap_means(v, num_samples=num_samples, seed=seed)
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(v.mean()), float(lo), float(hi)


def paired_test(
    values_a,
    values_b,
    *,
    num_samples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Compare two models evaluated on the same users, user by user.

    Works on the per-user differences ``d = values_a - values_b``:

    * ``ci_lo``/``ci_hi``: percentile bootstrap interval of ``mean(d)`` (users resampled).
    * ``p_value``: two-sided **sign-flip permutation test** of "no difference" (each ``d_i`` is
      symmetric about 0 under the null): the signs of ``d`` are flipped at random
      ``num_samples`` times and ``p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (1 + num_samples)``.
      Identical models (``d == 0``) give ``p = 1``; the smallest attainable p is
      ``1 / (1 + num_samples)``.

    Args:
      values_a: float ``[U]``, per-user metric of model A.
      values_b: float ``[U]``, per-user metric of model B, same users in the same order.
      num_samples: number of bootstrap resamples and of random sign flips.
      alpha: one minus the coverage of the interval.
      seed: seed of both procedures; the result is deterministic given it.

    Returns:
      ``{"mean_a", "mean_b", "mean_diff", "ci_lo", "ci_hi", "p_value", "num_users"}``.
    """
    a = _as_values(values_a, "values_a")
    b = _as_values(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"values_a and values_b must match, got {a.shape} and {b.shape}")
    d = a - b
    _, lo, hi = bootstrap_ci(d, num_samples=num_samples, alpha=alpha, seed=seed)
    observed = abs(d.mean())
    # Tolerance so that flips reproducing |mean(d)| up to rounding count as "at least as extreme".
    tol = 1e-12 * max(1.0, float(np.abs(d).mean()))
    rng = np.random.default_rng([seed, 1])
    n = d.size
    extreme = 0
    for c in _chunks(num_samples, n):
        signs = rng.integers(0, 2, size=(c, n), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(signs @ d) / n >= observed - tol))
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(d.mean()),
        "ci_lo": lo,
        "ci_hi": hi,
        "p_value": (1.0 + extreme) / (1.0 + num_samples),
        "num_users": int(n),
    }


def popularity_buckets(
    target_items, item_counts, *, fractions: tuple[float, float] = (1 / 3, 2 / 3)
) -> np.ndarray:
    """Label each user's target item ``"head"``, ``"torso"`` or ``"tail"`` by training popularity.

    Buckets split the **training interaction mass**, not the number of items: items are sorted by
    training count (most popular first, ties by item index) and an item goes to the bucket in
    which its share of the mass *starts*, i.e. by the fraction of interactions held by strictly
    more-popular items:

    * head: that fraction is ``< fractions[0]`` (the few items making up the top third of
      interactions, always including the most popular item),
    * torso: it is in ``[fractions[0], fractions[1])``,
    * tail: it is ``>= fractions[1]``; items never seen in training are always tail.

    Args:
      target_items: int ``[U]``, 0-based item index of each user's target.
      item_counts: int or float ``[num_items]``, training interaction count per item.
      fractions: the two cumulative-mass cut points, ``0 < f0 < f1 < 1``.

    Returns:
      ``np.ndarray`` of str, shape ``[U]``.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    targets = np.asarray(target_items)
    if counts.ndim != 1 or targets.ndim != 1:
        raise ValueError("target_items and item_counts must be 1-D")
    if np.any(counts < 0):
        raise ValueError("item_counts must be non-negative")
    f0, f1 = fractions
    if not 0.0 < f0 < f1 < 1.0:
        raise ValueError(f"fractions must satisfy 0 < f0 < f1 < 1, got {fractions}")
    if targets.size and (targets.min() < 0 or targets.max() >= counts.size):
        raise ValueError(f"target_items must be in [0, {counts.size})")
    total = counts.sum()
    if total <= 0:
        raise ValueError("item_counts has no interactions")
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    mass_before = (np.cumsum(sorted_counts) - sorted_counts) / total
    bucket_sorted = np.where(mass_before < f0, 0, np.where(mass_before < f1, 1, 2))
    bucket_sorted[sorted_counts == 0] = 2
    bucket = np.empty_like(bucket_sorted)
    bucket[order] = bucket_sorted
    return np.asarray(POPULARITY_ORDER)[bucket[targets]]


def length_bucket_names(edges: Sequence[int] = (5, 10, 20)) -> list[str]:
    """Label names produced by :func:`length_buckets`, shortest first.

    ``edges=(5, 10, 20)`` gives ``["<5", "5-9", "10-19", ">=20"]``.
    """
    e = [int(x) for x in edges]
    if not e or any(b <= a for a, b in zip(e, e[1:])) or e[0] < 1:
        raise ValueError(f"edges must be strictly increasing positive integers, got {edges}")
    names = [f"<{e[0]}"]
    names += [f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in zip(e, e[1:])]
    names.append(f">={e[-1]}")
    return names


def length_buckets(history_lengths, edges: Sequence[int] = (5, 10, 20)) -> np.ndarray:
    """Label users by history length: ``[0, e0)``, ``[e0, e1)``, ..., ``[e_last, inf)``.

    Args:
      history_lengths: int ``[U]``, number of items in each user's input history.
      edges: strictly increasing integer bucket boundaries.

    Returns:
      ``np.ndarray`` of str ``[U]`` with names from :func:`length_bucket_names`, e.g. ``"5-9"``.
    """
    names = np.asarray(length_bucket_names(edges))
    lengths = np.asarray(history_lengths)
    if lengths.ndim != 1:
        raise ValueError("history_lengths must be 1-D")
    idx = np.searchsorted(np.asarray(edges), lengths, side="right")
    return names[idx]


def breakdown(
    per_user_values: Mapping[str, np.ndarray],
    labels,
    *,
    order: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean of every per-user metric within each label group, plus the group size.

    Args:
      per_user_values: ``{metric name: float [U]}``, e.g. from :func:`per_user_metrics`.
      labels: ``[U]`` group label per user, e.g. from :func:`popularity_buckets`.
      order: labels to report, in this order (absent ones get ``count`` 0 and NaN means);
        default: the distinct labels in sorted order.

    Returns:
      ``{label: {"count": n, metric: mean, ...}}``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("labels must be 1-D")
    values = {name: np.asarray(v, dtype=np.float64) for name, v in per_user_values.items()}
    for name, v in values.items():
        if v.shape != labels.shape:
            raise ValueError(f"{name} has shape {v.shape}, labels have {labels.shape}")
    groups = list(order) if order is not None else [str(x) for x in np.unique(labels)]
    out: dict[str, dict[str, float]] = {}
    for group in groups:
        mask = labels == group
        n = int(mask.sum())
        row: dict[str, float] = {"count": n}
        for name, v in values.items():
            row[name] = float(v[mask].mean()) if n else float("nan")
        out[group] = row
    return out


def hard_example_mask(baseline_greedy_correct) -> np.ndarray:
    """The paper's "hard examples where greedy decoding fails".

    Args:
      baseline_greedy_correct: bool ``[U]``, whether the baseline's greedy decode of the full
        Semantic ID (every code level) equals the target's.

    Returns:
      bool ``[U]``, ``True`` where the baseline's greedy full-SID decode is wrong.
    """
    correct = np.asarray(baseline_greedy_correct)
    if correct.dtype != np.bool_:
        raise TypeError(f"baseline_greedy_correct must be bool, got dtype {correct.dtype}")
    return ~correct

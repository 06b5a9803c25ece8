"""From recommendation lists to ranks, and the popularity baseline."""

from __future__ import annotations

import numpy as np


def ranks_of_targets(recommended: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target in its list ``[U, K]``, or -1 when absent."""
    recommended = np.asarray(recommended)
    hits = recommended == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def popularity_ranking(item_counts: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most interacted-with training items, most popular first (ties by item index)."""
    order = np.lexsort((np.arange(len(item_counts)), -np.asarray(item_counts)))
    return order[:k]


def popularity_level_accuracy(sid_codes: np.ndarray, item_counts: np.ndarray,
                              targets: np.ndarray) -> list[float]:
    """Teacher-forced accuracy per SID level of the popularity prior.

    At level l the prediction is the code with the most training interactions among items that share
    the target's first l - 1 codes: what a model that knows only popularity would predict.
    """
    codes = np.asarray(sid_codes)
    target_codes = codes[targets]
    accuracies = []
    for level in range(codes.shape[1]):
        mass: dict[tuple, dict[int, int]] = {}
        for item, count in enumerate(item_counts):
            per_code = mass.setdefault(tuple(codes[item, :level]), {})
            per_code[codes[item, level]] = per_code.get(codes[item, level], 0) + int(count)
        best = {prefix: max(per_code, key=lambda c, m=per_code: (m[c], -c))
                for prefix, per_code in mass.items()}
        pred = np.array([best[tuple(t[:level])] for t in target_codes])
        accuracies.append(float(np.mean(pred == target_codes[:, level])))
    return accuracies

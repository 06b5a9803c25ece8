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


def full_sid_correct(predicted_codes: np.ndarray, target_codes: np.ndarray) -> np.ndarray:
    """Bool ``[U]``: whether a decoded SID ``[U, L]`` equals the target's at every level.

    With the codes of :func:`sidjax.decode.beam.greedy` this is the per-user greedy full-SID
    accuracy; its mean is the model's greedy full-SID accuracy, and its negation for the baseline is
    the hard-example mask (:func:`sidjax.eval.stats.hard_example_mask`).
    """
    pred, target = np.asarray(predicted_codes), np.asarray(target_codes)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"predicted_codes {pred.shape} and target_codes {target.shape} must both "
                         "be [U, L]")
    return np.all(pred == target, axis=1)


def history_lengths(histories: list[np.ndarray], max_history: int | None = None) -> np.ndarray:
    """Int ``[U]``: the number of history items each user's model input holds (capped at
    ``max_history``, the truncation the encoder applies)."""
    lengths = np.array([len(h) for h in histories], np.int64)
    return lengths if max_history is None else np.minimum(lengths, max_history)

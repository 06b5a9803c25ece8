"""PNG plots of a comparison (matplotlib, Agg backend): training/validation curves, per-level
accuracy bars and hard-example accuracy.

Every plot takes the models (and, with several seeds, one entry per seed) and writes one PNG
atomically (a temporary file, then a rename). Curves come from each model's ``metrics.jsonl``:
every ``valid/*`` key the training loop logged, or, when it logged none, the training ``loss`` and
``acc_l*`` keys.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

TRAIN_CURVE_KEYS = ("loss",)  # plus every acc_l<level> key
DPI = 90


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (one JSON object a line; blank lines skipped)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON object ({err.msg}); delete the line "
                             "or rerun the training") from err
    return records


def curve_keys(records: Sequence[Mapping]) -> tuple[list[str], str]:
    """The metric keys to plot and their kind: every ``valid/*`` key (``"validation"``), else
    ``loss`` and the ``acc_l*`` keys (``"training"``)."""
    keys = sorted({k for r in records for k in r})
    valid = [k for k in keys if k.startswith("valid/")]
    if valid:
        return valid, "validation"
    return [k for k in keys if k in TRAIN_CURVE_KEYS or k.startswith("acc_l")], "training"


def curve(records: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` over the records that hold it and a ``step``, by step (a
    resumed run's repeated steps keep the last value)."""
    points = {int(r["step"]): float(r[key]) for r in records if key in r and "step" in r}
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    plt = _pyplot()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path


FIXED_COLORS = {"popularity": "C7", "baseline": "C0", "prefixmem": "C1"}


def _colors(names: Sequence[str]) -> dict[str, str]:
    """The same colour for a model in every plot: fixed for the built-in models, then the rest
    of the palette in order."""
    free = iter(f"C{i}" for i in range(10) if f"C{i}" not in FIXED_COLORS.values())
    return {name: FIXED_COLORS.get(name) or next(free, "k") for name in names}


def plot_curves(runs: Mapping[str, Sequence[Sequence[Mapping]]], path) -> tuple[Path, str]:
    """One panel per metric key, one line per model and seed (seeds of a model share a colour).

    Args:
      runs: ``{model: [records of seed 0, records of seed 1, ...]}`` (from :func:`read_metrics`).
      path: the PNG to write.

    Returns:
      ``(path, kind)``: kind is ``"validation"`` when ``valid/*`` keys were plotted, else
      ``"training"``.
    """
    all_records = [r for seeds in runs.values() for records in seeds for r in records]
    keys, kind = curve_keys(all_records)
    if not keys:
        raise ValueError("no metric to plot: the metrics.jsonl files hold neither valid/* nor "
                         "loss/acc_l* keys; train the models first")
    plt = _pyplot()
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colors = _colors(list(runs))
    for ax, key in zip(axes.flat, keys):
        for name, seeds in runs.items():
            for s, records in enumerate(seeds):
                steps, values = curve(records, key)
                if len(steps):
                    ax.plot(steps, values, color=colors[name], alpha=1.0 if s == 0 else 0.45,
                            marker="." if len(steps) < 20 else None,
                            label=name if s == 0 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{kind} curves" + (" (one line per seed)" if _max_seeds(runs) > 1 else ""))
    fig.tight_layout()
    return _save(fig, path), kind


def _max_seeds(per_model: Mapping[str, Sequence]) -> int:
    return max((len(v) for v in per_model.values()), default=0)


def _grouped_bars(ax, groups: Sequence[str], per_model: Mapping[str, np.ndarray]) -> None:
    """Bars of ``per_model[name]`` (``[seeds, groups]``, NaN = missing): mean height, min..max
    whiskers when there are several seeds."""
    width = 0.8 / max(1, len(per_model))
    x = np.arange(len(groups))
    colors = _colors(list(per_model))
    for i, (name, values) in enumerate(per_model.items()):
        values = np.atleast_2d(np.asarray(values, np.float64))
        present = np.isfinite(values)
        count = present.sum(axis=0)
        mean = np.where(present, values, 0.0).sum(axis=0) / np.maximum(count, 1)
        err = None
        if values.shape[0] > 1:
            lo = np.where(present, values, np.inf).min(axis=0)
            hi = np.where(present, values, -np.inf).max(axis=0)
            # Identical seeds can put the float mean an ulp outside [lo, hi]; matplotlib
            # refuses negative error bars.
            err = np.where(count > 0, np.maximum(np.stack([mean - lo, hi - mean]), 0.0), 0.0)
        ax.bar(x + (i - (len(per_model) - 1) / 2) * width, np.nan_to_num(mean), width,
               yerr=err, capsize=3, color=colors[name], label=name)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def plot_level_accuracy(level_accuracy: Mapping[str, Sequence], path, *,
                        title: str = "teacher-forced accuracy per SID level (test)") -> Path:
    """Grouped bars of per-level accuracy: ``{model: [L] or [seeds, L]}``; several seeds give
    min..max whiskers."""
    per_model = {name: np.atleast_2d(np.asarray(v, np.float64))
                 for name, v in level_accuracy.items()}
    levels = {v.shape[1] for v in per_model.values()}
    if len(levels) != 1:
        raise ValueError(f"models have different numbers of SID levels: "
                         f"{ {k: v.shape[1] for k, v in per_model.items()} }")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * levels.pop(), 3.4))
    _grouped_bars(ax, [f"L{i + 1}" for i in range(next(iter(per_model.values())).shape[1])],
                  per_model)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_hard_examples(hard: Mapping[str, Sequence[Mapping[str, float]]], metrics: Sequence[str],
                       path, *, title: str) -> Path:
    """Grouped bars of each model's mean ``metrics`` on the hard examples.

    ``hard``: ``{model: [row of seed 0, ...]}``, rows as :func:`sidjax.eval.report.hard_examples`
    returns (a missing metric is left out of that model's bars).
    """
    per_model = {name: np.array([[row.get(m, np.nan) for m in metrics] for row in rows])
                 for name, rows in hard.items()}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(metrics), 3.4))
    _grouped_bars(ax, list(metrics), per_model)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)

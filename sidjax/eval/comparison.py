"""Everything ``sidjax compare`` reports once its models are trained and evaluated: seed means and
spreads, gains with intervals, the statistical sections, compute accounting and the PNG plots.

:func:`summarize_comparison` is pure bookkeeping over evaluation results (no model is run), so it
can be tested on hand-made arrays; :mod:`sidjax.run` trains and evaluates, then calls it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sidjax.eval import plots
from sidjax.eval import seeds as seeds_lib
from sidjax.eval.compute import TrainingCompute, compute_markdown, matched_statement
from sidjax.eval.report import PerUser, comparison_report, hard_examples

PLOT_FILES = {"curves": "curves.png", "levels": "level_accuracy.png",
              "hard": "hard_examples.png"}


def json_ready(obj):
    """``obj`` with NaN/inf floats as None and tuples as lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def summary_metrics(ks: Sequence[int], num_levels: int, deepest: int) -> list[str]:
    """The metrics of the seed tables, in order."""
    k10 = 10 if 10 in ks else max(ks)
    return ([f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["greedy_acc"]
            + [f"acc_L{i + 1}" for i in range(num_levels)]
            + [f"{prefix}{m}" for prefix in (seeds_lib.DEEP, seeds_lib.HARD)
               for m in ("count", "greedy_acc", f"acc_L{deepest}", f"recall@{k10}")])


def gain_metrics(ks: Sequence[int], deepest: int) -> list[str]:
    """Metrics whose relative gain over the reference gets an interval: deepest-level accuracy,
    Recall@10 (or the largest K), and both on the deep-level subset and the hard examples."""
    k = 10 if 10 in ks else max(ks)
    return [f"acc_L{deepest}", f"recall@{k}"] + [
        f"{prefix}{m}" for prefix in (seeds_lib.DEEP, seeds_lib.HARD)
        for m in (f"acc_L{deepest}", f"recall@{k}")]


def summarize_comparison(per_seed_results: Mapping[int, Mapping[str, dict]],
                         per_seed_users: Mapping[int, Mapping[str, PerUser]],
                         metrics_records: Mapping[str, Sequence[Sequence[Mapping]]],
                         computes: Mapping[str, TrainingCompute], *, reference: str,
                         deepest_level: int, out_dir, ks: Sequence[int] = (5, 10),
                         target_items=None, item_counts=None, history_lengths=None,
                         num_samples: int = 1000, seed: int = 0) -> dict:
    """Aggregates a comparison and writes its plots into ``out_dir``.

    Args:
      per_seed_results: ``{train seed: {model: evaluation dict}}`` (popularity included).
      per_seed_users: ``{train seed: {model: per_user_values(...)}}``, same users everywhere.
      metrics_records: ``{model: [metrics.jsonl records of each seed]}`` (trained models only).
      computes: ``{model: TrainingCompute}`` of the trained models.
      reference: the model gains and hard examples are measured against (e.g. ``baseline``).
      deepest_level: the SID level (1-based) whose accuracy is "deepest-level accuracy".
      out_dir: folder of ``report.md``; the PNGs of :data:`PLOT_FILES` are written there.

    Returns:
      ``{"results"`` (seed means per model, ``std`` inside with several seeds), ``"analysis"``,
      ``"seeds_markdown"``, ``"compute_markdown"`` (Markdown), ``"matched"`` (bool), ``"plots"``
      (``[(caption, file name)]``) and ``"json"`` (seed summary, gains, compute) ``}``.
    """
    seed_list = list(per_seed_results)
    models = list(per_seed_results[seed_list[0]])
    trained = list(computes)
    # an untrained model (popularity) is the same in every seed: no spread to report
    results = {name: seeds_lib.mean_results(
        [per_seed_results[s][name] for s in (seed_list if name in trained else seed_list[:1])])
        for name in models}
    users = [per_seed_users[s] for s in seed_list]
    mean_users = {name: seeds_lib.mean_per_user([u[name] for u in users]) for name in models}
    analysis = comparison_report(
        mean_users, baseline=reference, candidate=[m for m in trained if m != reference],
        target_items=target_items, item_counts=item_counts, history_lengths=history_lengths,
        ks=ks, num_samples=num_samples, seed=seed, include_hard=len(seed_list) == 1)
    if len(seed_list) > 1:
        analysis = (f"Per-user values are averaged over the {len(seed_list)} seeds.\n\n"
                    + analysis)
    deep = seeds_lib.deep_masks(users, reference, deepest_level)
    per_seed_scalars = {s: seeds_lib.seed_metrics(per_seed_users[s], reference,
                                                  None if deep is None else deep[i])
                        for i, s in enumerate(seed_list)}
    summary = seeds_lib.summarize_seeds(list(per_seed_scalars.values()))
    gains = {name: seeds_lib.gains_over_seeds(users, name, reference,
                                              gain_metrics(ks, deepest_level),
                                              num_samples=num_samples, seed=seed, deep=deep)
             for name in trained if name != reference}
    num_levels = len(results[reference].get("level_accuracy", ()))
    seeds_md = seeds_lib.seeds_markdown(
        summary, per_seed_scalars, gains, summary_metrics(ks, num_levels, deepest_level),
        reference, num_samples)
    matched, _ = matched_statement(computes, reference)
    return {"results": results, "analysis": analysis, "seeds_markdown": seeds_md,
            "compute_markdown": compute_markdown(computes, reference), "matched": matched,
            "plots": write_plots(per_seed_results, per_seed_users, metrics_records,
                                 reference=reference, deepest_level=deepest_level, ks=ks,
                                 out_dir=out_dir),
            "json": {"seeds": seed_list, "seed_summary": summary,
                     "per_seed_metrics": per_seed_scalars, "gains": gains,
                     "compute": {name: c.to_dict() for name, c in computes.items()},
                     "matched": matched}}


def write_plots(per_seed_results, per_seed_users, metrics_records, *, reference: str,
                deepest_level: int, ks: Sequence[int], out_dir) -> list[tuple[str, str]]:
    """Writes the curves, per-level accuracy and hard-example PNGs; returns ``[(caption, file)]``."""
    out_dir = Path(out_dir)
    seed_list = list(per_seed_results)
    models = list(per_seed_results[seed_list[0]])
    _, kind = plots.plot_curves(metrics_records, out_dir / PLOT_FILES["curves"])
    caption = ("Validation curves (valid/* metrics of metrics.jsonl)" if kind == "validation" else
               "Training curves (loss and per-level token accuracy; no valid/* metrics logged)")
    out = [(caption, PLOT_FILES["curves"])]
    level_acc = {name: [per_seed_results[s][name]["level_accuracy"] for s in seed_list]
                 for name in models if "level_accuracy" in per_seed_results[seed_list[0]][name]}
    plots.plot_level_accuracy(level_acc, out_dir / PLOT_FILES["levels"])
    spread = " (bars: seed mean, whiskers: min..max)" if len(seed_list) > 1 else ""
    out.append(("Teacher-forced accuracy per SID level, test targets" + spread,
                PLOT_FILES["levels"]))
    if "greedy_acc" in per_seed_users[seed_list[0]].get(reference, {}):
        rows = {name: [] for name in models}
        counts = []
        for s in seed_list:
            hard = hard_examples(per_seed_users[s], reference)
            counts.append(next(iter(hard.values()))["count"])
            for name in models:
                rows[name].append(hard[name])
        k = 10 if 10 in ks else max(ks)
        title = (f"users where {reference}'s greedy full-SID decode is wrong "
                 f"(n={np.mean(counts):.0f})")
        plots.plot_hard_examples(rows, ["greedy_acc", f"acc_L{deepest_level}", f"recall@{k}"],
                                 out_dir / PLOT_FILES["hard"], title=title)
        out.append((f"Hard examples: accuracy and Recall@{k} on the {title}" + spread,
                    PLOT_FILES["hard"]))
    return out

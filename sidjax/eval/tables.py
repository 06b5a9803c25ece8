"""The Markdown of a run: the results table and ``report.md``."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from sidjax.config import Config
from sidjax.files import write_text


def results_table(results: dict[str, dict], ks=(5, 10)) -> str:
    """A Markdown table of Recall/NDCG and per-level accuracy, one row per model; a result with a
    ``std`` dict (seed means, see :func:`run_compare`) shows ``mean ± std``."""
    levels = len(next(iter(results.values()))["level_accuracy"])
    head = ([f"Recall@{k}" for k in ks] + [f"NDCG@{k}" for k in ks]
            + [f"acc L{i + 1}" for i in range(levels)])
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, r in results.items():
        keys = ([f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks]
                + [f"acc_L{i + 1}" for i in range(levels)])
        values = [r[k] for k in keys[:2 * len(ks)]] + list(r["level_accuracy"])
        std = r.get("std", {})
        lines.append(f"| {name} | " + " | ".join(
            f"{v:.4f}" + (f" ± {std[k]:.4f}" if k in std else "") for k, v in zip(keys, values))
            + " |")
    return "\n".join(lines)


def jax_backend() -> str:
    """A short description of the devices in use, for reports."""
    devices = jax.devices()
    return (f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
            f"{os.cpu_count()} host CPU cores")


_SID_METHODS = {"rqkmeans": "residual k-means", "rqvae": "RQ-VAE"}


def write_report(workdir: Path, cfg: Config, results: dict[str, dict], extra: dict) -> Path:
    """Writes ``report.md`` atomically and returns its path: the results table (seed means ±
    std with several seeds), setup, timings (``extra["models"][name]``: ``params``, ``steps``,
    ``train_s``, ``users_per_s``), and the optional ``extra`` entries ``seeds`` (the
    train seeds), ``date``, ``compute_markdown``, ``plots`` (``[(caption, PNG file name)]``,
    linked relative to ``workdir``), ``seeds_markdown`` and ``analysis`` (Markdown)."""
    levels = len(next(iter(results.values()))["level_accuracy"])
    seeds = extra.get("seeds", [cfg.train.seed])
    lines = [
        f"# sidjax run `{cfg.name}`", "",
        f"Data: {extra['data']}. SIDs: {levels} levels {extra['codes_per_level']} "
        f"({_SID_METHODS.get(cfg.sid.method, cfg.sid.method)}"
        f"{' + collision level' if levels > cfg.sid.levels else ', collision-free'}).",
        f"Protocol: leave-one-out, {cfg.eval.split} split, full ranking over all items by "
        f"trie-constrained beam search (beam {cfg.eval.beam_size}); per-level accuracy is "
        "teacher-forced.", "",
        results_table(results, cfg.eval.top_k), "",
        "The popularity row ranks the most interacted-with training items; its per-level "
        "accuracy is the prefix-frequency prior: at level l, the code with the most training "
        "interactions among items that share the target's first l - 1 codes (no history used).",
        "",
    ]
    if len(seeds) > 1:
        lines += [f"Trained models: mean ± std over {len(seeds)} seeds (train.seed = "
                  f"{', '.join(map(str, seeds))}; same SIDs, same users).", ""]
    lines += ["| model | parameters | train s | eval users/s |", "|---|---|---|---|"]
    for name, info in extra["models"].items():
        lines.append(f"| {name} | {info['params']:,} | {info['train_s']:.0f} | "
                     f"{info['users_per_s']:.0f} |")
    steps = {name: info["steps"] for name, info in extra["models"].items()}
    steps_text = (f"{next(iter(steps.values()))}" if len(set(steps.values())) == 1
                  else ", ".join(f"{name} {s:,}" for name, s in steps.items()))
    lines += ["", f"Hardware: {extra['hardware']}. Steps per model: {steps_text}, batch "
              f"{cfg.train.batch_size}." + (f" Finished {extra['date']}." if "date" in extra
                                            else ""), ""]
    if extra.get("compute_markdown"):
        lines += [extra["compute_markdown"]]
    if extra.get("plots"):
        lines += ["## Plots", ""]
        for caption, name in extra["plots"]:
            lines += [f"{caption}:", "", f"![{Path(name).stem}]({name})", ""]
    if extra.get("seeds_markdown"):
        lines += [extra["seeds_markdown"]]
    if extra.get("analysis"):
        lines += ["## Intervals, paired test, hard examples, breakdowns", "", extra["analysis"], ""]
    return write_text(Path(workdir) / "report.md", "\n".join(lines))

"""Comparing models on one task: every model of a list, several seeds, the same SIDs and
users, optionally at matched training compute; a run folder with ``report.md`` and
``results.json``."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from flax import nnx

from sidjax import config as config_lib
from sidjax.config import Config, check_beam
from sidjax.data.pipeline import training_length
from sidjax.eval.comparison import json_ready, summarize_comparison
from sidjax.eval.compute import matched_steps, tokens_per_step, training_compute
from sidjax.eval.evaluate import evaluate_detailed, evaluate_popularity
from sidjax.eval.metrics import history_lengths
from sidjax.eval.plots import read_metrics
from sidjax.eval.tables import jax_backend, write_report
from sidjax.files import write_json
from sidjax.nn.model import count_params
from sidjax.run.model import build_model, prefixmem_pretrain_flops
from sidjax.run.task import Log, Prepared, prepare
from sidjax.run.training import train_model
from sidjax.sid.table import save_sid_table
from sidjax.train.loop import state_report, tied_output_params

DEFAULT_COMPARE_MODELS = {"baseline": ("model.prefixmem.enabled=false",),
                          "prefixmem": ("model.prefixmem.enabled=true",)}


# Models `compare --models` knows by name: the defaults, and the parameter-matched control of
# PrefixMem (the plain model plus an item memory of PrefixMem's size keyed by completed items'
# full SIDs, not by prefixes; sidjax.nn.itemmem).
BUILTIN_COMPARE_MODELS = DEFAULT_COMPARE_MODELS | {
    "itemmem": ("model.prefixmem.enabled=false", "model.item_memory.enabled=true")}


def compute_matched_steps(cfg: Config, prep: Prepared,
                          models: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Training steps per model of ``models`` (``{name: overrides}`` on ``cfg``) that give each the
    training FLOPs of the costliest at ``cfg.train.steps``
    (:func:`sidjax.eval.compute.matched_steps` of :func:`sidjax.train.loop.state_report`'s FLOPs
    per token at the training sequence length). All must be SID models with the same tokens per
    step (batch size x sequence length)."""
    fpt, tokens = {}, set()
    for name, overrides in models.items():
        sub = config_lib.apply_overrides(cfg, list(overrides))
        if sub.model.kind != "sid":
            raise ValueError(f"match_compute needs SID models with the same token layout; model "
                             f"{name!r} has model.kind={sub.model.kind!r}: compare it without "
                             "match_compute (its FLOPs are reported either way)")
        seq_len = training_length(sub.data.max_history, prep.vocab.num_levels, prep.prompt)
        tokens.add((sub.train.batch_size, seq_len))
        model = build_model(sub, prep.vocab)
        fpt[name] = state_report(nnx.split(model)[1], None, seq_len,
                                 tied_output=tied_output_params(model))["flops_per_token"]
    if len(tokens) > 1:
        raise ValueError(f"match_compute needs the same train.batch_size and data.max_history for "
                         f"all models, got (batch, sequence length) {sorted(tokens)}")
    return matched_steps(fpt, cfg.train.steps)


def accumulate_train_time(run_dir: Path, seconds: float) -> float:
    """Adds ``seconds`` to the wall-clock training time recorded in ``run_dir/train_time.json``
    and returns the total, so a run resumed (or found finished) by a later ``compare`` reports
    the time its sessions spent training, not only the last one's (a session killed before it
    returned is not counted)."""
    path = Path(run_dir) / "train_time.json"
    total = float(seconds)
    if path.exists():
        try:
            total += float(json.loads(path.read_text())["train_s"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: expected {{\"train_s\": seconds}} ({e}); delete the file "
                             f"to restart the count") from e
    write_json(path, {"train_s": total})
    return total


def run_compare(cfg: Config, workdir: Path, log: Log = print, progress_factory=None, *,
                models: dict[str, tuple[str, ...]] | None = None, seeds: int = 1,
                pretrain_flops: dict[str, float] | None = None,
                match_compute: bool = False) -> dict:
    """Trains every model of ``models`` with ``seeds`` seeds for the same steps, evaluates them
    and popularity on the same users, and writes a run folder with ``report.md`` (tables,
    intervals, compute, PNG plots) and ``results.json``; returns the seed-mean results per model.

    ``models``: ``{name: ("key=value", ...)}``, config overrides of each model on top of ``cfg``
    (default :data:`DEFAULT_COMPARE_MODELS`: the plain SID baseline and PrefixMem); the first is
    the reference of gains and hard examples. Seed ``i`` trains with ``train.seed = cfg.train.seed
    + i`` in ``workdir/seed{s}/<name>/`` (one seed: ``workdir/<name>/``), all on the same SID table.
    ``pretrain_flops``: ``{name: FLOPs}`` spent pre-training a PrefixMem that model starts from;
    a model with ``train.prefixmem_init`` not listed there takes the FLOPs recorded with its
    checkpoint (none of the built-in models uses one). ``progress_factory(description, total)`` returns a
    callable progress sink (or None). ``match_compute``: train each SID model for
    :func:`compute_matched_steps` steps, so all spend the training FLOPs of the costliest one at
    ``train.steps`` (the plain baseline trains longer than PrefixMem).

    Rerunning in the same ``workdir`` resumes: a model whose folder holds its final checkpoint
    is evaluated again without training, so a comparison can be extended (more seeds; a one-seed
    run's ``workdir/<name>/`` folders become seed 0 once moved to ``workdir/seed{s}/``) or
    finished after an interruption; ``train s`` adds up the sessions that returned (see
    :func:`accumulate_train_time`).
    """
    models = dict(DEFAULT_COMPARE_MODELS if models is None else models)
    if not models or "popularity" in models:
        raise ValueError(f"models must name at least one trained model, and not 'popularity' "
                         f"(always evaluated); got {sorted(models)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    check_beam(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_lib.save_config(cfg, workdir / "config.json")
    prep = prepare(cfg, workdir, log, progress_factory)
    split = cfg.eval.split
    eval_set = prep.split.eval_set(split)
    popularity = evaluate_popularity(prep, split)
    if match_compute:
        steps = compute_matched_steps(cfg, prep, models)
        log("matched compute: train steps " + ", ".join(f"{n} {k}" for n, k in steps.items()))
        models = {name: (*o, f"train.steps={steps[name]}") for name, o in models.items()}
    seed_list = [cfg.train.seed + i for i in range(seeds)]
    per_seed_results, per_seed_users = {}, {}
    records = {name: [] for name in models}
    info, computes = {}, {}
    for s in seed_list:
        per_seed_results[s], per_seed_users[s] = {"popularity": popularity[0]}, \
            {"popularity": popularity[1]}
        for name, overrides in models.items():
            sub_cfg = config_lib.apply_overrides(cfg, list(overrides))
            sub_cfg = dataclasses.replace(sub_cfg, name=f"{cfg.name}-{name}",
                                          train=dataclasses.replace(sub_cfg.train, seed=s))
            sub = workdir / name if seeds == 1 else workdir / f"seed{s}" / name
            sub.mkdir(parents=True, exist_ok=True)
            save_sid_table(prep.sids, sub / "sids.npz")
            sub_prep = dataclasses.replace(prep, cfg=sub_cfg)
            tag = name if seeds == 1 else f"{name} seed {s}"
            t0 = time.perf_counter()
            bar = progress_factory(f"train {tag}", sub_cfg.train.steps) if progress_factory \
                else None
            model = train_model(sub_prep, sub, log=log, progress=bar)
            train_s = accumulate_train_time(sub, time.perf_counter() - t0)
            bar = progress_factory(f"eval {tag}", len(eval_set)) if progress_factory else None
            result, per_seed_users[s][name] = evaluate_detailed(
                model, sub_prep, split, progress=(lambda n, b=bar: b(n, None)) if bar else None)
            write_json(sub / "eval.json", result)
            per_seed_results[s][name] = result
            records[name].append(read_metrics(sub / "metrics.jsonl"))
            entry = info.setdefault(name, {"params": count_params(model), "train_s": [],
                                           "users_per_s": [], "steps": sub_cfg.train.steps})
            entry["train_s"].append(train_s)
            entry["users_per_s"].append(result["users_per_s"])
            if name not in computes:
                computes[name] = training_compute(
                    nnx.split(model)[1], getattr(model, "pm_cfg", None),
                    im_cfg=getattr(model, "im_cfg", None),
                    tokens=tokens_per_step(records[name][-1]),
                    batch_size=sub_cfg.train.batch_size,
                    steps=max(r.get("step", 0) for r in records[name][-1]),  # early stop: fewer
                    pretrain_flops=(pretrain_flops or {}).get(
                        name, prefixmem_pretrain_flops(sub_cfg, sub)),
                    tied_output=tied_output_params(model))
    reference = next(iter(models))
    summary = summarize_comparison(
        per_seed_results, per_seed_users, records, computes, reference=reference,
        deepest_level=min(cfg.sid.levels, len(popularity[0]["level_accuracy"])),
        out_dir=workdir, ks=cfg.eval.top_k, target_items=eval_set.targets,
        item_counts=prep.counts,
        history_lengths=history_lengths(eval_set.histories, cfg.data.max_history),
        seed=cfg.train.seed)
    results = summary["results"]
    extra = {"data": f"{prep.data.name}, {prep.data.num_users} users, {prep.data.num_items} items",
             "codes_per_level": prep.sids.codes_per_level, "hardware": jax_backend(),
             "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "seeds": seed_list,
             "models": {name: {"params": e["params"], "steps": e["steps"],
                               "train_s": float(np.mean(e["train_s"])),
                               "users_per_s": float(np.mean(e["users_per_s"]))}
                        for name, e in info.items()},
             "models_config": {name: list(o) for name, o in models.items()},
             "compute_markdown": summary["compute_markdown"], "plots": summary["plots"],
             "seeds_markdown": summary["seeds_markdown"], "analysis": summary["analysis"]}
    write_json(workdir / "results.json", json_ready(
        {"results": results, "per_seed": per_seed_results, **summary["json"], **extra}))
    write_report(workdir, cfg, results, extra)
    return results

"""The end-to-end job as importable steps: prepare data and SIDs, train, evaluate, compare.

Each step reads and writes a run folder (``workdir``): ``config.json``, ``sids.npz``,
``sid_diagnostics.json``, ``checkpoints/``, ``metrics.jsonl``, ``eval.json`` and, for a comparison,
``report.md``. The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sidjax import config as config_lib
from sidjax.config import Config
from sidjax.data.pipeline import SIDVocab, eval_arrays, train_dataset
from sidjax.data.split import Split, item_counts, leave_one_out
from sidjax.data.synthetic import synthetic_catalog
from sidjax.data.types import InteractionData
from sidjax.decode.beam import greedy, recommend
from sidjax.decode.scoring import score_sids
from sidjax.eval import stats
from sidjax.eval.metrics import (
    full_sid_correct,
    history_lengths,
    popularity_level_accuracy,
    popularity_ranking,
    ranks_of_targets,
)
from sidjax.eval.report import comparison_report, per_user_values
from sidjax.nn.model import SIDRecommender, count_params
from sidjax.sid.table import SIDTable, build_sid_table, load_sid_table, save_sid_table
from sidjax.sid.trie import SIDTrie, build_trie
from sidjax.train import checkpoint
from sidjax.train.loop import train

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything a model needs besides its weights."""

    cfg: Config
    data: InteractionData
    split: Split
    sids: SIDTable
    trie: SIDTrie
    vocab: SIDVocab
    counts: np.ndarray


def load_data(cfg: Config) -> InteractionData:
    """The interactions named by ``cfg.data.source``: the synthetic catalog or a dataset folder."""
    d = cfg.data
    if d.source == "synthetic":
        return synthetic_catalog(
            d.num_items, d.num_users, num_top=d.num_top_categories,
            num_mid_per_top=d.num_mid_per_top, num_fine_per_mid=d.num_fine_per_mid,
            content_dim=d.content_dim, min_len=d.min_seq_len, max_len=d.max_seq_len, seed=d.seed)
    from sidjax.data.sources import load_dataset

    return load_dataset(d.source)


def item_vectors(data: InteractionData, split: Split, log: Log = print) -> np.ndarray:
    """Content vectors for SIDs: given vectors, else MiniLM over item text, else co-occurrence."""
    if data.item_vectors is not None:
        return data.item_vectors
    if data.item_text is not None:
        from sidjax.text.minilm import encode_texts

        log(f"encoding {data.num_items} item texts with MiniLM")
        return encode_texts(data.item_text)
    from sidjax.data.embed import collaborative_item_vectors

    log("no item text: collaborative item vectors from training co-occurrences")
    return collaborative_item_vectors(split.train, data.num_items)


def _write_json(path: Path, obj) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def prepare(cfg: Config, workdir: Path | None = None, log: Log = print) -> Prepared:
    """Loads data, splits it, and builds (or reloads from ``workdir``) the SID table."""
    data = load_data(cfg)
    split = leave_one_out(data.sequences)
    sid_path = None if workdir is None else Path(workdir) / "sids.npz"
    if sid_path is not None:
        sid_path.parent.mkdir(parents=True, exist_ok=True)
    if sid_path is not None and sid_path.exists():
        sids = load_sid_table(sid_path)
        if sids.item_ids != tuple(data.item_ids):
            raise ValueError(f"{sid_path} was built for another catalog; use a new --workdir")
        log(f"reusing SID table {sid_path}")
    else:
        t0 = time.perf_counter()
        sids, diagnostics = build_sid_table(
            item_vectors(data, split, log), data.item_ids, levels=cfg.sid.levels,
            codes=cfg.sid.codes, iters=cfg.sid.kmeans_iters, seed=cfg.sid.seed)
        log(f"built SIDs for {sids.num_items} items in {time.perf_counter() - t0:.1f}s: levels "
            f"{sids.codes_per_level}, collision rate {diagnostics['collision_rate']:.3f}")
        if sid_path is not None:
            save_sid_table(sids, sid_path)
            _write_json(sid_path.with_name("sid_diagnostics.json"), diagnostics)
    return Prepared(cfg, data, split, sids, build_trie(sids.codes), SIDVocab(sids.codes_per_level),
                    item_counts(split.train, data.num_items))


def run_hash(cfg: Config, sids: SIDTable) -> str:
    """Identifies what a checkpoint depends on: the model/data/SID config and the SID table."""
    relevant = {k: v for k, v in config_lib.to_dict(cfg).items() if k in ("data", "sid", "model")}
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    h.update(sids.content_hash().encode())
    return h.hexdigest()


def build_model(cfg: Config, vocab: SIDVocab) -> SIDRecommender:
    """A freshly initialised model (seeded by ``train.seed``)."""
    return SIDRecommender(cfg.model, vocab, rngs=nnx.Rngs(params=cfg.train.seed))


def _check_workdir_config(cfg: Config, workdir: Path) -> None:
    path = workdir / "config.json"
    if path.exists():
        saved = config_lib.read_config(path)
        if dataclasses.replace(saved, train=cfg.train, eval=cfg.eval, name=cfg.name) != cfg:
            raise ValueError(f"{path} holds a different data/SID/model config than the one given; "
                             "resume with the same config or use a new --workdir")
    config_lib.save_config(cfg, path)


def train_model(prep: Prepared, workdir: Path, log: Log = print, progress=None) -> nnx.Module:
    """Trains (or resumes) the model of ``prep.cfg`` in ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir_config(prep.cfg, workdir)
    cfg = prep.cfg
    model = build_model(cfg, prep.vocab)
    log(f"{cfg.name}: {count_params(model):,} parameters "
        f"({'PrefixMem' if cfg.model.prefixmem.enabled else 'plain SID'}), {cfg.train.steps} steps")
    dataset = train_dataset(prep.split.train, prep.sids.codes, prep.vocab,
                            max_history=cfg.data.max_history, batch_size=cfg.train.batch_size,
                            seed=cfg.train.seed)
    return train(model, dataset, prep.vocab, cfg.train, workdir,
                 config_hash=run_hash(cfg, prep.sids), progress=progress,
                 log=log if progress is None else None)


def load_model(prep: Prepared, workdir: Path) -> nnx.Module:
    """The model of the latest checkpoint in ``workdir``."""
    model = build_model(prep.cfg, prep.vocab)
    graphdef, params = nnx.split(model)
    _, params = checkpoint.restore_params(Path(workdir) / "checkpoints", params,
                                          run_hash(prep.cfg, prep.sids))
    return nnx.merge(graphdef, params)


def level_correct(model: nnx.Module, prep: Prepared, arrays: dict, targets: np.ndarray,
                  batch_size: int) -> np.ndarray:
    """Per user and SID level, whether the teacher-forced argmax code is the target's: bool [U, L]."""
    graphdef, state = nnx.split(model)
    target_codes = prep.sids.codes[targets]
    correct = []
    for start in range(0, len(targets), batch_size):
        sl = slice(start, start + batch_size)
        _, preds = score_sids(graphdef, state, arrays["tokens"][sl], arrays["codes"][sl],
                              arrays["levels"][sl], target_codes[sl], vocab=prep.vocab)
        correct.append(np.asarray(preds) == target_codes[sl])
    return np.concatenate(correct)


def evaluate_detailed(model: nnx.Module, prep: Prepared, split: str = "test",
                      progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`evaluate` plus the per-user arrays (ranks, greedy and per-level correctness) that
    bootstrap intervals, paired tests and hard-example slices are computed from."""
    ecfg = prep.cfg.eval
    eval_set = prep.split.eval_set(split)
    arrays = eval_arrays(eval_set.histories, prep.sids.codes, prep.vocab, prep.cfg.data.max_history)
    t0 = time.perf_counter()
    items, _ = recommend(model, prep.trie, arrays, prep.vocab, beam=ecfg.beam_size,
                         batch_size=ecfg.batch_size, progress=progress)
    decode_s = time.perf_counter() - t0
    ranks = ranks_of_targets(items, eval_set.targets)
    levels_ok = level_correct(model, prep, arrays, eval_set.targets, ecfg.batch_size)
    greedy_codes, _ = greedy(model, prep.trie, arrays, prep.vocab, constrained=False,
                             batch_size=ecfg.batch_size)
    greedy_ok = full_sid_correct(greedy_codes, prep.sids.codes[eval_set.targets])
    result = stats.summarize(ranks, ks=ecfg.top_k)
    result["level_accuracy"] = levels_ok.mean(axis=0).tolist()
    result.update(greedy_accuracy=float(greedy_ok.mean()), users=len(ranks), split=split,
                  users_per_s=len(ranks) / decode_s,
                  invalid_rate=float(np.mean(items[:, :max(ecfg.top_k)] < 0)))
    per_user = per_user_values(ranks, greedy_correct=greedy_ok, level_correct=levels_ok,
                               ks=ecfg.top_k)
    return result, per_user


def evaluate(model: nnx.Module, prep: Prepared, split: str = "test", progress=None) -> dict:
    """Recall/NDCG over all items by trie-constrained beam search, per-level (teacher-forced) and
    greedy full-SID accuracy."""
    return evaluate_detailed(model, prep, split, progress)[0]


def evaluate_popularity(prep: Prepared, split: str = "test") -> tuple[dict, dict[str, np.ndarray]]:
    """The same metrics for the most-popular-items baseline, and its per-user arrays."""
    eval_set = prep.split.eval_set(split)
    top = popularity_ranking(prep.counts, max(prep.cfg.eval.top_k))
    ranks = ranks_of_targets(np.broadcast_to(top, (len(eval_set), len(top))), eval_set.targets)
    result = stats.summarize(ranks, ks=prep.cfg.eval.top_k)
    result["level_accuracy"] = popularity_level_accuracy(prep.sids.codes, prep.counts,
                                                         eval_set.targets)
    result.update(users=len(ranks), split=split)
    return result, per_user_values(ranks, ks=prep.cfg.eval.top_k)


def results_table(results: dict[str, dict], ks=(5, 10)) -> str:
    """A Markdown table of Recall/NDCG and per-level accuracy, one row per model."""
    levels = len(next(iter(results.values()))["level_accuracy"])
    head = ([f"Recall@{k}" for k in ks] + [f"NDCG@{k}" for k in ks]
            + [f"acc L{i + 1}" for i in range(levels)])
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, r in results.items():
        values = ([r[f"recall@{k}"] for k in ks] + [r[f"ndcg@{k}"] for k in ks]
                  + list(r["level_accuracy"]))
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def variant(cfg: Config, prefixmem: bool) -> Config:
    """``cfg`` with PrefixMem switched on or off (everything else equal)."""
    model = dataclasses.replace(
        cfg.model, prefixmem=dataclasses.replace(cfg.model.prefixmem, enabled=prefixmem))
    return dataclasses.replace(cfg, model=model,
                               name=f"{cfg.name}-{'prefixmem' if prefixmem else 'baseline'}")


def jax_backend() -> str:
    """A short description of the devices in use, for reports."""
    devices = jax.devices()
    return (f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
            f"{os.cpu_count()} host CPU cores")


def write_report(workdir: Path, cfg: Config, results: dict[str, dict], extra: dict) -> Path:
    """Writes ``report.md`` (comparison table, setup, timings) atomically; returns its path."""
    levels = len(next(iter(results.values()))["level_accuracy"])
    lines = [
        f"# sidjax run `{cfg.name}`", "",
        f"Data: {extra['data']}. SIDs: {levels} levels {extra['codes_per_level']} "
        "(residual k-means + collision level).",
        f"Protocol: leave-one-out, {cfg.eval.split} split, full ranking over all items by "
        f"trie-constrained beam search (beam {cfg.eval.beam_size}); per-level accuracy is "
        "teacher-forced.", "",
        results_table(results, cfg.eval.top_k), "",
        "| model | parameters | train s | eval users/s |", "|---|---|---|---|",
    ]
    for name, info in extra["models"].items():
        lines.append(f"| {name} | {info['params']:,} | {info['train_s']:.0f} | "
                     f"{info['users_per_s']:.0f} |")
    lines += ["", f"Hardware: {extra['hardware']}. Steps per model: {cfg.train.steps}, batch "
              f"{cfg.train.batch_size}.", ""]
    if extra.get("analysis"):
        lines += ["## Intervals, paired test, hard examples, breakdowns", "", extra["analysis"], ""]
    path = Path(workdir) / "report.md"
    tmp = Path(f"{path}.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def run_compare(cfg: Config, workdir: Path, log: Log = print, progress_factory=None) -> dict:
    """Trains the plain SID baseline and the PrefixMem model for the same steps, evaluates both
    and popularity, and writes a run folder with ``report.md`` and ``results.json``.

    ``progress_factory(description, total)`` returns a callable progress sink (or None).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_lib.save_config(cfg, workdir / "config.json")
    prep = prepare(cfg, workdir, log)
    results, per_user = {}, {}
    results["popularity"], per_user["popularity"] = evaluate_popularity(prep, cfg.eval.split)
    models = {}
    for use_pm in (False, True):
        sub_cfg = variant(cfg, use_pm)
        name = "prefixmem" if use_pm else "baseline"
        sub = workdir / name
        sub.mkdir(exist_ok=True)
        save_sid_table(prep.sids, sub / "sids.npz")
        sub_prep = dataclasses.replace(prep, cfg=sub_cfg)
        t0 = time.perf_counter()
        bar = progress_factory(f"train {name}", cfg.train.steps) if progress_factory else None
        model = train_model(sub_prep, sub, log=log, progress=bar)
        train_s = time.perf_counter() - t0
        bar = progress_factory(f"eval {name}", len(prep.split.eval_set(cfg.eval.split))) \
            if progress_factory else None
        result, per_user[name] = evaluate_detailed(
            model, sub_prep, cfg.eval.split,
            progress=(lambda n, b=bar: b(n, None)) if bar else None)
        _write_json(sub / "eval.json", result)
        results[name] = result
        models[name] = {"params": count_params(model), "train_s": train_s,
                        "users_per_s": result["users_per_s"]}
    extra = {"data": f"{prep.data.name}, {prep.data.num_users} users, {prep.data.num_items} items",
             "codes_per_level": prep.sids.codes_per_level, "models": models,
             "hardware": jax_backend()}
    eval_set = prep.split.eval_set(cfg.eval.split)
    extra["analysis"] = comparison_report(
        per_user, target_items=eval_set.targets, item_counts=prep.counts,
        history_lengths=history_lengths(eval_set.histories, cfg.data.max_history),
        ks=cfg.eval.top_k, seed=cfg.train.seed)
    _write_json(workdir / "results.json", {"results": results, **extra})
    write_report(workdir, cfg, results, extra)
    return results

"""The end-to-end job as importable steps: prepare data and SIDs, train, evaluate, compare.

Each step reads and writes a run folder (``workdir``): ``config.json``, ``sids.npz``,
``sid_diagnostics.json``, ``checkpoints/``, ``metrics.jsonl``, ``eval.json`` and, for a comparison,
``report.md``. The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sidjax import config as config_lib
from sidjax.config import Config
from sidjax.data.pipeline import (
    SIDVocab,
    TextPrompt,
    eval_arrays,
    train_dataset,
    training_length,
)
from sidjax.data.split import Split, item_counts, leave_one_out
from sidjax.data.synthetic import synthetic_catalog
from sidjax.data.types import InteractionData
from sidjax.decode.beam import greedy, recommend
from sidjax.decode.scoring import score_sids
from sidjax.eval import stats
from sidjax.eval.comparison import json_ready, summarize_comparison
from sidjax.eval.compute import matched_steps, tokens_per_step, training_compute
from sidjax.eval.metrics import (
    full_sid_correct,
    history_lengths,
    popularity_level_accuracy,
    popularity_ranking,
    ranks_of_targets,
)
from sidjax.eval.plots import read_metrics
from sidjax.eval.report import per_user_values
from sidjax.nn.model import SIDRecommender, count_params
from sidjax.sid.table import SIDTable, load_sid_table, save_sid_table
from sidjax.sid.trie import SIDTrie, build_trie
from sidjax.train import checkpoint
from sidjax.train.loop import sid_task_loss, state_report, tied_output_params, train
from sidjax.train.partition import make_partitioner

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
    prompt: TextPrompt | None = None  # text prompt tokens (data.text_prompt, data.item_text_tokens)


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


ITEM_VECTORS = ("auto", "text", "collab")


def item_vectors(data: InteractionData, split: Split, log: Log = print,
                 kind: str = "auto", progress_factory=None) -> np.ndarray:
    """Content vectors for SIDs (``data.item_vectors``): ``"auto"`` takes given vectors, else
    MiniLM over item text, else co-occurrence vectors; ``"text"`` and ``"collab"`` force one.
    ``progress_factory`` (see :func:`run_compare`) shows the MiniLM encoding's progress."""
    if kind not in ITEM_VECTORS:
        raise ValueError(f"data.item_vectors={kind!r}; use one of {', '.join(ITEM_VECTORS)}")
    if kind == "auto" and data.item_vectors is not None:
        return data.item_vectors
    if kind in ("auto", "text") and data.item_text is not None:
        from sidjax.text.minilm import encode_texts

        log(f"encoding {data.num_items} item texts with MiniLM")
        return encode_texts(data.item_text, progress=progress_factory or False)
    if kind == "text":
        raise ValueError(f"data.item_vectors='text' but {data.name} has no item text; use "
                         "'collab' (vectors from training interactions)")
    from sidjax.data.embed import collaborative_item_vectors

    log(("no item text" if kind == "auto" else "data.item_vectors='collab'")
        + ": collaborative item vectors from training co-occurrences")
    return collaborative_item_vectors(split.train, data.num_items)


def _write_json(path: Path, obj) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def prepare(cfg: Config, workdir: Path | None = None, log: Log = print,
            progress_factory=None) -> Prepared:
    """Loads data, splits it, and builds (or reloads from ``workdir``) the SID table;
    ``progress_factory`` (see :func:`run_compare`) shows the item-text encoding's progress."""
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
        from sidjax.sid.build import build_from_settings
        from sidjax.sid.diagnostics import stats_table

        t0 = time.perf_counter()
        built = build_from_settings(item_vectors(data, split, log, cfg.data.item_vectors,
                                                 progress_factory),
                                    data.item_ids, cfg.sid)
        sids, diagnostics = built.table, built.diagnostics
        log(f"built {built.method} SIDs for {sids.num_items} items in {time.perf_counter() - t0:.1f}s: "
            f"levels {sids.codes_per_level}, collision rate {diagnostics['collision_rate']:.3f}\n"
            + stats_table(diagnostics))
        if sid_path is not None:
            save_sid_table(sids, sid_path)
            _write_json(sid_path.with_name("sid_diagnostics.json"),
                        {**diagnostics, "vectors_sha256": built.vectors_sha256})
    from sidjax.tokens import run_prompt

    vocab, prompt = run_prompt(cfg.data, data.item_text, sids.codes_per_level, workdir, log) or (
        SIDVocab(sids.codes_per_level), None)
    return Prepared(cfg, data, split, sids, build_trie(sids.codes), vocab,
                    item_counts(split.train, data.num_items), prompt)


def run_hash(cfg: Config, sids: SIDTable, prefixmem_init: str | None = None) -> str:
    """Identifies what a checkpoint depends on: the model/data/SID config, the SID table, the
    fingerprint of a pre-trained PrefixMem the run started from (``prefixmem_init``, see
    :func:`attach_prefixmem_init`) and a decoder-freeze stage (it changes the optimizer state)."""
    relevant = {k: v for k, v in config_lib.to_dict(cfg).items() if k in ("data", "sid", "model")}
    for key in ("pack_segments", "pack_length"):  # how training rows are laid out, not the model
        relevant["data"].pop(key, None)
    if relevant["model"].get("item_memory") == config_lib.to_dict(config_lib.Config())[
            "model"]["item_memory"]:  # added later: runs without it keep their hash
        relevant["model"].pop("item_memory")
    # keys added after runs were made: at their defaults, those runs keep their hash
    for key in ("text_prompt", "item_text_tokens", "text_vocab_size", "item_vectors"):
        if relevant["data"].get(key) == getattr(config_lib.DataConfig(), key):
            relevant["data"].pop(key)
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    h.update(sids.content_hash().encode())
    if cfg.data.item_text_tokens:  # item text moved after its SID (2026-12-01): old runs differ
        h.update(b"item text after SID")
    if prefixmem_init:
        h.update(f"prefixmem_init:{prefixmem_init}".encode())
    if cfg.train.freeze_decoder_steps:
        h.update(f"freeze_decoder_steps:{cfg.train.freeze_decoder_steps}".encode())
    return h.hexdigest()


def attach_prefixmem_init(model: nnx.Module, prep: Prepared, workdir: Path,
                          log: Log = print) -> str | None:
    """Sets the model's PrefixMem parameters from ``train.prefixmem_init`` (a ``sidjax
    pretrain-mem`` checkpoint; see :func:`sidjax.nn.pretrain.init_for_run`) and returns its
    fingerprint for :func:`run_hash` (None without one). A resumed run restores its own
    checkpoint over these values, so the init only matters at step 0."""
    tcfg = prep.cfg.train
    if (tcfg.prefixmem_init or tcfg.freeze_decoder_steps) and getattr(model, "pm_cfg", None) is None:
        raise ValueError("train.prefixmem_init and train.freeze_decoder_steps need a model with "
                         "PrefixMem: set model.kind=sid and model.prefixmem.enabled=true")
    if not tcfg.prefixmem_init:
        return None
    from sidjax.nn.pretrain import init_for_run

    own = {k: v[...] for k, v in model.prefixmem.items()}
    params, record = init_for_run(tcfg.prefixmem_init, model.pm_cfg, own,
                                  prep.sids.content_hash(), workdir, log=log)
    for k, v in (params or {}).items():
        model.prefixmem[k].set_value(v)
    return record["fingerprint"]


def prefixmem_pretrain_flops(cfg: Config, workdir: Path) -> float | None:
    """Pre-training FLOPs of the PrefixMem init a run in ``workdir`` started from (or None)."""
    from sidjax.nn.pretrain import recorded_init

    record = recorded_init(workdir) if cfg.train.prefixmem_init else None
    return None if record is None else record.get("pretrain_flops")


def _recorded_prefixmem_init(cfg: Config, workdir: Path) -> str | None:
    from sidjax.nn.pretrain import recorded_init

    record = recorded_init(workdir) if cfg.train.prefixmem_init else None
    return None if record is None else record["fingerprint"]


MODEL_KINDS = ("sid", "sasrec")


def build_model(cfg: Config, vocab: SIDVocab, num_items: int | None = None, *,
                mesh=None) -> nnx.Module:
    """A freshly initialised model (seeded by ``train.seed``): the SID recommender, or the SASRec
    item-ID baseline (``model.kind="sasrec"``, which needs ``num_items``). ``mesh``: the training
    mesh, for PrefixMem's row-sharded table lookup (``sidjax.parallel.sharded_take``)."""
    rngs = nnx.Rngs(params=cfg.train.seed)
    if cfg.model.kind == "sasrec":
        from sidjax.nn.sasrec import SASRec

        return SASRec(cfg.model, num_items, rngs=rngs)
    if cfg.model.kind != "sid":
        raise ValueError(f"model.kind={cfg.model.kind!r}; use one of {MODEL_KINDS}")
    return SIDRecommender(cfg.model, vocab, rngs=rngs, mesh=mesh)


def _check_workdir_config(cfg: Config, workdir: Path, log: Log | None = None,
                          allow_change: bool = False) -> None:
    """Saves ``cfg`` as ``workdir/config.json`` after checking it against the one there.

    Another data/SID/model config is refused. Once a checkpoint exists, so is another value of a
    ``train.*`` setting that shapes the updates (:func:`sidjax.train.loop.train_config_changes`;
    logging, checkpointing, validation, data-feeding and mesh settings may change), unless
    ``allow_change`` (``--allow-config-change``); ``train.steps`` may change without it (extending
    a run) as long as it is not below the trained step. An accepted change is logged and
    appended to ``workdir/config_changes.jsonl`` (``{"step", "time", "changes": {key: {"old",
    "new"}}}``, ``step`` the newest checkpoint when it was accepted), so that file and
    ``config.json`` together say how every part of the run was trained."""
    from sidjax.train.loop import train_config_changes

    path = workdir / "config.json"
    if path.exists():
        saved = config_lib.read_config(path)
        if dataclasses.replace(saved, train=cfg.train, eval=cfg.eval, name=cfg.name) != cfg:
            raise ValueError(f"{path} holds a different data/SID/model config than the one given; "
                             "resume with the same config or use a new --workdir")
        trained = checkpoint.latest_saved_step(workdir / "checkpoints")
        changes = train_config_changes(saved.train, cfg.train) if trained else {}
        refused = {k: v for k, v in changes.items() if k != "train.steps" or v[1] < trained}

        def listed(diff: dict) -> str:
            return "; ".join(f"{k}: {json.dumps(old)} in config.json, {json.dumps(new)} given"
                             for k, (old, new) in diff.items())

        if refused and not allow_change:
            raise ValueError(
                f"{workdir} was trained to step {trained} with other train.* settings: "
                f"{listed(refused)}; resume with the values of config.json, pass "
                "--allow-config-change to go on with the new ones (recorded in "
                "config_changes.jsonl), or use a new --workdir")
        if changes:
            if jax.process_index() == 0:
                row = {"step": trained, "time": datetime.now(UTC).isoformat(timespec="seconds"),
                       "changes": {k: {"old": old, "new": new}
                                   for k, (old, new) in changes.items()}}
                with (workdir / "config_changes.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if log is not None:
                log(f"{workdir}: changed after step {trained}: {listed(changes)} (recorded in "
                    f"{workdir / 'config_changes.jsonl'})")
    config_lib.save_config(cfg, path)


def check_beam(cfg: Config) -> None:
    """Raises unless the beam of a SID model returns at least ``max(eval.top_k)`` items
    (:func:`sidjax.config.beam_problem`)."""
    problem = config_lib.beam_problem(cfg)
    if problem:
        raise ValueError(problem)


def validation_users(num_users: int, eval_users: int) -> np.ndarray:
    """The fixed validation subset: ``eval_users`` user rows drawn once with seed 0 (sorted), or
    all rows when ``eval_users`` is 0 or covers them."""
    if eval_users <= 0 or eval_users >= num_users:
        return np.arange(num_users)
    return np.sort(np.random.default_rng(0).choice(num_users, eval_users, replace=False))


def _pad_rows(arrays: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    pad = -len(next(iter(arrays.values()))) % multiple
    return {k: np.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1)) for k, v in arrays.items()}


@functools.partial(jax.jit, static_argnames="graphdef")
def _item_nll(graphdef, state, items, targets):
    """Next-item negative log-likelihood ``[B]`` of an item-ID model after histories ``[B, T]``."""
    model = nnx.merge(graphdef, state)
    logits = model.item_logits(model.hidden(items)[:, -1]).astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, targets[:, None], axis=-1)[:, 0]


def make_validation(prep: Prepared, graphdef) -> Callable[[object, int], dict]:
    """The ``evaluate(params, step)`` callback of :func:`sidjax.train.loop.train` on the fixed
    subset of the validation split (``train.eval_users``).

    SID models: ``valid/loss`` (teacher-forced NLL per SID token of the held-out item),
    ``valid/acc_l1..`` (teacher-forced per-level accuracy, as in :func:`level_correct`) and, with
    ``train.eval_recall``, ``valid/recall@K`` / ``valid/ndcg@K`` (``eval.top_k``) by the
    trie-constrained beam search. Item-ID models (SASRec): ``valid/loss`` (next-item NLL),
    per-level accuracy and Recall/NDCG of the full item ranking.
    """
    cfg, ecfg = prep.cfg, prep.cfg.eval
    check_beam(cfg)
    valid = prep.split.eval_set("valid")
    rows = validation_users(len(valid.targets), cfg.train.eval_users)
    histories, targets = [valid.histories[i] for i in rows], np.asarray(valid.targets)[rows]
    target_codes = prep.sids.codes[targets]
    bs = min(ecfg.batch_size, len(rows))

    def ranking(items: np.ndarray) -> dict:
        summary = stats.summarize(ranks_of_targets(items, targets), ks=ecfg.top_k)
        return {f"valid/{k}": v for k, v in summary.items()}

    if cfg.model.kind == "sasrec":
        from sidjax.data.pipeline import encode_item_ids
        from sidjax.decode.items import rank_items

        item_histories = np.stack([encode_item_ids(h, cfg.data.max_history) for h in histories])
        padded = _pad_rows({"items": item_histories, "targets": targets.astype(np.int32)}, bs)

        def evaluate_items(params, step):
            model = nnx.merge(graphdef, params)
            nll = np.concatenate([np.asarray(_item_nll(graphdef, params, padded["items"][i:i + bs],
                                                       padded["targets"][i:i + bs]))
                                  for i in range(0, len(padded["items"]), bs)])[:len(rows)]
            items, _, level_pred = rank_items(model, item_histories, prep.sids.codes, targets,
                                              k=max(ecfg.top_k), batch_size=bs)
            out = {"valid/loss": float(nll.mean())}
            out.update({f"valid/acc_l{lv + 1}": float(ok) for lv, ok in
                        enumerate((level_pred == target_codes).mean(axis=0))})
            return out | ranking(items)

        return evaluate_items
    arrays = eval_arrays(histories, prep.sids.codes, prep.vocab, cfg.data.max_history, prep.prompt)
    padded = _pad_rows(dict(arrays, target_codes=target_codes), bs)

    def evaluate_sids(params, step):
        log_probs, preds = [], []
        for i in range(0, len(padded["tokens"]), bs):
            lp, pr = score_sids(graphdef, params, *(padded[k][i:i + bs] for k in (
                "tokens", "codes", "levels", "target_codes")), vocab=prep.vocab)
            log_probs.append(np.asarray(lp))
            preds.append(np.asarray(pr))
        log_probs, preds = np.concatenate(log_probs)[:len(rows)], np.concatenate(preds)[:len(rows)]
        out = {"valid/loss": float(-log_probs.mean())}
        out.update({f"valid/acc_l{lv + 1}": float(ok) for lv, ok in
                    enumerate((preds == target_codes).mean(axis=0))})
        if cfg.train.eval_recall:
            items, _ = recommend(nnx.merge(graphdef, params), prep.trie, arrays, prep.vocab,
                                 beam=ecfg.beam_size, batch_size=bs)
            out |= ranking(items)
        return out

    return evaluate_sids


def train_model(prep: Prepared, workdir: Path, log: Log = print, progress=None, *,
                allow_config_change: bool = False, summary: dict | None = None) -> nnx.Module:
    """Trains (or resumes) the model of ``prep.cfg`` in ``workdir``, validating every
    ``train.eval_every`` steps; returns the model that ``eval.checkpoint`` selects (the best
    validated checkpoint when there is one and ``eval.checkpoint="best"``, else the last step).

    A resume refuses changed ``train.*`` settings unless ``allow_config_change``, which records
    them (:func:`_check_workdir_config`). ``summary``: see :func:`sidjax.train.loop.train` (the
    steps training started from and reached)."""
    workdir = Path(workdir)
    check_beam(prep.cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir_config(prep.cfg, workdir, log, allow_config_change)
    cfg = prep.cfg
    model = build_model(cfg, prep.vocab, prep.data.num_items, mesh=make_partitioner(
        cfg.train.mesh_data, cfg.train.mesh_fsdp, cfg.train.mesh_model).mesh)
    log(f"{cfg.name}: {count_params(model):,} parameters ({model_description(cfg)}), "
        f"{cfg.train.steps} steps")
    init = attach_prefixmem_init(model, prep, workdir, log)
    sasrec = cfg.model.kind == "sasrec"
    dataset = train_dataset(prep.split.train, prep.sids.codes, prep.vocab,
                            max_history=cfg.data.max_history, batch_size=cfg.train.batch_size,
                            seed=cfg.train.seed, item_ids=sasrec,
                            pack_segments=cfg.data.pack_segments,
                            pack_length=cfg.data.pack_length or None, prompt=prep.prompt)
    smoothing = cfg.train.label_smoothing
    if sasrec:
        from sidjax.nn.sasrec import sasrec_task_loss

        loss_fn = functools.partial(sasrec_task_loss, label_smoothing=smoothing)
    else:
        loss_fn = sid_task_loss(prep.vocab, smoothing)
    evaluate = make_validation(prep, nnx.split(model)[0]) if cfg.train.eval_every > 0 else None
    trained = train(model, dataset, prep.vocab, cfg.train, workdir,
                    config_hash=run_hash(cfg, prep.sids, init), progress=progress, log=log,
                    loss_fn=loss_fn, evaluate=evaluate, summary=summary)
    if evaluate is None or cfg.eval.checkpoint != "best":
        return trained
    return load_model(prep, workdir, log=log)


def load_model(prep: Prepared, workdir: Path, which: str | None = None,
               log: Log | None = None) -> nnx.Module:
    """The model of a checkpoint in ``workdir``: ``which="best"`` (by ``train.best_metric``;
    the latest when no checkpoint was validated) or ``"latest"``; default ``eval.checkpoint``."""
    which = which or prep.cfg.eval.checkpoint
    model = build_model(prep.cfg, prep.vocab, prep.data.num_items)
    graphdef, params = nnx.split(model)
    tcfg = prep.cfg.train
    step, params, used = checkpoint.restore_chosen(
        Path(workdir) / "checkpoints", params,
        run_hash(prep.cfg, prep.sids, _recorded_prefixmem_init(prep.cfg, Path(workdir))), log,
        which=which,
        best_metric=tcfg.best_metric, best_mode=tcfg.best_mode)
    if log is not None:
        log(f"using the {used} checkpoint: step {step}" + (
            f" (best {tcfg.best_metric})" if used == "best" else ""))
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
    if prep.cfg.model.kind == "sasrec":
        return _evaluate_items(model, prep, eval_set, split, progress)
    check_beam(prep.cfg)
    arrays = eval_arrays(eval_set.histories, prep.sids.codes, prep.vocab, prep.cfg.data.max_history,
                         prep.prompt)
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
                               greedy_levels=greedy_codes == prep.sids.codes[eval_set.targets],
                               ks=ecfg.top_k)
    return result, per_user


def _evaluate_items(model: nnx.Module, prep: Prepared, eval_set, split: str, progress=None
                    ) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`evaluate_detailed` for an item-ID model: full ranking of all items by softmax score;
    per-level accuracy from the item distribution marginalised over SID prefixes; "greedy" accuracy
    is top-1 accuracy (the model's single best guess)."""
    from sidjax.data.pipeline import encode_item_ids
    from sidjax.decode.items import rank_items

    ecfg = prep.cfg.eval
    histories = np.stack([encode_item_ids(h, prep.cfg.data.max_history)
                          for h in eval_set.histories])
    t0 = time.perf_counter()
    items, _, level_pred = rank_items(model, histories, prep.sids.codes, eval_set.targets,
                                      k=max(max(ecfg.top_k), 20), batch_size=ecfg.batch_size,
                                      progress=progress)
    decode_s = time.perf_counter() - t0
    ranks = ranks_of_targets(items, eval_set.targets)
    levels_ok = level_pred == prep.sids.codes[eval_set.targets]
    top1_ok = items[:, 0] == eval_set.targets
    result = stats.summarize(ranks, ks=ecfg.top_k)
    result["level_accuracy"] = levels_ok.mean(axis=0).tolist()
    result.update(greedy_accuracy=float(top1_ok.mean()), users=len(ranks), split=split,
                  users_per_s=len(ranks) / decode_s, invalid_rate=0.0)
    return result, per_user_values(ranks, greedy_correct=top1_ok, level_correct=levels_ok,
                                   ks=ecfg.top_k)


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


def model_description(cfg: Config) -> str:
    """A few words naming the model of ``cfg`` (for logs and reports)."""
    if cfg.model.kind == "sasrec":
        return "SASRec item-ID baseline"
    if cfg.model.item_memory.enabled:
        return "plain SID + item memory (PrefixMem's parameters, not prefix-keyed)"
    return "PrefixMem" if cfg.model.prefixmem.enabled else "plain SID"


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
    path = Path(workdir) / "report.md"
    tmp = Path(f"{path}.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


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
    _write_json(path, {"train_s": total})
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
            _write_json(sub / "eval.json", result)
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
    _write_json(workdir / "results.json", json_ready(
        {"results": results, "per_seed": per_seed_results, **summary["json"], **extra}))
    write_report(workdir, cfg, results, extra)
    return results

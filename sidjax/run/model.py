"""The model of a run: building it from a config, the identity of its checkpoints
(:func:`run_hash`) and a pre-trained PrefixMem it may start from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from flax import nnx

from sidjax import config as config_lib
from sidjax.config import Config
from sidjax.nn.model import SIDRecommender
from sidjax.run.task import Log, Prepared
from sidjax.sid.table import SIDTable
from sidjax.tokens import SIDVocab


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
    model_defaults = config_lib.to_dict(config_lib.Config())["model"]
    for key in ("attention", "attention_windows", "bfts_window", "nlir"):  # added later, likewise
        if relevant["model"].get(key) == model_defaults[key]:
            relevant["model"].pop(key)
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
    pretrain-mem`` checkpoint; see :func:`sidjax.nn.prefixmem_io.init_for_run`) and returns its
    fingerprint for :func:`run_hash` (None without one). A resumed run restores its own
    checkpoint over these values, so the init only matters at step 0."""
    tcfg = prep.cfg.train
    if (tcfg.prefixmem_init or tcfg.freeze_decoder_steps) and getattr(model, "pm_cfg", None) is None:
        raise ValueError("train.prefixmem_init and train.freeze_decoder_steps need a model with "
                         "PrefixMem: set model.kind=sid and model.prefixmem.enabled=true")
    if not tcfg.prefixmem_init:
        return None
    from sidjax.nn.prefixmem_io import init_for_run

    own = {k: v[...] for k, v in model.prefixmem.items()}
    params, record = init_for_run(tcfg.prefixmem_init, model.pm_cfg, own,
                                  prep.sids.content_hash(), workdir, log=log)
    for k, v in (params or {}).items():
        model.prefixmem[k].set_value(v)
    return record["fingerprint"]


def prefixmem_pretrain_flops(cfg: Config, workdir: Path) -> float | None:
    """Pre-training FLOPs of the PrefixMem init a run in ``workdir`` started from (or None)."""
    from sidjax.nn.prefixmem_io import recorded_init

    record = recorded_init(workdir) if cfg.train.prefixmem_init else None
    return None if record is None else record.get("pretrain_flops")


def _recorded_prefixmem_init(cfg: Config, workdir: Path) -> str | None:
    from sidjax.nn.prefixmem_io import recorded_init

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

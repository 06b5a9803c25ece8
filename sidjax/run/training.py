"""Training a run in its folder (resuming, refusing changed settings) and loading its
checkpoints back as models."""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import UTC, datetime
from pathlib import Path

import jax
from flax import nnx

from sidjax import config as config_lib
from sidjax.config import Config, check_beam
from sidjax.data.pipeline import train_dataset
from sidjax.eval.validation import make_validation
from sidjax.nn.model import count_params
from sidjax.run.model import (
    _recorded_prefixmem_init,
    attach_prefixmem_init,
    build_model,
    model_description,
    run_hash,
)
from sidjax.run.task import Log, Prepared
from sidjax.train import checkpoint
from sidjax.train.loop import sid_task_loss, train
from sidjax.train.partition import make_partitioner


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

"""Orbax checkpoints of training state (params, optimizer state, step), tied to a config hash."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def manager(directory: Path, max_to_keep: int) -> ocp.CheckpointManager:
    """A checkpoint manager over ``directory`` keeping the last ``max_to_keep`` steps.

    Orbax writes each step to a temporary folder and renames it when complete, so a partly
    written step is never restored.
    """
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, config_hash: str) -> None:
    """Saves the state of ``step`` (asynchronously; call ``wait_until_finished`` before exit)."""
    mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave({"step": step, "config_hash": config_hash})), force=True)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def check_hash(mngr: ocp.CheckpointManager, step: int, config_hash: str) -> None:
    """Raises when checkpoint ``step`` was made under another config or SID table."""
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved = meta.get("config_hash", "")
    if config_hash and saved and saved != config_hash:
        raise ValueError(
            f"checkpoint {mngr.directory}/{step} was made with another config or SID table "
            f"(hash {saved[:12]} != {config_hash[:12]}); use a new --workdir or the old config")


def restore_latest(mngr: ocp.CheckpointManager, params, opt_state, config_hash: str):
    """Returns ``(step, params, opt_state)`` from the latest checkpoint, or step 0 and the inputs."""
    step = mngr.latest_step()
    if step is None:
        return 0, params, opt_state
    check_hash(mngr, step, config_hash)
    state = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params)),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state))))
    return step, state["params"], state["opt_state"]


def restore_params(directory: Path, params, config_hash: str = ""):
    """``(step, params)`` of the latest checkpoint under ``directory``, shaped like ``params``."""
    mngr = manager(directory, 1)
    try:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"no checkpoint under {directory}; train first with `sidjax train`")
        check_hash(mngr, step, config_hash)
        restored = mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params))))
        return step, restored["params"]
    finally:
        mngr.close()

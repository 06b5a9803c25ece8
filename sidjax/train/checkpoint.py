"""Orbax checkpoints of training state (params, optimizer state, step), tied to a config hash.

Restoring reads into the shardings of the target arrays, so a run saved on one mesh resumes on
another (or on one device). A latest step that cannot be read (truncated or corrupted files) is
reported and skipped: the previous good step is restored instead.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """Shape, dtype and sharding of every array (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def check_hash(mngr: ocp.CheckpointManager, step: int, config_hash: str) -> None:
    """Raises when checkpoint ``step`` was made under another config or SID table."""
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved = meta.get("config_hash", "")
    if config_hash and saved and saved != config_hash:
        raise ValueError(
            f"checkpoint {mngr.directory}/{step} was made with another config or SID table "
            f"(hash {saved[:12]} != {config_hash[:12]}); use a new --workdir or the old config")


def _restore_newest_good(mngr: ocp.CheckpointManager, items: dict, config_hash: str,
                         log: Callable[[str], None] | None):
    """``(step, restored items)`` of the newest step that reads back, or ``(None, None)``."""
    steps = sorted(mngr.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        try:
            check_hash(mngr, step, config_hash)
            restored = mngr.restore(step, args=ocp.args.Composite(
                **{k: ocp.args.StandardRestore(_abstract(v)) for k, v in items.items()}))
        except ValueError as e:
            if "another config" in str(e):
                raise
            error = e
        except Exception as e:  # noqa: BLE001 - any read failure means a damaged step
            error = e
        else:
            return step, restored
        fallback = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else \
            "no older checkpoint: starting from step 0"
        (log or print)(f"checkpoint {mngr.directory}/{step} is damaged and was skipped "
                       f"({type(error).__name__}: {str(error)[:200]}); {fallback}")
    return None, None


def restore_latest(mngr: ocp.CheckpointManager, params, opt_state, config_hash: str,
                   log: Callable[[str], None] | None = None):
    """Returns ``(step, params, opt_state)`` of the newest readable checkpoint, or step 0 and the
    inputs. Arrays come back with the shapes, dtypes and shardings of ``params``/``opt_state``.
    """
    step, state = _restore_newest_good(mngr, {"params": params, "opt_state": opt_state},
                                       config_hash, log)
    if step is None:
        return 0, params, opt_state
    return step, state["params"], state["opt_state"]


def restore_params(directory: Path, params, config_hash: str = "",
                   log: Callable[[str], None] | None = None):
    """``(step, params)`` of the newest readable checkpoint under ``directory``, shaped (and
    sharded) like ``params``."""
    mngr = manager(directory, 1)
    try:
        step, state = _restore_newest_good(mngr, {"params": params}, config_hash, log)
        if step is None:
            raise FileNotFoundError(
                f"no readable checkpoint under {directory}; train first with `sidjax train`")
        return step, state["params"]
    finally:
        mngr.close()

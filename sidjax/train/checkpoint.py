"""Orbax checkpoints of training state, tied to a config hash, keeping the last k plus the best.

A checkpoint step holds ``params``, ``opt_state``, ``meta`` (step, config hash, the validation
tracker's state), ``data`` (the grain iterator state, when the loop streams with one) and, when it
was validated, orbax's ``metrics`` (the validation metrics). With a best metric the manager keeps
the last ``max_to_keep`` steps plus the best validated one (``LatestN`` or ``BestN``
preservation); orbax writes each step to a temporary folder and renames it when complete, so a
partly written step is never restored.

Once orbax has finalised a step (renamed it into place), the primary process writes
``<step>/sidjax_manifest.json``: the size and sha256 of every other file of the step folder,
written last and atomically. Restoring verifies it first, so a file whose bytes changed (even at
the same size) is caught. A step without a manifest (saved before manifests existed, or killed
between finalising and writing it) is restored unverified, with a log line saying so.

Restoring reads into the shardings of the target arrays, so a run saved on one mesh resumes on
another (or on one device). A step that cannot be read (truncated or corrupted files, a file that
does not match its manifest) is reported and skipped: the next candidate (the previous step) is
restored instead. When every step is damaged, restoring raises a ``ValueError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

Log = Callable[[str], None]


def metric_getter(best_metric: str, best_mode: str) -> Callable[[dict], float]:
    """``metrics -> value`` for orbax's ranking; a step without the metric ranks worst."""
    worst = math.inf if best_mode == "min" else -math.inf

    def get(metrics) -> float:
        value = (metrics or {}).get(best_metric)
        return worst if value is None or math.isnan(value) else float(value)

    return get


def manager(directory: Path, max_to_keep: int, best_metric: str | None = None,
            best_mode: str = "min", create: bool = True) -> ocp.CheckpointManager:
    """A checkpoint manager over ``directory`` keeping the last ``max_to_keep`` steps and, with
    ``best_metric``, also the step whose saved metrics are best (``best_mode`` ``min``/``max``)."""
    if max_to_keep < 1:
        raise ValueError(f"train.max_checkpoints={max_to_keep} must be >= 1")
    options = {"create": create}
    if best_metric:
        get = metric_getter(best_metric, best_mode)
        options.update(best_fn=get, best_mode=best_mode, preservation_policy=(
            checkpoint_managers.AnyPreservationPolicy([
                checkpoint_managers.LatestN(n=max_to_keep),
                checkpoint_managers.BestN(get_metric_fn=get, reverse=best_mode == "min", n=1,
                                          keep_checkpoints_without_metrics=False)])))
    else:
        options["max_to_keep"] = max_to_keep
    return _Manager(Path(directory).absolute(), options=ocp.CheckpointManagerOptions(**options))


MANIFEST = "sidjax_manifest.json"
MANIFEST_FORMAT = "sidjax-checkpoint-manifest"


class DamagedCheckpoint(Exception):
    """A checkpoint step whose files do not match its manifest."""


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _step_files(step_dir: Path) -> list[Path]:
    """Every file of a step folder but the manifest (and its temporary files), sorted."""
    return sorted(p for p in step_dir.rglob("*") if p.is_file()
                  and not p.name.startswith((MANIFEST, f".{MANIFEST}")))


def write_manifest(step_dir: Path) -> Path:
    """Writes ``step_dir/sidjax_manifest.json`` (size and sha256 of every other file of the
    finalised step folder) atomically; returns its path."""
    step_dir = Path(step_dir)
    files = {p.relative_to(step_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _step_files(step_dir)}
    text = json.dumps({"format": MANIFEST_FORMAT, "version": 1, "files": files}, indent=1,
                      sort_keys=True) + "\n"
    # a plain open (not mkstemp) so the file gets the umask's permissions like orbax's files
    tmp = step_dir / f".{MANIFEST}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, step_dir / MANIFEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return step_dir / MANIFEST


def verify_manifest(step_dir: Path) -> bool:
    """Checks the files of a step folder against its manifest: True when they match, False when
    the step has no manifest (saved before manifests existed); raises :class:`DamagedCheckpoint`
    naming the first missing or changed file."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"not a {MANIFEST_FORMAT}")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DamagedCheckpoint(f"{MANIFEST} is unreadable ({e})") from None
    for name, want in sorted(files.items()):
        file = step_dir / name
        if not file.is_file():
            raise DamagedCheckpoint(f"{name} is missing (listed in {MANIFEST})")
        size = file.stat().st_size
        if size != want["bytes"]:
            raise DamagedCheckpoint(f"{name} has {size} bytes, {MANIFEST} says {want['bytes']}")
        if _sha256(file) != want["sha256"]:
            raise DamagedCheckpoint(f"{name}: sha256 differs from {MANIFEST}")
    return True


class _Manager(ocp.CheckpointManager):
    """A ``CheckpointManager`` that writes :data:`MANIFEST` into each step it saves."""

    def _finalize(self, step: int, steps_to_remove: list[int]):
        # Runs in orbax's save-finalize thread (or inline for a synchronous save) and renames the
        # step into place; wait_until_finished joins it, so the manifest exists after that call.
        super()._finalize(step, steps_to_remove)
        step_dir = Path(self.directory) / str(step)
        if jax.process_index() == 0 and step_dir.is_dir():
            write_manifest(step_dir)


class _DropUnvalidatedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


@contextlib.contextmanager
def _quiet_unvalidated_saves():
    """Orbax warns on every save without metrics when it tracks a best; between validations
    that is expected."""
    absl_logger, drop = logging.getLogger("absl"), _DropUnvalidatedWarning()
    absl_logger.addFilter(drop)
    try:
        yield
    finally:
        absl_logger.removeFilter(drop)


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, config_hash: str, *,
         data_state: dict | None = None, validation: dict | None = None,
         metrics: dict | None = None) -> None:
    """Saves the state of ``step`` (asynchronously; call ``wait_until_finished`` before exit).

    With a manager from :func:`manager`, the step's sha256 manifest is written once orbax has
    finalised the step (done when ``wait_until_finished`` returns).

    ``data_state`` is the data iterator's JSON state, ``validation`` the best tracker's state and
    ``metrics`` this step's validation metrics (which rank it for keep-best).
    """
    items = {"params": ocp.args.StandardSave(params),
             "opt_state": ocp.args.StandardSave(opt_state),
             "meta": ocp.args.JsonSave({"step": step, "config_hash": config_hash,
                                        "validation": validation})}
    if data_state is not None:
        items["data"] = ocp.args.JsonSave(data_state)
    with _quiet_unvalidated_saves():
        mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def _abstract(tree):
    """Shape, dtype and sharding of every array (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def check_hash(mngr: ocp.CheckpointManager, step: int, config_hash: str) -> dict:
    """Returns the ``meta`` of checkpoint ``step``; raises when it was made under another config
    or SID table."""
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved = meta.get("config_hash", "")
    if config_hash and saved and saved != config_hash:
        raise ValueError(
            f"checkpoint {mngr.directory}/{step} was made with another config or SID table "
            f"(hash {saved[:12]} != {config_hash[:12]}); use a new --workdir or the old config")
    return meta


@dataclasses.dataclass(frozen=True)
class Restored:
    """A checkpoint read back: its step, arrays, ``meta``, data iterator state (or None) and the
    newer steps skipped because their files contradict their manifests (``mismatched``)."""

    step: int
    items: dict
    meta: dict
    data_state: dict | None
    mismatched: tuple[int, ...] = ()


def _restore_first_good(mngr: ocp.CheckpointManager, steps: list[int], items: dict,
                        config_hash: str, log: Log | None) -> Restored | None:
    """The first of ``steps`` that matches its manifest (if it has one) and reads back; damaged
    steps are reported and skipped. None when ``steps`` is empty; a ``ValueError`` when every
    step is damaged."""
    mismatched = []
    for i, step in enumerate(steps):
        try:
            if not verify_manifest(Path(mngr.directory) / str(step)):
                (log or print)(f"checkpoint {mngr.directory}/{step} has no {MANIFEST} (saved "
                               "before manifests, or stopped while writing it); restoring it "
                               "unverified")
            meta = check_hash(mngr, step, config_hash)
            args = {k: ocp.args.StandardRestore(_abstract(v)) for k, v in items.items()}
            if (Path(mngr.directory) / str(step) / "data").is_dir():
                args["data"] = ocp.args.JsonRestore()
            restored = mngr.restore(step, args=ocp.args.Composite(**args))
        except ValueError as e:
            if "another config" in str(e):
                raise
            error = e
        except Exception as e:  # noqa: BLE001 - any read failure means a damaged step
            error = e
        else:
            return Restored(step, {k: restored[k] for k in items}, meta,
                            restored["data"] if "data" in args else None, tuple(mismatched))
        if isinstance(error, DamagedCheckpoint):
            mismatched.append(step)
        fallback = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else \
            "no older checkpoint"
        (log or print)(f"checkpoint {mngr.directory}/{step} is damaged and was skipped "
                       f"({type(error).__name__}: {str(error)[:200]}); {fallback}")
    if steps:
        raise ValueError(
            f"all {len(steps)} checkpoint(s) under {mngr.directory} are damaged (steps "
            f"{sorted(steps)}; see the messages above); move that folder away to train from step "
            "0, or use another --workdir")
    return None


def restore_training(mngr: ocp.CheckpointManager, params, opt_state, config_hash: str,
                     log: Log | None = None) -> Restored | None:
    """The newest readable checkpoint with ``params``/``opt_state`` in ``items`` (shaped and
    sharded like the inputs), or None when there is none; raises ``ValueError`` when every
    checkpoint is damaged.

    Newer steps whose files contradict their manifest are moved (not deleted) to a ``damaged/``
    folder beside the checkpoints, so training can save those steps again."""
    steps = sorted(mngr.all_steps(), reverse=True)
    restored = _restore_first_good(mngr, steps, {"params": params, "opt_state": opt_state},
                                   config_hash, log)
    if restored is not None and restored.mismatched:  # proven damage, not a transient read error
        _set_aside(list(restored.mismatched), mngr, log)
    return restored


def _set_aside(steps: list[int], mngr: ocp.CheckpointManager, log: Log | None) -> None:
    """Moves the folders of ``steps`` to ``<checkpoints>/../damaged/<step>-<utc time>`` (process
    0 only) and makes ``mngr`` forget them."""
    directory = Path(mngr.directory)
    if jax.process_index() == 0:
        aside = directory.parent / "damaged"
        aside.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for step in steps:
            target = aside / f"{step}-{stamp}"
            os.replace(directory / str(step), target)
            (log or print)(f"moved damaged checkpoint {directory}/{step} to {target} (kept for "
                           "inspection; training will save that step again)")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("sidjax_set_aside_damaged")
    mngr.reload()


def restore_latest(mngr: ocp.CheckpointManager, params, opt_state, config_hash: str,
                   log: Log | None = None):
    """Returns ``(step, params, opt_state)`` of the newest readable checkpoint, or step 0 and the
    inputs. Arrays come back with the shapes, dtypes and shardings of ``params``/``opt_state``.
    """
    restored = restore_training(mngr, params, opt_state, config_hash, log)
    if restored is None:
        return 0, params, opt_state
    return restored.step, restored.items["params"], restored.items["opt_state"]


def latest_saved_step(directory: Path) -> int:
    """The newest step folder under the checkpoint ``directory`` (0 when there is none), from the
    folder names alone (no orbax manager is opened; a damaged newest step counts too: its resume
    falls back to an older step and says so)."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    return max((int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()),
               default=0)


CHECKPOINT_CHOICES = ("best", "latest")


def restore_params(directory: Path, params, config_hash: str = "",
                   log: Log | None = None) -> tuple[int, object]:
    """``(step, params)`` of the newest readable checkpoint under ``directory``, shaped (and
    sharded) like ``params``."""
    step, params, _ = restore_chosen(directory, params, config_hash, log)
    return step, params


def restore_chosen(directory: Path, params, config_hash: str = "", log: Log | None = None, *,
                   which: str = "latest", best_metric: str | None = None,
                   best_mode: str = "min") -> tuple[int, object, str]:
    """``(step, params, which_used)`` of a checkpoint under ``directory``, shaped (and sharded)
    like ``params``.

    ``which="latest"``: the newest readable step. ``which="best"``: the step whose validation
    metric ``best_metric`` is best; when no step was validated, the latest (``which_used`` says
    which one was read). A damaged step (the best one included) falls back to the next newest;
    ``ValueError`` when every step is damaged.
    """
    if which not in CHECKPOINT_CHOICES:
        raise ValueError(f"eval.checkpoint={which!r}; use one of {CHECKPOINT_CHOICES}")
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"no checkpoints under {directory}; train first with `sidjax "
                                "train`")
    mngr = manager(directory, 1, best_metric if which == "best" else None, best_mode,
                   create=False)
    try:
        steps = sorted(mngr.all_steps(), reverse=True)
        used = "latest"
        best = mngr.best_step() if which == "best" else None
        if best is not None and metric_getter(best_metric, best_mode)(
                mngr.metrics(best)) not in (math.inf, -math.inf):
            steps = [best] + [s for s in steps if s != best]
            used = "best"
        restored = _restore_first_good(mngr, steps, {"params": params}, config_hash, log)
        if restored is None:
            raise FileNotFoundError(
                f"no checkpoint under {directory}; train first with `sidjax train`")
        if restored.step != (steps[0] if steps else None):
            used = "latest"
        return restored.step, restored.items["params"], used
    finally:
        mngr.close()

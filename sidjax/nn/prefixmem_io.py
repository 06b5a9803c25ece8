"""Saving a pre-trained PrefixMem, loading it, and attaching it to another model.

:func:`save_pretrained` / :func:`load_pretrained` store PrefixMem parameters (e.g. those of
:func:`sidjax.train.pretrain_mem.pretrain`) with orbax, and :func:`attach` adapts them to a model
of another width (reusing the table, re-initialising the projections).

A checkpoint folder holds ``params/`` (orbax), ``config.json`` (the PrefixMem config) and
``pretrain_info.json``: the content hash of the SID table it was trained on, a fingerprint of its
parameters and the pre-training FLOPs. :func:`init_for_run` is what ``sidjax train
--prefixmem-init PATH`` (``train.prefixmem_init``) uses: it refuses a checkpoint made for another
SID table or table layout, attaches it, and records the fingerprint in the run folder
(``prefixmem_init.json``) so that the run hash changes with the init.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.config import PrefixMemConfig
from sidjax.files import write_json
from sidjax.nn import prefixmem as pm

# Fields that fix the table layout: a pre-trained table can be reused only if they match.
TABLE_FIELDS = ("codes_per_level", "orders", "exact_threshold", "hash_heads", "hash_table_size",
                "mem_dim")
PROJECTION_FIELDS = ("d_model", "fusion", "gate", "inject_layers")
INFO_FILE = "pretrain_info.json"  # in a pre-trained checkpoint folder
INIT_RECORD = "prefixmem_init.json"  # in a run folder that started from one


def params_fingerprint(params: dict[str, jax.Array]) -> str:
    """sha256 of the parameter names, shapes, dtypes and values (identifies a pre-trained init)."""
    h = hashlib.sha256()
    for name in sorted(params):
        value = np.ascontiguousarray(np.asarray(params[name]))
        h.update(f"{name}:{value.shape}:{value.dtype}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _cfg_from_json(data: dict, source: Path) -> PrefixMemConfig:
    names = {f.name for f in dataclasses.fields(PrefixMemConfig)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{source}: unknown PrefixMem config keys {sorted(unknown)}; valid: "
                         f"{sorted(names)}")
    return PrefixMemConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def save_pretrained(params: dict[str, jax.Array], cfg: PrefixMemConfig, directory,
                    info: dict | None = None) -> Path:
    """Writes ``params`` (orbax), ``config.json`` and ``pretrain_info.json`` to ``directory``
    atomically; returns it.

    ``info`` (JSON-ready) should hold ``sid_content_hash`` (``SIDTable.content_hash()`` of the SID
    table pre-trained on; :func:`init_for_run` refuses a checkpoint without it) and
    ``pretrain_flops``; ``params_sha256`` (:func:`params_fingerprint`) is added. Everything is
    written to a temporary sibling folder that is then renamed into place, so a reader sees
    either the old complete checkpoint or the new one.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / "params", params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    info = {**(info or {}), "params_sha256": params_fingerprint(params)}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_pretrained(directory) -> tuple[dict[str, jax.Array], PrefixMemConfig]:
    """``(params, cfg)`` written by :func:`save_pretrained` (params on the first device)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a PrefixMem checkpoint (write one with "
                                "`sidjax pretrain-mem` or save_pretrained)")
    try:
        cfg = _cfg_from_json(json.loads(cfg_path.read_text()), cfg_path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}:{err.lineno}: not valid JSON ({err.msg})") from err
    # Restored onto one device whatever mesh saved it; shard it afterwards (shard_pytree).
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
                            jax.eval_shape(lambda: pm.init(jax.random.key(0), cfg)))
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(directory / "params", abstract)
    finally:
        checkpointer.close()
    return dict(params), cfg


def read_info(directory) -> dict:
    """The ``pretrain_info.json`` of a pre-trained checkpoint (``{}`` when it has none)."""
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def attach(pretrained_params: dict[str, jax.Array], pretrained_cfg: PrefixMemConfig,
           target_cfg: PrefixMemConfig, key: jax.Array,
           fresh: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """PrefixMem params for ``target_cfg`` that reuse the pre-trained table.

    The table layout fields (:data:`TABLE_FIELDS`) must match; padding may differ (rows are
    copied, extra padding rows are zero). The projections and gate are reused when
    :data:`PROJECTION_FIELDS` match; otherwise (e.g. another ``d_model``) they are ``fresh``'s
    (e.g. the target model's own initial values) or, without it, re-initialised from ``key``.
    """
    differ = [f for f in TABLE_FIELDS if getattr(pretrained_cfg, f) != getattr(target_cfg, f)]
    if differ:
        detail = ", ".join(f"{f}: {getattr(pretrained_cfg, f)} vs {getattr(target_cfg, f)}"
                           for f in differ)
        raise ValueError(f"the pre-trained PrefixMem table does not fit the target config ({detail});"
                         " pre-train with the target's SID table and table settings")
    pm.check_config(target_cfg)
    lay = pm.layout(target_cfg)
    used = lay.tables[-1].offset + lay.tables[-1].size
    table = jnp.asarray(pretrained_params["table"])[:used].astype(target_cfg.param_dtype)
    table = jnp.pad(table, ((0, lay.num_rows - used), (0, 0)))
    same = all(getattr(pretrained_cfg, f) == getattr(target_cfg, f) for f in PROJECTION_FIELDS)
    if same:
        projections = {k: jnp.asarray(v) for k, v in pretrained_params.items() if k != "table"}
    elif fresh is not None:
        projections = {k: jnp.asarray(v) for k, v in fresh.items() if k != "table"}
    else:
        projections = pm.init_projections(key, target_cfg)
    return {"table": table, **projections}


def recorded_init(workdir) -> dict | None:
    """The ``prefixmem_init.json`` record of a run folder (None when the run has none)."""
    path = Path(workdir) / INIT_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def init_for_run(path, target_cfg: PrefixMemConfig, fresh: dict[str, jax.Array],
                 sid_content_hash: str, workdir, *, key: jax.Array | None = None,
                 log=None) -> tuple[dict[str, jax.Array] | None, dict]:
    """Loads the pre-trained PrefixMem at ``path`` for a run in ``workdir``.

    Refuses (``ValueError``) a checkpoint without a recorded SID table hash, one made for another
    SID table than ``sid_content_hash``, or one whose table layout differs from ``target_cfg``.
    Returns ``(params, record)``: :func:`attach`'s params (projections from ``fresh``, the model's
    own, when widths differ) and ``{"path", "fingerprint", "sid_content_hash",
    "pretrain_flops"}``, also written to ``workdir/prefixmem_init.json``. When ``path`` is gone
    but ``workdir`` has a record (a run that is resumed from its own checkpoints), returns
    ``(None, that record)``.
    """
    path = Path(path).absolute()
    if not (path / "config.json").is_file():
        record = recorded_init(workdir)
        if record is not None and (Path(workdir) / "checkpoints").is_dir():
            if log is not None:
                log(f"pre-trained PrefixMem {path} not found; resuming with the init recorded in "
                    f"{Path(workdir) / INIT_RECORD} ({record['fingerprint'][:12]})")
            return None, record
        raise FileNotFoundError(f"train.prefixmem_init={path}: not a PrefixMem checkpoint (no "
                                "config.json); write one with `sidjax pretrain-mem --workdir W` "
                                "and pass W/prefixmem_pretrained")
    info = read_info(path)
    if not info.get("sid_content_hash"):
        raise ValueError(f"{path / INFO_FILE}: no sid_content_hash recorded, so the SID table it "
                         "was pre-trained on is unknown; pre-train it again with `sidjax "
                         "pretrain-mem` (it records the hash)")
    if info["sid_content_hash"] != sid_content_hash:
        raise ValueError(f"{path} was pre-trained on another SID table (content hash "
                         f"{info['sid_content_hash'][:12]} != this run's {sid_content_hash[:12]}); "
                         "pre-train on this run's SIDs (same data and sid.* settings, or copy its "
                         "sids.npz into the pre-training workdir)")
    params, cfg = load_pretrained(path)
    key = jax.random.key(0) if key is None else key
    try:
        attached = attach(params, cfg, target_cfg, key, fresh=fresh)
    except ValueError as err:
        raise ValueError(f"train.prefixmem_init={path}: {err}") from err
    record = {"path": str(path), "fingerprint": info.get("params_sha256")
              or params_fingerprint(params), "sid_content_hash": sid_content_hash,
              "pretrain_flops": info.get("pretrain_flops")}
    Path(workdir).mkdir(parents=True, exist_ok=True)
    write_json(Path(workdir) / INIT_RECORD, record, sort_keys=True)
    if log is not None:
        reused = "table and projections" if all(
            getattr(cfg, f) == getattr(target_cfg, f) for f in PROJECTION_FIELDS) else \
            "table (projections: the model's own initialisation, widths differ)"
        log(f"PrefixMem initialised from {path}: {reused}; fingerprint {record['fingerprint'][:12]}")
    return attached, record

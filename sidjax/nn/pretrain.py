"""Pre-training PrefixMem on its own (no decoder), saving it, and attaching it to another model.

From the SID table, item content vectors and training interactions only, the memory output of
each item's level-l prefix (``apply`` on the item's SID codes, ungated) is trained with

* next-code prediction: a per-level linear head predicts code l+1 of the item from the output at
  level l (l < L). Items are drawn with probability proportional to their training count plus one,
  so the loss of a prefix is its popularity-weighted next-code cross-entropy;
* content alignment: a linear head maps the output at level l to the content space, trained with a
  cosine loss against the mean content vector of all items under that prefix;
* optional co-engagement contrast: items consumed one after the other in a training sequence are
  positives in an in-batch InfoNCE over mean-over-levels memory outputs.

The heads are discarded; :func:`pretrain` returns PrefixMem parameters usable by
``prefixmem.apply``. :func:`save_pretrained` / :func:`load_pretrained` store them with orbax, and
:func:`attach` adapts them to a model of another width (reusing the table, re-initialising the
projections). ``sidjax pretrain-mem --config X --workdir DIR`` (:mod:`sidjax.cli.pretrain`) runs
it on a config's data.

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
import optax

from sidjax.config import PrefixMemConfig
from sidjax.nn import prefixmem as pm

# Fields that fix the table layout: a pre-trained table can be reused only if they match.
TABLE_FIELDS = ("codes_per_level", "orders", "exact_threshold", "hash_heads", "hash_table_size",
                "mem_dim")
PROJECTION_FIELDS = ("d_model", "fusion", "gate", "inject_layers")
INFO_FILE = "pretrain_info.json"  # in a pre-trained checkpoint folder
INIT_RECORD = "prefixmem_init.json"  # in a run folder that started from one


def prefix_means(sid_codes: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """``[N, L, C]``: for item i and level l, the mean content vector of items sharing its prefix."""
    codes = np.asarray(sid_codes)
    vectors = np.asarray(item_vectors, np.float64)
    out = np.empty((codes.shape[0], codes.shape[1], vectors.shape[1]), np.float32)
    for level in range(1, codes.shape[1] + 1):
        _, group = np.unique(codes[:, :level], axis=0, return_inverse=True)
        group = group.reshape(-1)
        sums = np.zeros((group.max() + 1, vectors.shape[1]))
        np.add.at(sums, group, vectors)
        out[:, level - 1] = (sums / np.bincount(group)[:, None])[group]
    return out


def co_engaged_pairs(sequences, num_items: int) -> np.ndarray:
    """``[P, 2]`` int32 pairs of consecutive distinct items of the training sequences."""
    pairs = [np.stack([s[:-1], s[1:]], axis=1) for s in sequences if len(s) > 1]
    if not pairs:
        return np.zeros((0, 2), np.int32)
    pairs = np.concatenate(pairs).astype(np.int32)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_items):
        raise ValueError(f"sequences hold item ids outside [0, {num_items})")
    return pairs


def _check_inputs(cfg: PrefixMemConfig, codes: np.ndarray, vectors: np.ndarray,
                  counts: np.ndarray) -> None:
    pm.check_config(cfg)
    if codes.ndim != 2 or codes.shape[1] != len(cfg.codes_per_level):
        raise ValueError(f"sid_codes has shape {codes.shape}; expected [items, "
                         f"{len(cfg.codes_per_level)}] for prefixmem.codes_per_level "
                         f"{cfg.codes_per_level}")
    if np.any(codes < 0) or np.any(codes >= np.asarray(cfg.codes_per_level)):
        raise ValueError("sid_codes out of range of prefixmem.codes_per_level "
                         f"{cfg.codes_per_level}; set it from the SID table")
    if vectors.shape[0] != codes.shape[0] or counts.shape != (codes.shape[0],):
        raise ValueError(f"item_vectors {vectors.shape} and item_counts {counts.shape} must have "
                         f"one row per item ({codes.shape[0]})")


def init_heads(key: jax.Array, cfg: PrefixMemConfig, content_dim: int) -> dict[str, jax.Array]:
    """Pre-training heads: next-code ``[L-1, d, Kmax]`` (+ bias) and content ``[L, d, C]``."""
    k_next, k_align = jax.random.split(key)
    levels, d = len(cfg.codes_per_level), cfg.d_model
    kmax = max(cfg.codes_per_level[1:], default=1)
    return {
        "next": jax.random.normal(k_next, (max(levels - 1, 1), d, kmax)) / np.sqrt(d),
        "next_bias": jnp.zeros((max(levels - 1, 1), kmax)),
        "align": jax.random.normal(k_align, (levels, d, content_dim)) / np.sqrt(d),
    }


def _item_memory(params, codes, cfg, mesh):
    """Memory output ``[B, L, d]`` of each item's prefixes (ungated)."""
    levels = jnp.broadcast_to(jnp.arange(1, codes.shape[-1] + 1, dtype=jnp.int32), codes.shape)
    return pm.apply(params, codes, levels, cfg=cfg, mesh=mesh)


def pretrain_losses(params, heads, codes, means, pair_codes, *, cfg: PrefixMemConfig,
                    contrastive_weight: float, align_weight: float, temperature: float,
                    mesh=None) -> tuple[jax.Array, dict]:
    """Total loss and its parts for items ``codes [B, L]`` with prefix means ``[B, L, C]``.

    ``pair_codes [2, P, L]`` are the SIDs of co-engaged pairs (ignored at weight 0).
    """
    out = _item_memory(params, codes, cfg, mesh)  # B L D
    metrics = {}
    total = 0.0
    num_levels = codes.shape[-1]
    if num_levels > 1:
        logits = jnp.einsum("BLD,LDK->BLK", out[:, :-1], heads["next"]) + heads["next_bias"]
        valid = jnp.arange(logits.shape[-1]) < jnp.asarray(cfg.codes_per_level[1:])[:, None]
        logits = jnp.where(valid, logits, -1e9)
        target = codes[:, 1:]
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[..., None], -1)[
            ..., 0]
        metrics["next_code"] = jnp.mean(nll)
        metrics["next_code_acc"] = jnp.mean(jnp.argmax(logits, -1) == target)
        total = total + metrics["next_code"]
    pred = jnp.einsum("BLD,LDC->BLC", out, heads["align"])
    cos = jnp.sum(pred * means, -1) * jax.lax.rsqrt(
        jnp.sum(pred * pred, -1) * jnp.sum(means * means, -1) + 1e-12)
    metrics["align"] = jnp.mean(1.0 - cos)
    total = total + align_weight * metrics["align"]
    if contrastive_weight > 0:
        z = jnp.mean(_item_memory(params, pair_codes.reshape(-1, num_levels), cfg, mesh), axis=1)
        z = z * jax.lax.rsqrt(jnp.sum(z * z, -1, keepdims=True) + 1e-12)
        za, zb = z.reshape(2, -1, z.shape[-1])
        logits = jnp.einsum("PD,QD->PQ", za, zb) / temperature
        labels = jnp.arange(logits.shape[0])
        nce = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                     + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
        metrics["contrastive"] = nce
        total = total + contrastive_weight * nce
    metrics["loss"] = total
    return total, metrics


def pretrain(cfg: PrefixMemConfig, sid_codes, item_vectors, item_counts, *, steps: int,
             lr: float = 3e-3, seed: int = 0, batch_size: int = 256, sequences=None,
             contrastive_weight: float = 0.1, align_weight: float = 1.0,
             temperature: float = 0.1, log_every: int = 10, mesh=None,
             progress=None) -> tuple[dict[str, jax.Array], list[dict]]:
    """Pre-trains PrefixMem parameters without a decoder.

    Args:
      cfg: PrefixMem config with ``codes_per_level`` (of the SID table) and ``d_model`` set.
      sid_codes: ``[N, L]`` SID codes (``SIDTable.codes``).
      item_vectors: ``[N, C]`` content vectors.
      item_counts: ``[N]`` training interaction counts (popularity weights; +1 smoothing).
      steps, lr, seed, batch_size: Adam steps, learning rate, seed, items per step.
      sequences: training item sequences for the co-engagement loss (``None``: no such loss).
      contrastive_weight, align_weight, temperature: loss weights and InfoNCE temperature.
      log_every: steps between entries of the metrics history (the last step is always logged).
      mesh: optional mesh; the table is then read row-sharded (see ``prefixmem.apply``).
      progress: optional ``callable(step_done, metrics_or_None)``.

    Returns:
      ``(params, history)``: PrefixMem params (as ``prefixmem.init`` makes for ``cfg``) and a list
      of ``{"step", "loss", "next_code", "next_code_acc", "align"[, "contrastive"]}`` floats.
    """
    codes = np.asarray(sid_codes, np.int32)
    vectors = np.asarray(item_vectors, np.float32)
    counts = np.asarray(item_counts, np.float64)
    _check_inputs(cfg, codes, vectors, counts)
    pairs = co_engaged_pairs(sequences, len(codes)) if sequences is not None else None
    use_pairs = pairs is not None and len(pairs) > 0 and contrastive_weight > 0
    weight = contrastive_weight if use_pairs else 0.0

    key = jax.random.key(seed)
    k_mem, k_heads, k_data = jax.random.split(key, 3)
    state = {"memory": pm.init(k_mem, cfg), "heads": init_heads(k_heads, cfg, vectors.shape[1])}
    tx = optax.adam(lr)
    opt_state = tx.init(state)
    codes_j, means_j = jnp.asarray(codes), jnp.asarray(prefix_means(codes, vectors))
    probs = jnp.asarray((counts + 1.0) / np.sum(counts + 1.0), jnp.float32)
    pairs_j = jnp.asarray(pairs if use_pairs else np.zeros((1, 2), np.int32))

    def step_fn(state, opt_state, step):
        k_items, k_pairs = jax.random.split(jax.random.fold_in(k_data, step))
        items = jax.random.choice(k_items, codes_j.shape[0], (batch_size,), p=probs)
        picked = jax.random.randint(k_pairs, (batch_size,), 0, pairs_j.shape[0])
        pair_codes = codes_j[pairs_j[picked].T]  # 2 B L

        def loss_fn(s):
            return pretrain_losses(s["memory"], s["heads"], codes_j[items], means_j[items],
                                   pair_codes, cfg=cfg, contrastive_weight=weight,
                                   align_weight=align_weight, temperature=temperature, mesh=mesh)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, metrics

    step_fn = jax.jit(step_fn, donate_argnums=(0, 1))
    history = []
    for step in range(steps):
        state, opt_state, metrics = step_fn(state, opt_state, jnp.int32(step))
        done = step + 1
        log = done % max(1, log_every) == 0 or done == steps
        if log:
            entry = {"step": done, **{k: float(v) for k, v in metrics.items()}}
            if not np.isfinite(entry["loss"]):
                raise FloatingPointError(f"pre-training loss is {entry['loss']} at step {done}; "
                                         "lower the learning rate")
            history.append(entry)
        if progress is not None:
            progress(done, history[-1] if log else None)
    return state["memory"], history


def pretrain_flops(cfg: PrefixMemConfig, *, steps: int, batch_size: int, content_dim: int,
                   contrastive: bool) -> float:
    """Forward+backward FLOPs of :func:`pretrain` (3 x forward; a multiply-add is 2; table
    lookups count 0, as in :mod:`sidjax.eval.compute`).

    Per item and step: the ungated value projection at each of the L levels, the next-code head
    at L-1 levels (``d x max K``), the content head at L levels (``d x C``); with the contrastive
    loss, the projections of the ``2 B`` paired items and the ``B x B`` similarity matrix.
    """
    levels, d = len(cfg.codes_per_level), cfg.d_model
    memory = pm.flops_per_token(dataclasses.replace(cfg, gate=False, inject_layers=()))
    kmax = max(cfg.codes_per_level[1:], default=0)
    per_item = levels * memory + (levels - 1) * 2 * d * kmax + levels * 2 * d * content_dim
    forward = batch_size * per_item
    if contrastive:
        forward += 2 * batch_size * levels * memory + 2 * batch_size * batch_size * d
    return 3.0 * forward * steps


# ------------------------------------------------------------------------------ save / attach


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


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
    _write_json(Path(workdir) / INIT_RECORD, record)
    if log is not None:
        reused = "table and projections" if all(
            getattr(cfg, f) == getattr(target_cfg, f) for f in PROJECTION_FIELDS) else \
            "table (projections: the model's own initialisation, widths differ)"
        log(f"PrefixMem initialised from {path}: {reused}; fingerprint {record['fingerprint'][:12]}")
    return attached, record

"""Pre-training PrefixMem on its own (no decoder).

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
``prefixmem.apply``. :mod:`sidjax.nn.prefixmem_io` saves, loads and attaches them (to a model of
another width too). ``sidjax pretrain-mem --config X --workdir DIR`` (:mod:`sidjax.cli.pretrain`)
runs it on a config's data.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sidjax.config import PrefixMemConfig
from sidjax.nn import prefixmem as pm


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

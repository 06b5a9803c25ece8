"""Ranking for item-ID models (SASRec): score every item at once, plus SID-level views of the scores.

An ID model has no SID decoding, but its item distribution induces one over SID codes: the
probability of code c at level l given the target's first l - 1 codes is the mass of the items under
that prefix. :func:`top_items_and_levels` reports the argmax of that induced distribution, so the
ID baseline gets the same teacher-forced per-level accuracy as the SID models.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "k", "codes_per_level"))
def top_items_and_levels(graphdef, state, items, sid_codes, target_codes, *, k: int,
                         codes_per_level: tuple[int, ...]):
    """Top-``k`` items and SID-level predictions for left-padded item histories ``[B, T]``.

    Args:
      graphdef, state: ``nnx.split`` of a model with ``hidden(items)`` and ``item_logits(states)``
        (:class:`sidjax.nn.sasrec.SASRec`).
      items: int32 ``[B, T]`` item tokens (item index + 1, 0 = PAD).
      sid_codes: int32 ``[N, L]`` SID of every item.
      target_codes: int32 ``[B, L]`` SID of each user's target.
      k: list length.
      codes_per_level: size of each level's code space.

    Returns ``(top [B, k] item indices, scores [B, k] log-probabilities, level_pred [B, L])`` where
    ``level_pred[:, l]`` is the code of level l + 1 with the most probability mass among items that
    share the target's first l codes.
    """
    model = nnx.merge(graphdef, state)
    logits = model.item_logits(model.hidden(items)[:, -1])  # B N
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    scores, top = jax.lax.top_k(logp, k)
    probs = jnp.exp(logp)
    same_prefix = jnp.ones(probs.shape, bool)
    preds = []
    for level, num_codes in enumerate(codes_per_level):
        codes = sid_codes[:, level]
        mass = jax.ops.segment_sum(jnp.where(same_prefix, probs, 0.0).T, codes,
                                   num_segments=num_codes).T  # B K
        preds.append(jnp.argmax(mass, axis=-1))
        same_prefix = same_prefix & (codes[None, :] == target_codes[:, level:level + 1])
    return top.astype(jnp.int32), scores, jnp.stack(preds, axis=1).astype(jnp.int32)


def rank_items(model, histories_items: np.ndarray, sid_codes: np.ndarray, target_items: np.ndarray,
               *, k: int, batch_size: int = 256, progress=None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`top_items_and_levels` over all users in batches (zero-padded to a fixed size).

    ``histories_items`` are item tokens ``[U, T]`` (:func:`sidjax.data.pipeline.encode_item_ids`),
    ``sid_codes`` the ``[N, L]`` SID table, ``target_items`` the ``[U]`` target item indices.

    Returns NumPy ``(top [U, k], scores [U, k], level_pred [U, L])``.
    """
    graphdef, state = nnx.split(model)
    codes_dev = jnp.asarray(sid_codes, jnp.int32)
    per_level = tuple(int(c) + 1 for c in np.asarray(sid_codes).max(axis=0))
    target_codes = np.asarray(sid_codes)[np.asarray(target_items)]
    n = len(histories_items)
    out = ([], [], [])
    for start in range(0, n, batch_size):
        chunk = histories_items[start:start + batch_size]
        tc = target_codes[start:start + batch_size]
        keep = len(chunk)
        pad = batch_size - keep if n > batch_size else 0
        chunk = np.pad(chunk, ((0, pad), (0, 0)))
        tc = np.pad(tc, ((0, pad), (0, 0)))
        res = top_items_and_levels(graphdef, state, jnp.asarray(chunk), codes_dev, jnp.asarray(tc),
                                   k=k, codes_per_level=per_level)
        for acc, value in zip(out, res):
            acc.append(np.asarray(value)[:keep])
        if progress is not None:
            progress(keep)
    return tuple(np.concatenate(parts) for parts in out)

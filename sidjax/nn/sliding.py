"""Sliding-window causal attention for the decoder's BFTS layers (:mod:`sidjax.nn.decoder`): the
mask of a window, and the blocked computation that never forms the ``T x S`` scores.

Shapes as in the decoder: ``B`` rows, ``T`` queries, ``K`` kv heads, ``G`` query heads per kv
head, ``H`` head width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -1e9  # the score of a masked key (finite: a fully masked row stays finite)


def sliding_window_mask(queries: int, keys: int, window: int, offset=0) -> jax.Array:
    """bool ``[queries, keys]``: query ``t`` (key slot ``t + offset``; ``offset`` may be traced)
    sees keys ``t+offset-w+1 .. t+offset`` (causal; ``window`` 0 = every earlier key)."""
    query_slot = offset + jnp.arange(queries)[:, None]
    key_slot = jnp.arange(keys)[None, :]
    mask = query_slot >= key_slot
    return mask & (query_slot - key_slot < window) if window else mask


MIN_BLOCK = 16  # smallest query block of the blocked sliding-window attention


def blocked_sliding_attention(q, k, v, key_valid, window: int, offset: int = 0,
                              segment_ids=None):
    """Sliding-window causal attention computed block by block: ``T x 2c`` scores, not ``T x S``.

    Args:
      q: ``[B, T, K, G, H]`` queries; query ``t`` sits at key slot ``t + offset``.
      k, v: ``[B, T + offset, K, H]`` (``offset`` keys before the first query's, e.g. a cache).
      key_valid: bool ``[B, T + offset]``.
      window: ``w >= 1``; query ``t`` attends to key slots ``t+offset-w+1 .. t+offset``.
      offset: ``0 <= offset <= window``.
      segment_ids: ``[B, T]`` with ``offset`` 0 only: keys of the query's segment only.

    Returns the per-head outputs ``[B, T, K, G, H]``. Queries are cut into ``nb`` blocks of
    ``c = max(w, 16)``; the keys, shifted so that query ``t`` sits at padded key ``t + w``, into
    ``nb + 1`` blocks of ``c``: query block ``b`` reads key blocks ``b`` and ``b + 1``.
    """
    b, t, kv_heads, g, h = q.shape
    c = max(window, MIN_BLOCK)
    nb = -(-t // c)
    left, right = window - offset, (nb + 1) * c - t - window

    def pairs(a, fill=0):
        """Key-side ``a [B, T + offset, ...]`` as ``[B, nb, 2c, ...]`` (key blocks b and b + 1)."""
        a = jnp.pad(a, [(0, 0), (left, right)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
        a = a.reshape((b, nb + 1, c) + a.shape[2:])
        return jnp.concatenate([a[:, :-1], a[:, 1:]], axis=2)

    qb = jnp.pad(q, [(0, 0), (0, nb * c - t)] + [(0, 0)] * 3).reshape(b, nb, c, kv_heads, g, h)
    i, r = jnp.arange(c)[:, None], jnp.arange(2 * c)[None, :]
    mask = ((r > i) & (r <= i + window))[None, None] & pairs(key_valid, False)[:, :, None, :]
    if segment_ids is not None:
        qseg = jnp.pad(segment_ids, ((0, 0), (0, nb * c - t))).reshape(b, nb, c)
        mask = mask & (qseg[..., :, None] == pairs(segment_ids, -1)[..., None, :])
    scores = jnp.einsum("BNiKGH,BNrKH->BNKGir", qb, pairs(k)) / jnp.sqrt(h).astype(q.dtype)
    probs = jax.nn.softmax(jnp.where(mask[:, :, None, None], scores, MASKED), axis=-1)
    out = jnp.einsum("BNKGir,BNrKH->BNiKGH", probs, pairs(v))
    return out.reshape(b, nb * c, kv_heads, g, h)[:, :t]

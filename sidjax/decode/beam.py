"""Trie-constrained beam search with a KV cache: every returned SID is a real item.

The history is prefilled once; then exactly ``L - 1`` decode steps run over the beams only. At each
level the candidates of a beam are the children of its trie node, scored by the level-restricted
log-softmax of the model; beams are ranked by summed log-probability.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sidjax.data.pipeline import SIDVocab
from sidjax.sid.trie import SIDTrie

NEG = -1e30


def trie_arrays(trie: SIDTrie) -> dict:
    """The trie's padded child arrays as device arrays (a pytree for ``jit``)."""
    return {"child_codes": tuple(jnp.asarray(c) for c in trie.child_codes),
            "child_nodes": tuple(jnp.asarray(c) for c in trie.child_nodes),
            "leaf_item": jnp.asarray(trie.leaf_item)}


def level_log_probs(logits: jax.Array, vocab: SIDVocab, level: int) -> jax.Array:
    """Log-softmax over the codes of ``level`` (1-based): ``[..., K_level]``."""
    start = int(vocab.level_offsets[level - 1])
    return jax.nn.log_softmax(logits[..., start:start + vocab.codes_per_level[level - 1]], axis=-1)


def _expand(child_codes, child_nodes, logp, scores, beam):
    """Keeps the top ``beam`` (parent beam, child) pairs of ``[B, P, C]`` candidates.

    Returns ``(parent [B, beam], codes [B, beam], nodes [B, beam], scores [B, beam])``.
    """
    valid = child_codes >= 0
    cand = jnp.take_along_axis(logp, jnp.maximum(child_codes, 0), axis=-1)
    total = jnp.where(valid, scores[..., None] + cand, NEG)
    b, p, c = total.shape
    flat = total.reshape(b, p * c)
    if p * c < beam:
        flat = jnp.pad(flat, ((0, 0), (0, beam - p * c)), constant_values=2 * NEG)
    new_scores, idx = jax.lax.top_k(flat, beam)
    idx = jnp.minimum(idx, p * c - 1)
    pick = lambda a: jnp.take_along_axis(a.reshape(b, p * c), idx, axis=1)
    return idx // c, pick(child_codes), pick(child_nodes), new_scores


def _tile_cache(cache: dict, beam: int) -> dict:
    """Repeats every sequence's cache ``beam`` times (batch axis: 1 for k/v, 0 otherwise)."""
    out = {k: jnp.repeat(cache[k], beam, axis=1) for k in ("k", "v")}
    out.update({k: jnp.repeat(cache[k], beam, axis=0) for k in ("valid", "next_position")})
    out["index"] = cache["index"]
    return out


def _reorder_cache(cache: dict, rows: jax.Array) -> dict:
    """Gathers the cache rows of the surviving beams (``rows`` index the flattened B*beam axis)."""
    out = {k: jnp.take(cache[k], rows, axis=1) for k in ("k", "v")}
    out.update({k: jnp.take(cache[k], rows, axis=0) for k in ("valid", "next_position")})
    out["index"] = cache["index"]
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab", "beam"))
def beam_search(graphdef, state, trie: dict, tokens, codes, levels, *, vocab: SIDVocab,
                beam: int):
    """Top-``beam`` items per history. Returns ``(items [B, beam] int32, scores [B, beam])``.

    ``graphdef, state`` come from ``nnx.split(model)``; ``trie`` from :func:`trie_arrays`;
    ``tokens, codes, levels`` are left-padded encoded histories (``eval_arrays``). Where the
    catalog has fewer than ``beam`` items, the extra slots have item -1 and a score below -1e29.
    """
    model = nnx.merge(graphdef, state)
    num_levels, batch = vocab.num_levels, tokens.shape[0]
    logits, cache = model.prefill(tokens, codes, levels, extra=num_levels - 1)
    root = jnp.zeros((batch, 1), jnp.int32)
    _, step_codes, nodes, scores = _expand(
        trie["child_codes"][0][root], trie["child_nodes"][0][root],
        level_log_probs(logits, vocab, 1)[:, None, :], jnp.zeros((batch, 1)), beam)
    sid = step_codes[..., None]
    cache = _tile_cache(cache, beam)
    offsets = jnp.asarray(vocab.level_offsets)
    levels_window = jnp.arange(1, num_levels + 1, dtype=jnp.int32)
    for depth in range(1, num_levels):
        flat_codes = sid.reshape(batch * beam, depth)
        window_levels = jnp.broadcast_to(levels_window[:depth], flat_codes.shape)
        logits, cache = model.decode_step(offsets[:depth] + flat_codes, flat_codes,
                                          window_levels, cache)
        logp = level_log_probs(logits, vocab, depth + 1).reshape(batch, beam, -1)
        parent, step_codes, nodes, scores = _expand(
            trie["child_codes"][depth][nodes], trie["child_nodes"][depth][nodes], logp, scores,
            beam)
        sid = jnp.concatenate([jnp.take_along_axis(sid, parent[..., None], axis=1),
                               step_codes[..., None]], axis=-1)
        cache = _reorder_cache(cache, (jnp.arange(batch)[:, None] * beam + parent).reshape(-1))
    items = jnp.where(scores > NEG / 10, trie["leaf_item"][jnp.maximum(nodes, 0)], -1)
    return items, scores


def recommend(model, trie: SIDTrie, arrays: dict[str, np.ndarray], vocab: SIDVocab, *,
              beam: int, batch_size: int = 256, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Beam search over all histories in ``arrays`` (from ``eval_arrays``), in batches.

    Returns ``(items [U, beam], scores [U, beam])`` as NumPy arrays, best first.
    """
    graphdef, state = nnx.split(model)
    tdev = trie_arrays(trie)
    n = len(arrays["tokens"])
    items, scores = [], []
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in arrays.items()}
        pad = batch_size - len(chunk["tokens"]) if n > batch_size else 0
        chunk = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in chunk.items()}
        it, sc = beam_search(graphdef, state, tdev, chunk["tokens"], chunk["codes"],
                             chunk["levels"], vocab=vocab, beam=beam)
        keep = len(chunk["tokens"]) - pad
        items.append(np.asarray(it)[:keep])
        scores.append(np.asarray(sc)[:keep])
        if progress is not None:
            progress(keep)
    return np.concatenate(items), np.concatenate(scores)

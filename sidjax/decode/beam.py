"""Trie-constrained beam search with a split KV cache: every returned SID is a real item.

The history of each user is prefilled ONCE into a history cache (``[B, T]`` keys/values, shared by
all beams of that user). Its last position gives the level-1 distribution; then ``L - 1`` decode
steps run over the beams only, feeding the beams' level-1 .. level-(L-1) tokens (the last level's
token is never fed: nothing is predicted after it). Each step's new token attends to the shared
history keys and to the beam's own generated keys (a small ``[B, K, <= L-1]`` cache), so reordering
beams gathers only that small cache. PrefixMem hashes the new token's n-grams from the beam's
generated prefix (:func:`sidjax.nn.prefixmem.step_rows`) and gathers that one position's rows.

At each level the candidates of a beam are the children of its trie node, scored by the
level-restricted log-softmax of the model; beams are ranked by summed log-probability. The width can
differ per level (``beam=(w_1, ..., w_L)``); the result holds ``w_L`` items per user.
:func:`greedy_decode` is the beam-1 path without top-k or reordering; :func:`beam_search_naive`
re-encodes the whole history at every step (the reference the benchmark compares against).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sidjax.sid.trie import SIDTrie
from sidjax.tokens import SIDVocab

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


def beam_widths(beam: int | tuple[int, ...], num_levels: int) -> tuple[int, ...]:
    """The per-level beam widths: ``beam`` repeated, or a tuple of ``num_levels`` positive ints."""
    widths = (beam,) * num_levels if isinstance(beam, int) else tuple(int(b) for b in beam)
    if len(widths) != num_levels or min(widths) < 1:
        raise ValueError(f"beam must be a positive int or {num_levels} positive ints (one per SID "
                         f"level), got {beam!r}")
    return widths


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


def _window(sid: jax.Array, vocab: SIDVocab) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Token, code and level windows ``[..., d]`` of generated prefixes ``sid [..., d]``."""
    depth = sid.shape[-1]
    tokens = jnp.asarray(vocab.level_offsets[:depth]) + sid
    levels = jnp.broadcast_to(jnp.arange(1, depth + 1, dtype=jnp.int32), sid.shape)
    return tokens, sid, levels


def _reorder(generated: dict, parent: jax.Array) -> dict:
    """The per-beam cache ``[layers, B, K, G, N, H]`` of the surviving beams ``parent [B, K']``."""
    idx = parent[None, :, :, None, None, None]
    return {k: jnp.take_along_axis(v, idx, axis=2) for k, v in generated.items()}


def _finish(trie, nodes, scores):
    return jnp.where(scores > NEG / 10, trie["leaf_item"][jnp.maximum(nodes, 0)], -1), scores


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab", "beam"))
def beam_search(graphdef, state, trie: dict, tokens, codes, levels, *, vocab: SIDVocab,
                beam: int | tuple[int, ...]):
    """Top items per history. Returns ``(items [B, w_L] int32, scores [B, w_L])``, best first.

    ``graphdef, state`` come from ``nnx.split(model)``; ``trie`` from :func:`trie_arrays`;
    ``tokens, codes, levels`` are left-padded encoded histories (``eval_arrays``); ``beam`` is one
    width or one per level (:func:`beam_widths`). Where fewer than ``w_L`` items are reachable, the
    extra slots have item -1 and a score below -1e29.
    """
    model = nnx.merge(graphdef, state)
    num_levels, batch = vocab.num_levels, tokens.shape[0]
    widths = beam_widths(beam, num_levels)
    logits, history = model.prefill(tokens, codes, levels)
    root = jnp.zeros((batch, 1), jnp.int32)
    _, step_codes, nodes, scores = _expand(
        trie["child_codes"][0][root], trie["child_nodes"][0][root],
        level_log_probs(logits, vocab, 1)[:, None, :], jnp.zeros((batch, 1)), widths[0])
    sid, generated = step_codes[..., None], None
    for depth in range(1, num_levels):
        logits, generated = model.beam_step(*_window(sid, vocab), history, generated, depth)
        parent, step_codes, nodes, scores = _expand(
            trie["child_codes"][depth][nodes], trie["child_nodes"][depth][nodes],
            level_log_probs(logits, vocab, depth + 1), scores, widths[depth])
        sid = jnp.concatenate([jnp.take_along_axis(sid, parent[..., None], axis=1),
                               step_codes[..., None]], axis=-1)
        if depth < num_levels - 1:
            generated = _reorder(generated, parent)
    return _finish(trie, nodes, scores)


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab", "constrained"))
def greedy_decode(graphdef, state, trie: dict, tokens, codes, levels, *, vocab: SIDVocab,
                  constrained: bool = True):
    """Greedy (beam 1) decoding of one SID per history, with the same split cache.

    With ``constrained`` each level takes the most likely code among the trie children of the prefix
    (the result is always a real item); without it, the most likely code of the level whatever the
    trie says (the paper's "greedy decode of the full SID").

    Returns ``(codes [B, L] int32, items [B] int32 (-1: not an item), scores [B])``, ``scores`` the
    summed level log-probabilities of the decoded codes.
    """
    model = nnx.merge(graphdef, state)
    num_levels, batch = vocab.num_levels, tokens.shape[0]
    logits, history = model.prefill(tokens, codes, levels)
    logits = logits[:, None]  # B 1 V: one "beam"
    nodes = jnp.zeros((batch, 1), jnp.int32)
    scores = jnp.zeros((batch, 1))
    sid, generated = jnp.zeros((batch, 1, 0), jnp.int32), None
    for depth in range(num_levels):
        if depth:
            logits, generated = model.beam_step(*_window(sid, vocab), history, generated, depth)
        logp = level_log_probs(logits, vocab, depth + 1)  # B 1 K
        child_codes = trie["child_codes"][depth][jnp.maximum(nodes, 0)]  # B 1 C
        child_ok = (child_codes >= 0) & (nodes >= 0)[..., None]
        if constrained:
            cand = jnp.take_along_axis(logp, jnp.maximum(child_codes, 0), axis=-1)
            slot = jnp.argmax(jnp.where(child_ok, cand, NEG), axis=-1)[..., None]
            code = jnp.take_along_axis(child_codes, slot, axis=-1)[..., 0]
        else:
            code = jnp.argmax(logp, axis=-1).astype(jnp.int32)
            hit = child_ok & (child_codes == code[..., None])
            slot = jnp.argmax(hit, axis=-1)[..., None]
            nodes = jnp.where(jnp.any(hit, axis=-1), nodes, -1)
        step_nodes = jnp.take_along_axis(trie["child_nodes"][depth][jnp.maximum(nodes, 0)], slot,
                                         axis=-1)[..., 0]
        nodes = jnp.where(nodes >= 0, step_nodes, -1)
        scores = scores + jnp.take_along_axis(logp, code[..., None], axis=-1)[..., 0]
        sid = jnp.concatenate([sid, code[..., None]], axis=-1)
    items = jnp.where(nodes >= 0, trie["leaf_item"][jnp.maximum(nodes, 0)], -1)
    return sid[:, 0], items[:, 0], scores[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab", "beam"))
def beam_search_naive(graphdef, state, trie: dict, tokens, codes, levels, *, vocab: SIDVocab,
                      beam: int | tuple[int, ...]):
    """:func:`beam_search` without a cache: every step re-encodes history + prefix for every beam.

    The slow reference (what peers ship); same inputs and outputs as :func:`beam_search`.
    """
    model = nnx.merge(graphdef, state)
    num_levels, batch = vocab.num_levels, tokens.shape[0]
    widths = beam_widths(beam, num_levels)
    root = jnp.zeros((batch, 1), jnp.int32)
    scores, nodes = jnp.zeros((batch, 1)), root
    sid = jnp.zeros((batch, 1, 0), jnp.int32)
    for depth in range(num_levels):
        k = sid.shape[1]
        rep = lambda a, k=k: jnp.repeat(a[:, None], k, axis=1)
        window = _window(sid, vocab)
        seq = [jnp.concatenate([rep(h), w], axis=-1).reshape(batch * k, -1)
               for h, w in zip((tokens, codes, levels), window)]
        logits = model(*seq)[:, -1].reshape(batch, k, -1)
        parent, step_codes, nodes, scores = _expand(
            trie["child_codes"][depth][nodes], trie["child_nodes"][depth][nodes],
            level_log_probs(logits, vocab, depth + 1), scores, widths[depth])
        sid = jnp.concatenate([jnp.take_along_axis(sid, parent[..., None], axis=1),
                               step_codes[..., None]], axis=-1)
    return _finish(trie, nodes, scores)


def _batches(arrays: dict[str, np.ndarray], batch_size: int):
    """Yields ``(chunk, keep)``: fixed-size (zero-padded) chunks of ``arrays`` and their real rows."""
    n = len(arrays["tokens"])
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in arrays.items()}
        keep = len(chunk["tokens"])
        pad = batch_size - keep if n > batch_size else 0
        yield {k: np.pad(v, ((0, pad), (0, 0))) for k, v in chunk.items()}, keep


def recommend(model, trie: SIDTrie, arrays: dict[str, np.ndarray], vocab: SIDVocab, *,
              beam: int | tuple[int, ...], batch_size: int = 256,
              progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Beam search over all histories in ``arrays`` (from ``eval_arrays``), in batches.

    Returns ``(items [U, w_L], scores [U, w_L])`` as NumPy arrays, best first.
    """
    graphdef, state = nnx.split(model)
    tdev = trie_arrays(trie)
    items, scores = [], []
    for chunk, keep in _batches(arrays, batch_size):
        it, sc = beam_search(graphdef, state, tdev, chunk["tokens"], chunk["codes"],
                             chunk["levels"], vocab=vocab, beam=beam)
        items.append(np.asarray(it)[:keep])
        scores.append(np.asarray(sc)[:keep])
        if progress is not None:
            progress(keep)
    return np.concatenate(items), np.concatenate(scores)


def greedy(model, trie: SIDTrie, arrays: dict[str, np.ndarray], vocab: SIDVocab, *,
           constrained: bool = True, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """:func:`greedy_decode` over all histories in ``arrays``, in batches.

    Returns ``(codes [U, L], items [U])`` as NumPy arrays (item -1: the SID is not in the catalog).
    """
    graphdef, state = nnx.split(model)
    tdev = trie_arrays(trie)
    codes, items = [], []
    for chunk, keep in _batches(arrays, batch_size):
        c, it, _ = greedy_decode(graphdef, state, tdev, chunk["tokens"], chunk["codes"],
                                 chunk["levels"], vocab=vocab, constrained=constrained)
        codes.append(np.asarray(c)[:keep])
        items.append(np.asarray(it)[:keep])
    return np.concatenate(codes), np.concatenate(items)

"""Teacher-forced scoring of given SIDs (no search): per-level log-probs and argmax predictions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.decode.beam import level_log_probs
from sidjax.tokens import SIDVocab


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab"))
def score_sids(graphdef, state, tokens, codes, levels, target_codes, *, vocab: SIDVocab):
    """Scores ``target_codes [B, L]`` after left-padded histories ``[B, T]`` in one forward pass.

    Returns ``(log_probs [B, L], predictions [B, L])``: the level-restricted log-probability of each
    target code given the history and the target's earlier levels, and the argmax code at each level.
    """
    model = nnx.merge(graphdef, state)
    num_levels = vocab.num_levels
    level_ids = jnp.broadcast_to(jnp.arange(1, num_levels + 1, dtype=jnp.int32), target_codes.shape)
    target_tokens = jnp.asarray(vocab.level_offsets)[None, :] + target_codes
    logits = model(jnp.concatenate([tokens, target_tokens], axis=1),
                   jnp.concatenate([codes, target_codes], axis=1),
                   jnp.concatenate([levels, level_ids], axis=1))
    t = tokens.shape[1]
    log_probs, preds = [], []
    for level in range(1, num_levels + 1):
        logp = level_log_probs(logits[:, t + level - 2], vocab, level)
        log_probs.append(jnp.take_along_axis(logp, target_codes[:, level - 1:level], axis=-1)[:, 0])
        preds.append(jnp.argmax(logp, axis=-1))
    return jnp.stack(log_probs, axis=1), jnp.stack(preds, axis=1).astype(jnp.int32)

"""The generative recommender: SID token embeddings (+ PrefixMem) -> decoder -> next-SID-token head.

``SIDRecommender`` is the Flax NNX module trained and decoded by sidjax. With
``model.prefixmem.enabled`` the PrefixMem output (a pure function of its own parameter pytree) is
added to the token embeddings at SID positions, the way a vision encoder feeds a language model;
without it the model is the plain "SID tokens in the vocabulary" baseline.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.config import ModelConfig, PrefixMemConfig
from sidjax.data.pipeline import PAD, SIDVocab
from sidjax.nn import prefixmem
from sidjax.nn.decoder import Decoder


def resolve_prefixmem(cfg: ModelConfig, codes_per_level: tuple[int, ...]) -> PrefixMemConfig:
    """The PrefixMem config with the SID code counts and ``d_model`` filled in."""
    pm = cfg.prefixmem
    return dataclasses.replace(pm, codes_per_level=tuple(codes_per_level),
                               d_model=pm.d_model or cfg.d_model)


def positions_from_valid(valid: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """RoPE positions of left-padded tokens: 0 at the first valid token, counting up."""
    return jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0) + start


class SIDRecommender(nnx.Module):
    """Decoder-only generative recommender over SID tokens."""

    def __init__(self, cfg: ModelConfig, vocab: SIDVocab, *, rngs: nnx.Rngs):
        self.vocab_size = vocab.size
        self.embed = nnx.Embed(vocab.size, cfg.d_model, rngs=rngs)
        self.embed_dropout = nnx.Dropout(cfg.dropout)
        self.decoder = Decoder(cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.head_dim,
                               cfg.mlp_dim, cfg.rope_base, cfg.dropout, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, vocab.size, use_bias=False, rngs=rngs)
        self.pm_cfg = resolve_prefixmem(cfg, vocab.codes_per_level) if cfg.prefixmem.enabled else None
        if self.pm_cfg is not None:
            self.prefixmem = nnx.Dict({k: nnx.Param(v) for k, v in prefixmem.init(
                rngs.params(), self.pm_cfg).items()})

    def embed_tokens(self, tokens, codes, levels):
        """Input states ``[B, T, D]``: token embeddings plus PrefixMem at SID positions."""
        x = self.embed(tokens)
        if self.pm_cfg is not None:
            params = {k: v[...] for k, v in self.prefixmem.items()}
            x = x + prefixmem.apply(params, codes, levels, cfg=self.pm_cfg, hidden=x)
        return x

    def __call__(self, tokens, codes, levels, *, dropout_key=None):
        """Next-token logits ``[B, T, V]`` for left-padded sequences (training, scoring)."""
        rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
        valid = tokens != PAD
        x = self.embed_tokens(tokens, codes, levels)
        x = self.embed_dropout(x, deterministic=rngs is None, rngs=rngs)
        x, _ = self.decoder(x, positions_from_valid(valid), valid, rngs=rngs)
        return self.head(x)

    def prefill(self, tokens, codes, levels, extra: int):
        """Encodes histories once; returns ``(logits of the last position [B, V], cache)``.

        The cache has room for ``extra`` more tokens per sequence.
        """
        valid = tokens != PAD
        cache = self.decoder.init_cache(tokens.shape[0], tokens.shape[1] + extra)
        x = self.embed_tokens(tokens, codes, levels)
        x, cache = self.decoder(x, positions_from_valid(valid), valid, cache=cache)
        cache["next_position"] = jnp.sum(valid, axis=-1).astype(jnp.int32)
        return self.head(x[:, -1]), cache

    def decode_step(self, tokens, codes, levels, cache):
        """Feeds one token per sequence; returns ``(logits [B, V], cache)``.

        ``tokens, codes, levels`` are ``[B, W]`` windows whose last column is the new token; the
        earlier columns (the current item's previous SID tokens) only feed PrefixMem's n-grams.
        """
        x = self.embed_tokens(tokens, codes, levels)[:, -1:]
        positions = cache["next_position"][:, None]
        next_position = cache.pop("next_position")
        x, cache = self.decoder(x, positions, jnp.ones_like(positions, bool), cache=cache)
        cache["next_position"] = next_position + 1
        return self.head(x[:, -1]), cache


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))

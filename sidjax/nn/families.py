"""Decoder blocks of a ``ModelConfig``'s family: the per-block style and the block stack.

The family and size tables (:data:`FAMILIES`, :data:`SIZE_PRESETS`) and :func:`apply_preset` /
:func:`resolve` are presets, so they live in :mod:`sidjax.config.presets` (re-exported here).
"""

from __future__ import annotations

from sidjax.config import ModelConfig
from sidjax.config.presets import (  # noqa: F401  (re-exported)
    FAMILIES,
    SIZE_PRESETS,
    STYLE_FIELDS,
    apply_preset,
    preset,
    resolve,
)
from sidjax.nn.decoder import BlockStyle, Decoder


def block_style(cfg: ModelConfig) -> BlockStyle:
    """The per-block choices of ``cfg``'s family (after :func:`resolve`)."""
    arch = resolve(cfg)
    return BlockStyle(num_kv_heads=arch.num_kv_heads, qkv_bias=arch.qkv_bias,
                      activation=arch.activation, norm_plus_one=arch.norm_plus_one,
                      norm_eps=arch.norm_eps)


def build_decoder(cfg: ModelConfig, *, rngs) -> Decoder:
    """The block stack of ``cfg`` (any family), e.g. for a model with its own embeddings/head."""
    return Decoder(cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim,
                   cfg.rope_base, cfg.dropout, rngs=rngs, style=block_style(cfg))

"""Decoder blocks of a ``ModelConfig``'s family: the per-block style and the block stack.

The family and size tables (:data:`FAMILIES`, :data:`SIZE_PRESETS`) and :func:`apply_preset` /
:func:`resolve` are presets, so they live in :mod:`sidjax.config.presets` (re-exported here).
"""

from __future__ import annotations

import math

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
                      norm_eps=arch.norm_eps, nlir=arch.nlir)


def bfts_windows(num_layers: int, window: int) -> tuple[int, ...]:
    """TokenFormer's Bottom-Full-Top-Sliding default: the lower ``ceil(num_layers / 2)`` layers
    full (0), the ``U`` upper ones sliding, ``ceil(window * (U - j) / U)`` at upper layer ``j``
    (``window`` at the lowest, shrinking linearly to ``window / U`` at the top)."""
    upper = num_layers // 2
    return (0,) * (num_layers - upper) + tuple(
        math.ceil(window * (upper - j) / upper) for j in range(upper))


def layer_windows(cfg: ModelConfig) -> tuple[int, ...]:
    """The sliding window of each layer of ``cfg`` in tokens (0 = full attention): all 0 with
    ``attention="full"``; with ``"bfts"`` ``attention_windows``, else :func:`bfts_windows`."""
    if cfg.attention == "full":
        if cfg.attention_windows:
            raise ValueError("model.attention_windows apply with model.attention=bfts only")
        return (0,) * cfg.num_layers
    if cfg.attention != "bfts":
        raise ValueError(f"model.attention={cfg.attention!r}; use 'full' or 'bfts'")
    windows = cfg.attention_windows or bfts_windows(cfg.num_layers, cfg.bfts_window)
    if len(windows) != cfg.num_layers:
        raise ValueError(f"model.attention_windows={windows}: one window per layer "
                         f"(model.num_layers={cfg.num_layers})")
    return tuple(windows)


def build_decoder(cfg: ModelConfig, *, rngs) -> Decoder:
    """The block stack of ``cfg`` (any family), e.g. for a model with its own embeddings/head."""
    return Decoder(cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim,
                   cfg.rope_base, cfg.dropout, rngs=rngs, style=block_style(cfg),
                   windows=layer_windows(cfg))

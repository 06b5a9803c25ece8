"""A decoder-only transformer block stack (RMSNorm, RoPE, SwiGLU, causal attention, KV cache).

The KV cache is an explicit pytree passed in and returned, so decoding stays a pure function:
``cache = {"k": [layers, B, S, N, H], "v": ..., "valid": [B, S], "index": int32}``. A call with a cache
writes its T new keys at ``index`` and attends to every valid cached key at or before each query.

Beam search uses a split cache instead (:meth:`Decoder.beam_step`): ONE history cache per sequence
(``[layers, B, S, N, H]``, written once by a prefill) and a small per-beam cache of the tokens
generated so far (``[layers, B, K, G, N, H]``); a beam's new token attends to the shared history keys
and to its own generated keys under one softmax, and reordering beams touches only the small cache.

Packed rows: ``segment_ids [B, T]`` (0 on padding) restrict attention to keys of the same segment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

_MASKED = -1e9


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of ``x [B, T, N, H]`` at integer ``positions [B, T]``."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions[..., None, None].astype(jnp.float32) * freq  # B T 1 H/2
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head causal self-attention with RoPE."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, rope_base: float, *,
                 rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.w_q = nnx.Param(init(rngs.params(), (d_model, num_heads, head_dim)))
        self.w_k = nnx.Param(init(rngs.params(), (d_model, num_heads, head_dim)))
        self.w_v = nnx.Param(init(rngs.params(), (d_model, num_heads, head_dim)))
        self.w_o = nnx.Param(init(rngs.params(), (num_heads * head_dim, d_model)).reshape(
            num_heads, head_dim, d_model))
        self.rope_base = rope_base

    def _qkv(self, x, positions):
        """Rotated queries and keys and the values of ``x [B, T, D]``: each ``[B, T, N, H]``."""
        q = rope(jnp.einsum("BTD,DNH->BTNH", x, self.w_q[...]), positions, self.rope_base)
        k = rope(jnp.einsum("BTD,DNH->BTNH", x, self.w_k[...]), positions, self.rope_base)
        return q, k, jnp.einsum("BTD,DNH->BTNH", x, self.w_v[...])

    def __call__(self, x, positions, key_valid, layer_cache=None, index=None, segment_ids=None):
        """Returns ``(y [B, T, D], (k, v))``; with a cache, ``k, v`` are the updated cache slices.

        ``segment_ids [B, T]`` (no cache only): a query attends only to keys of its own segment.
        """
        q, k, v = self._qkv(x, positions)
        t = x.shape[1]
        if layer_cache is None:
            query_slot = jnp.arange(t)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(layer_cache[0], k, index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(layer_cache[1], v, index, axis=1)
            query_slot = index + jnp.arange(t)
        causal = query_slot[:, None] >= jnp.arange(k.shape[1])[None, :]  # T S
        mask = causal[None, None] & key_valid[:, None, None, :]  # B 1 T S
        if segment_ids is not None:
            mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
        scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        probs = jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1)
        out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)
        return jnp.einsum("BTNH,NHD->BTD", out, self.w_o[...]), (k, v)

    def beam_step(self, x, positions, history, history_valid, generated):
        """One new token per beam, attending to the shared history and the beam's own tokens.

        Args:
          x: ``[B, K, D]`` the new token's states, one per beam.
          positions: ``[B, K]`` its RoPE positions.
          history: ``(k, v)``, each ``[B, S, N, H]``: the sequence's history cache, shared by beams.
          history_valid: bool ``[B, S]``.
          generated: ``(k, v)``, each ``[B, K, G, N, H]``: keys of the beam's earlier generated
            tokens, or ``None`` when G = 0.

        Returns ``(y [B, K, D], (k, v))`` with the generated cache grown to ``G + 1``.
        """
        q, k, v = self._qkv(x, positions)  # B K N H
        if generated is None:
            gen_k, gen_v = k[:, :, None], v[:, :, None]
        else:
            gen_k = jnp.concatenate([generated[0], k[:, :, None]], axis=2)
            gen_v = jnp.concatenate([generated[1], v[:, :, None]], axis=2)
        scale = jnp.sqrt(q.shape[-1]).astype(q.dtype)
        hist_scores = jnp.einsum("BKNH,BSNH->BKNS", q, history[0]) / scale
        hist_scores = jnp.where(history_valid[:, None, None, :], hist_scores, _MASKED)
        gen_scores = jnp.einsum("BKNH,BKGNH->BKNG", q, gen_k) / scale
        probs = jax.nn.softmax(jnp.concatenate([hist_scores, gen_scores], axis=-1), axis=-1)
        s = hist_scores.shape[-1]
        out = (jnp.einsum("BKNS,BSNH->BKNH", probs[..., :s], history[1])
               + jnp.einsum("BKNG,BKGNH->BKNH", probs[..., s:], gen_v))
        return jnp.einsum("BKNH,NHD->BKD", out, self.w_o[...]), (gen_k, gen_v)


class SwiGLU(nnx.Module):
    """Gated MLP: ``W_down(silu(W_gate x) * W_up x)``."""

    def __init__(self, d_model: int, mlp_dim: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.w_gate = nnx.Param(init(rngs.params(), (d_model, mlp_dim)))
        self.w_up = nnx.Param(init(rngs.params(), (d_model, mlp_dim)))
        self.w_down = nnx.Param(init(rngs.params(), (mlp_dim, d_model)))

    def __call__(self, x):
        gate = jax.nn.silu(jnp.einsum("BTD,DF->BTF", x, self.w_gate[...]))
        return jnp.einsum("BTF,FD->BTD", gate * jnp.einsum("BTD,DF->BTF", x, self.w_up[...]),
                          self.w_down[...])


class Block(nnx.Module):
    """Pre-norm transformer block."""

    def __init__(self, d_model, num_heads, head_dim, mlp_dim, rope_base, dropout, *, rngs):
        self.attn_norm = nnx.RMSNorm(d_model, rngs=rngs)
        self.attn = Attention(d_model, num_heads, head_dim, rope_base, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(d_model, rngs=rngs)
        self.mlp = SwiGLU(d_model, mlp_dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, positions, key_valid, layer_cache=None, index=None, rngs=None,
                 segment_ids=None):
        deterministic = rngs is None
        y, kv = self.attn(self.attn_norm(x), positions, key_valid, layer_cache, index, segment_ids)
        x = x + self.dropout(y, deterministic=deterministic, rngs=rngs)
        y = self.mlp(self.mlp_norm(x))
        return x + self.dropout(y, deterministic=deterministic, rngs=rngs), kv

    def beam_step(self, x, positions, history, history_valid, generated):
        """:meth:`Attention.beam_step` inside the block (inference: no dropout); ``x [B, K, D]``."""
        y, kv = self.attn.beam_step(self.attn_norm(x), positions, history, history_valid, generated)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), kv


class Decoder(nnx.Module):
    """A stack of blocks and a final norm over input states ``[B, T, D]``."""

    def __init__(self, num_layers, d_model, num_heads, head_dim, mlp_dim, rope_base, dropout, *,
                 rngs: nnx.Rngs):
        self.blocks = nnx.List([
            Block(d_model, num_heads, head_dim, mlp_dim, rope_base, dropout, rngs=rngs)
            for _ in range(num_layers)])
        self.final_norm = nnx.RMSNorm(d_model, rngs=rngs)
        self.shape = (num_layers, num_heads, head_dim)

    def init_cache(self, batch: int, length: int, dtype=jnp.float32) -> dict:
        """An empty cache for ``batch`` sequences of up to ``length`` tokens."""
        layers, heads, head_dim = self.shape
        zeros = jnp.zeros((layers, batch, length, heads, head_dim), dtype)
        return {"k": zeros, "v": zeros, "valid": jnp.zeros((batch, length), bool),
                "index": jnp.zeros((), jnp.int32)}

    def __call__(self, x, positions, token_valid, cache=None, rngs=None, segment_ids=None):
        """Returns ``(states [B, T, D], new_cache or None)``.

        ``segment_ids [B, T]`` (without a cache): attention stays within each segment of a packed row.
        """
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids is for packed training rows; it cannot be used with a cache")
        if cache is None:
            key_valid, index = token_valid, None
        else:
            index = cache["index"]
            key_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], token_valid, index, 1)
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
            x, (k, v) = block(x, positions, key_valid, layer_cache, index, rngs, segment_ids)
            new_k.append(k)
            new_v.append(v)
        x = self.final_norm(x)
        if cache is None:
            return x, None
        return x, {"k": jnp.stack(new_k), "v": jnp.stack(new_v), "valid": key_valid,
                   "index": index + x.shape[1]}

    def beam_step(self, x, positions, history: dict, generated: dict | None):
        """One new token per beam over a split cache (see the module docstring).

        Args:
          x: ``[B, K, D]`` input states of the new tokens.
          positions: ``[B, K]`` their RoPE positions.
          history: a prefilled cache (``k, v [layers, B, S, N, H]``, ``valid [B, S]``), read only.
          generated: ``{"k", "v": [layers, B, K, G, N, H]}`` of the beams' earlier tokens, or None.

        Returns ``(states [B, K, D], generated cache with G + 1 tokens)``.
        """
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            gen = None if generated is None else (generated["k"][i], generated["v"][i])
            x, (k, v) = block.beam_step(x, positions, (history["k"][i], history["v"][i]),
                                        history["valid"], gen)
            new_k.append(k)
            new_v.append(v)
        return self.final_norm(x), {"k": jnp.stack(new_k), "v": jnp.stack(new_v)}

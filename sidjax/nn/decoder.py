"""A decoder-only transformer block stack (RMSNorm, RoPE, SwiGLU, causal attention, KV cache).

The KV cache is an explicit pytree passed in and returned, so decoding stays a pure function:
``cache = {"k": [layers, B, S, N, H], "v": ..., "valid": [B, S], "index": int32}``. A call with a cache
writes its T new keys at ``index`` and attends to every valid cached key at or before each query.
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

    def __call__(self, x, positions, key_valid, layer_cache=None, index=None):
        """Returns ``(y [B, T, D], (k, v))``; with a cache, ``k, v`` are the updated cache slices."""
        q = rope(jnp.einsum("BTD,DNH->BTNH", x, self.w_q[...]), positions, self.rope_base)
        k = rope(jnp.einsum("BTD,DNH->BTNH", x, self.w_k[...]), positions, self.rope_base)
        v = jnp.einsum("BTD,DNH->BTNH", x, self.w_v[...])
        t = x.shape[1]
        if layer_cache is None:
            query_slot = jnp.arange(t)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(layer_cache[0], k, index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(layer_cache[1], v, index, axis=1)
            query_slot = index + jnp.arange(t)
        causal = query_slot[:, None] >= jnp.arange(k.shape[1])[None, :]  # T S
        mask = causal[None, None] & key_valid[:, None, None, :]  # B 1 T S
        scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        probs = jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1)
        out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)
        return jnp.einsum("BTNH,NHD->BTD", out, self.w_o[...]), (k, v)


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

    def __call__(self, x, positions, key_valid, layer_cache=None, index=None, rngs=None):
        deterministic = rngs is None
        y, kv = self.attn(self.attn_norm(x), positions, key_valid, layer_cache, index)
        x = x + self.dropout(y, deterministic=deterministic, rngs=rngs)
        y = self.mlp(self.mlp_norm(x))
        return x + self.dropout(y, deterministic=deterministic, rngs=rngs), kv


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

    def __call__(self, x, positions, token_valid, cache=None, rngs=None):
        """Returns ``(states [B, T, D], new_cache or None)``."""
        if cache is None:
            key_valid, index = token_valid, None
        else:
            index = cache["index"]
            key_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], token_valid, index, 1)
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
            x, (k, v) = block(x, positions, key_valid, layer_cache, index, rngs)
            new_k.append(k)
            new_v.append(v)
        x = self.final_norm(x)
        if cache is None:
            return x, None
        return x, {"k": jnp.stack(new_k), "v": jnp.stack(new_v), "valid": key_valid,
                   "index": index + x.shape[1]}

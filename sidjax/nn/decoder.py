"""A decoder-only transformer block stack (RMSNorm, RoPE, gated MLP, grouped-query causal attention,
KV cache), in Llama, Qwen2 and Gemma styles (:class:`BlockStyle`; presets in
:mod:`sidjax.nn.families`).

Dimension letters: ``N`` query heads, ``K`` key/value heads, ``G = N / K`` query heads per kv head
(query head ``n`` reads kv head ``n // G``, the Hugging Face layout), ``H`` head width.

The KV cache is an explicit pytree passed in and returned, so decoding stays a pure function:
``cache = {"k": [layers, B, S, K, H], "v": ..., "valid": [B, S], "index": int32}`` (kv heads
only). A call with a cache writes its T new keys at ``index`` and attends to every valid cached key
at or before each query.

Beam search uses a split cache instead (:meth:`Decoder.beam_step`): ONE history cache per sequence
(``[layers, B, S, K, H]``, written once by a prefill) and a small per-beam cache of the tokens
generated so far (``[layers, B, W, P, K, H]`` for W beams and P generated tokens); a beam's new
token attends to the shared history keys and to its own generated keys under one softmax, and
reordering beams touches only the small cache.

Packed rows: ``segment_ids [B, T]`` (0 on padding) restrict attention to keys of the same segment.

Sliding windows (TokenFormer's BFTS, ``Decoder(windows=...)``: one window per layer, 0 = full): a
layer of window ``w`` lets the token in slot ``t`` of a row (the stream index in cached decoding:
history slots, then the generated tokens) attend to slots ``t-w+1 .. t``, within its segment. The
pipeline's rows hold each sequence's tokens contiguously (left padding, or packed segments), so
that is the sequence's last ``w`` tokens. A long row is computed block by block
(:func:`sidjax.nn.sliding.blocked_sliding_attention`: ``T x 2c`` scores instead of ``T x T``).
A cache of ``length`` slots gives a layer with ``0 < w < length`` its own trimmed cache
``cache["window"][j] = {"k", "v": [B, w, K, H], "valid": [B, w]}`` (the last ``w`` slots, oldest
first; written by appending and keeping the last ``w``); the other layers share the stacked
``k, v, valid`` (so ``cache["k"]`` stacks the full layers only, and is the whole stack without
sliding layers). The beams' generated cache (at most L - 1 tokens) stays untrimmed and masked.

NLIR (TokenFormer's Non-Linear Interaction Representation, ``BlockStyle(nlir=True)``): the
attention output of each head is multiplied by ``sigmoid(h W_nlir)``, ``h`` the block's normalised
input and ``W_nlir [D, N, H]``, before the output projection ``W_o``: a one-sided multiplicative
non-linear transform of the hidden states (the value path stays linear). Off, the block has no
such parameter and its numerics are unchanged.

Injection: ``before_block(i, x) -> x`` (optional, on every call) rewrites the residual stream
before block ``i``; the model uses it to add PrefixMem at configured layers.

Every parameter carries its logical axis names (:mod:`sidjax.parallel.axes`), which the
partitioner maps to the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.nn.sliding import MASKED, MIN_BLOCK, blocked_sliding_attention, sliding_window_mask
from sidjax.parallel.axes import metadata, param

ACTIVATIONS = {"swiglu": jax.nn.silu, "geglu": functools.partial(jax.nn.gelu, approximate=True)}

BlockHook = Callable[[int, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class BlockStyle:
    """The family-dependent choices of a block (defaults: the original sidjax / Llama block)."""

    num_kv_heads: int = 0  # 0 = one kv head per query head (multi-head attention)
    qkv_bias: bool = False  # Qwen2: biases on the q/k/v projections
    activation: str = "swiglu"  # gated MLP activation: "swiglu" (silu) or "geglu" (tanh GELU)
    norm_plus_one: bool = False  # Gemma: RMSNorm scale is 1 + w, w initialised at 0
    norm_eps: float = 1e-6
    nlir: bool = False  # TokenFormer's NLIR gate on the attention output (see the module docstring)


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of ``x [B, T, N, H]`` at integer ``positions [B, T]``."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions[..., None, None].astype(jnp.float32) * freq  # B T 1 H/2
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nnx.RMSNorm):
    """``nnx.RMSNorm``, or with ``plus_one`` Gemma's variant: float32 statistics, scale ``1 + w``."""

    def __init__(self, num_features: int, *, eps: float = 1e-6, plus_one: bool = False,
                 rngs: nnx.Rngs):
        init = nnx.initializers.zeros if plus_one else nnx.initializers.ones
        super().__init__(num_features, epsilon=eps, scale_init=init,
                         scale_metadata=metadata((None,)), rngs=rngs)  # scales stay replicated
        self.plus_one = plus_one

    def __call__(self, x):
        """Normalised ``x`` (same shape and dtype)."""
        if not self.plus_one:
            return super().__call__(x)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [..., D]`` times ``w [D, ...]``, as one ``'MD,DF->MF'`` matmul over the flattened rows.

    Same result as ``einsum('...D,DNH->...NH')``; XLA:CPU runs the single large GEMM much faster
    than the batched form, forward and backward (about 30% off a training step of the reference
    config, measured on 2 cores).
    """
    y = jnp.einsum("MD,DF->MF", x.reshape(-1, x.shape[-1]), w.reshape(w.shape[0], -1))
    return y.reshape(x.shape[:-1] + w.shape[1:])


class Attention(nnx.Module):
    """Grouped-query causal self-attention with RoPE (``num_kv_heads`` = 0 or N: multi-head).

    Parameters: ``w_q [D, N, H]``, ``w_k``/``w_v [D, K, H]``, ``w_o [N, H, D]``, with
    ``qkv_bias`` ``b_q [N * H]``, ``b_k``/``b_v [K * H]`` (the Hugging Face bias layout) and with
    ``nlir`` ``w_nlir [D, N, H]`` (module docstring).
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int, rope_base: float, *,
                 num_kv_heads: int = 0, qkv_bias: bool = False, nlir: bool = False,
                 rngs: nnx.Rngs):
        kv_heads = num_kv_heads or num_heads
        if num_heads % kv_heads:
            raise ValueError(f"num_kv_heads={kv_heads} must divide num_heads={num_heads}")
        init = nnx.initializers.lecun_normal()
        proj = ("embed", "heads", "kv")
        self.w_q = param(init(rngs.params(), (d_model, num_heads, head_dim)), proj)
        self.w_k = param(init(rngs.params(), (d_model, kv_heads, head_dim)), proj)
        self.w_v = param(init(rngs.params(), (d_model, kv_heads, head_dim)), proj)
        self.w_o = param(init(rngs.params(), (num_heads * head_dim, d_model)).reshape(
            num_heads, head_dim, d_model), ("heads", "kv", "embed"))
        self.qkv_bias = qkv_bias
        if qkv_bias:  # Qwen2-style biases [heads * kv] stay replicated
            self.b_q = param(jnp.zeros((num_heads * head_dim,)), (None,))
            self.b_k = param(jnp.zeros((kv_heads * head_dim,)), (None,))
            self.b_v = param(jnp.zeros((kv_heads * head_dim,)), (None,))
        self.nlir = nlir
        if nlir:  # NLIR gate sigmoid(h W_nlir) on each head's output (after every other parameter)
            self.w_nlir = param(init(rngs.params(), (d_model, num_heads, head_dim)), proj)
        self.rope_base = rope_base
        self.groups = num_heads // kv_heads

    def _project(self, x, name: str):
        """``x [B, T, D]`` through projection ``name`` (q, k or v), plus its bias: ``[B, T, ., H]``."""
        w = getattr(self, f"w_{name}")[...]
        y = dense(x, w)
        if self.qkv_bias:
            y = y + getattr(self, f"b_{name}")[...].reshape(w.shape[1:])
        return y

    def _qkv(self, x, positions):
        """Rotated queries ``[B, T, K, G, H]``, rotated keys and values ``[B, T, K, H]`` of ``x``."""
        q = rope(self._project(x, "q"), positions, self.rope_base)
        k = rope(self._project(x, "k"), positions, self.rope_base)
        q = q.reshape(q.shape[:2] + (-1, self.groups, q.shape[-1]))
        return q, k, self._project(x, "v")

    def _output(self, out, x):
        """Per-head outputs ``[B, T, K, G, H]`` (times the NLIR gate of the block's normalised
        input ``x [B, T, D]`` with ``nlir``) merged and projected to ``[B, T, D]``."""
        if self.nlir:
            gate = jax.nn.sigmoid(dense(x, self.w_nlir[...]))  # B T N H
            out = out * gate.reshape(out.shape).astype(out.dtype)
        w = self.w_o[...]
        return dense(out.reshape(out.shape[:2] + (-1,)), w.reshape(-1, w.shape[-1]))

    def __call__(self, x, positions, key_valid, layer_cache=None, index=None, segment_ids=None,
                 window: int = 0):
        """Returns ``(y [B, T, D], new cache)``.

        ``layer_cache``: None (the keys are ``x``'s own; returns ``(k, v)``), ``(k, v)`` of a
        shared cache ``[B, S, K, H]`` written at ``index`` (``key_valid [B, S]`` is its updated
        validity; returns the updated slices) or a sliding layer's trimmed cache ``{"k", "v":
        [B, w, K, H], "valid": [B, w]}`` of the ``w`` slots before these tokens (``key_valid
        [B, T]`` is the new tokens'; returns it appended to and trimmed to its last ``w``).
        ``segment_ids [B, T]`` (no cache only): a query attends only to keys of its own segment.
        ``window``: 0 = full causal attention, else the sliding window (module docstring).
        """
        q, k, v = self._qkv(x, positions)
        b, t, kv_heads, g, h = q.shape
        if isinstance(layer_cache, dict):  # sliding layer: its last w slots, then the new tokens
            offset = layer_cache["k"].shape[1]
            k = jnp.concatenate([layer_cache["k"], k], axis=1)
            v = jnp.concatenate([layer_cache["v"], v], axis=1)
            key_valid = jnp.concatenate([layer_cache["valid"], key_valid], axis=1)
            new_cache = {"k": k[:, -offset:], "v": v[:, -offset:], "valid": key_valid[:, -offset:]}
            if t > 2 * max(window, MIN_BLOCK):
                return self._output(blocked_sliding_attention(q, k, v, key_valid, window, offset),
                                    x), new_cache
        elif layer_cache is None and window and t > 2 * max(window, MIN_BLOCK):
            out = blocked_sliding_attention(q, k, v, key_valid, window, segment_ids=segment_ids)
            return self._output(out, x), (k, v)
        # The G queries of a kv head merged into one query axis Q = (G, T): with G = 1 these are
        # the multi-head dots bit for bit (XLA CPU rounds other layouts differently).
        q = jnp.moveaxis(q, 3, 1).reshape(b, g * t, kv_heads, h)
        if layer_cache is None:
            offset = 0
        elif not isinstance(layer_cache, dict):
            k = jax.lax.dynamic_update_slice_in_dim(layer_cache[0], k, index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(layer_cache[1], v, index, axis=1)
            offset = index
        causal = sliding_window_mask(t, k.shape[1], window, offset)  # T S
        mask = causal[None] & key_valid[:, None, :]  # B T S
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        scores = jnp.einsum("BQKH,BSKH->BKQS", q, k) / jnp.sqrt(h).astype(q.dtype)
        mask = jnp.tile(mask, (1, g, 1))[:, None]  # B 1 Q S
        probs = jax.nn.softmax(jnp.where(mask, scores, MASKED), axis=-1)
        out = jnp.einsum("BKQS,BSKH->BQKH", probs, v)
        out = jnp.moveaxis(out.reshape(b, g, t, kv_heads, h), 1, 3)  # B T K G H
        return self._output(out, x), new_cache if isinstance(layer_cache, dict) else (k, v)

    def beam_step(self, x, positions, history, history_valid, generated, window: int = 0):
        """One new token per beam, attending to the shared history and the beam's own tokens.

        Args:
          x: ``[B, W, D]`` the new token's states, one per beam.
          positions: ``[B, W]`` its RoPE positions.
          history: ``(k, v)``, each ``[B, S, K, H]``: the sequence's history cache, shared by beams.
          history_valid: bool ``[B, S]``.
          generated: ``(k, v)``, each ``[B, W, P, K, H]``: keys of the beam's earlier generated
            tokens, or ``None`` when P = 0.
          window: 0 = full attention; else the sliding window, the history's S keys being the
            S slots just before the first generated token (a trimmed cache: its last S = w).

        Returns ``(y [B, W, D], (k, v))`` with the generated cache grown to ``P + 1``.
        """
        q, k, v = self._qkv(x, positions)  # q B W K G H; k, v B W K H
        if generated is None:
            gen_k, gen_v = k[:, :, None], v[:, :, None]
        else:
            gen_k = jnp.concatenate([generated[0], k[:, :, None]], axis=2)
            gen_v = jnp.concatenate([generated[1], v[:, :, None]], axis=2)
        scale = jnp.sqrt(q.shape[-1]).astype(q.dtype)
        hist_scores = jnp.einsum("BWKGH,BSKH->BWKGS", q, history[0]) / scale
        gen_scores = jnp.einsum("BWKGH,BWPKH->BWKGP", q, gen_k) / scale
        if window:  # the new token is slot S + P: history key r is slot r, generated p is S + p
            s, p = hist_scores.shape[-1], gen_k.shape[2] - 1
            history_valid = history_valid & (jnp.arange(s) > s + p - window)
            gen_scores = jnp.where(jnp.arange(p + 1) > p - window, gen_scores, MASKED)
        hist_scores = jnp.where(history_valid[:, None, None, None, :], hist_scores, MASKED)
        probs = jax.nn.softmax(jnp.concatenate([hist_scores, gen_scores], axis=-1), axis=-1)
        s = hist_scores.shape[-1]
        out = (jnp.einsum("BWKGS,BSKH->BWKGH", probs[..., :s], history[1])
               + jnp.einsum("BWKGP,BWPKH->BWKGH", probs[..., s:], gen_v))
        return self._output(out, x), (gen_k, gen_v)


class GatedMLP(nnx.Module):
    """Gated MLP ``W_down(act(W_gate x) * W_up x)``: SwiGLU (``silu``) or GeGLU (tanh GELU)."""

    def __init__(self, d_model: int, mlp_dim: int, activation: str = "swiglu", *,
                 rngs: nnx.Rngs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
        init = nnx.initializers.lecun_normal()
        self.w_gate = param(init(rngs.params(), (d_model, mlp_dim)), ("embed", "mlp"))
        self.w_up = param(init(rngs.params(), (d_model, mlp_dim)), ("embed", "mlp"))
        self.w_down = param(init(rngs.params(), (mlp_dim, d_model)), ("mlp", "embed"))
        self.activation = activation

    def __call__(self, x):
        gate = ACTIVATIONS[self.activation](dense(x, self.w_gate[...]))
        return dense(gate * dense(x, self.w_up[...]), self.w_down[...])


class Block(nnx.Module):
    """Pre-norm transformer block."""

    def __init__(self, d_model, num_heads, head_dim, mlp_dim, rope_base, dropout, *, rngs,
                 style: BlockStyle = BlockStyle()):
        norm = functools.partial(RMSNorm, d_model, eps=style.norm_eps,
                                 plus_one=style.norm_plus_one, rngs=rngs)
        self.attn_norm = norm()
        self.attn = Attention(d_model, num_heads, head_dim, rope_base,
                              num_kv_heads=style.num_kv_heads, qkv_bias=style.qkv_bias,
                              nlir=style.nlir, rngs=rngs)
        self.mlp_norm = norm()
        self.mlp = GatedMLP(d_model, mlp_dim, style.activation, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, positions, key_valid, layer_cache=None, index=None, rngs=None,
                 segment_ids=None, window: int = 0):
        deterministic = rngs is None
        y, kv = self.attn(self.attn_norm(x), positions, key_valid, layer_cache, index, segment_ids,
                          window)
        x = x + self.dropout(y, deterministic=deterministic, rngs=rngs)
        y = self.mlp(self.mlp_norm(x))
        return x + self.dropout(y, deterministic=deterministic, rngs=rngs), kv

    def beam_step(self, x, positions, history, history_valid, generated, window: int = 0):
        """:meth:`Attention.beam_step` inside the block (inference: no dropout); ``x [B, W, D]``."""
        y, kv = self.attn.beam_step(self.attn_norm(x), positions, history, history_valid, generated,
                                    window)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), kv


class Decoder(nnx.Module):
    """A stack of blocks and a final norm over input states ``[B, T, D]``.

    ``windows``: one sliding window per layer in tokens (0 = full attention; () = all full).
    """

    def __init__(self, num_layers, d_model, num_heads, head_dim, mlp_dim, rope_base, dropout, *,
                 rngs: nnx.Rngs, style: BlockStyle = BlockStyle(), windows: tuple[int, ...] = ()):
        windows = tuple(int(w) for w in windows) or (0,) * num_layers
        if len(windows) != num_layers or min(windows) < 0:
            raise ValueError(f"windows={windows}: need one window >= 0 per layer ({num_layers})")
        self.blocks = nnx.List([
            Block(d_model, num_heads, head_dim, mlp_dim, rope_base, dropout, rngs=rngs,
                  style=style)
            for _ in range(num_layers)])
        self.final_norm = RMSNorm(d_model, eps=style.norm_eps, plus_one=style.norm_plus_one,
                                  rngs=rngs)
        self.shape = (num_layers, style.num_kv_heads or num_heads, head_dim)
        self.windows = windows

    def cache_layout(self, length: int) -> tuple[tuple[str, int], ...]:
        """Where each layer's keys live in a cache of ``length`` slots: ``("full", j)``, row ``j``
        of the stacked ``k, v``, or ``("window", j)``, ``cache["window"][j]`` (``0 < w < length``:
        a layer whose window covers the whole cache needs no trimmed copy)."""
        out, counts = [], {"full": 0, "window": 0}
        for w in self.windows:
            kind = "window" if 0 < w < length else "full"
            out.append((kind, counts[kind]))
            counts[kind] += 1
        return tuple(out)

    def init_cache(self, batch: int, length: int, dtype=jnp.float32) -> dict:
        """An empty cache for ``batch`` sequences of up to ``length`` tokens (kv heads only).

        Sliding layers (``0 < w < length``) get ``cache["window"]``: ``[B, w, ...]`` each.
        """
        _, kv_heads, head_dim = self.shape
        layout = self.cache_layout(length)
        full = sum(kind == "full" for kind, _ in layout)
        zeros = jnp.zeros((full, batch, length, kv_heads, head_dim), dtype)
        cache = {"k": zeros, "v": zeros, "valid": jnp.zeros((batch, length), bool),
                 "index": jnp.zeros((), jnp.int32)}
        sliding = [w for w, (kind, _) in zip(self.windows, layout) if kind == "window"]
        if sliding:
            cache["window"] = tuple(
                {"k": jnp.zeros((batch, w, kv_heads, head_dim), dtype),
                 "v": jnp.zeros((batch, w, kv_heads, head_dim), dtype),
                 "valid": jnp.zeros((batch, w), bool)} for w in sliding)
        return cache

    def __call__(self, x, positions, token_valid, cache=None, rngs=None, segment_ids=None,
                 before_block: BlockHook | None = None):
        """Returns ``(states [B, T, D], new_cache or None)``.

        ``segment_ids [B, T]`` (without a cache): attention stays within each segment of a packed row.
        ``before_block(i, x)``: the residual stream entering block ``i`` (see the module docstring).
        """
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids is for packed training rows; it cannot be used with a cache")
        if cache is None:
            key_valid, index, layout = token_valid, None, None
        else:
            index = cache["index"]
            key_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], token_valid, index, 1)
            layout = self.cache_layout(cache["valid"].shape[1])
        new_k, new_v, new_window = [], [], []
        for i, block in enumerate(self.blocks):
            if before_block is not None:
                x = before_block(i, x)
            window, valid, layer_cache = self.windows[i], key_valid, None
            if layout is not None and layout[i][0] == "window":
                layer_cache, valid = cache["window"][layout[i][1]], token_valid
            elif layout is not None:
                layer_cache = (cache["k"][layout[i][1]], cache["v"][layout[i][1]])
            x, kv = block(x, positions, valid, layer_cache, index, rngs, segment_ids, window)
            if isinstance(kv, dict):
                new_window.append(kv)
            else:
                new_k.append(kv[0])
                new_v.append(kv[1])
        x = self.final_norm(x)
        if cache is None:
            return x, None
        new = {"k": jnp.stack(new_k) if new_k else cache["k"],
               "v": jnp.stack(new_v) if new_v else cache["v"],
               "valid": key_valid, "index": index + x.shape[1]}
        if new_window:
            new["window"] = tuple(new_window)
        return x, new

    def beam_step(self, x, positions, history: dict, generated: dict | None,
                  before_block: BlockHook | None = None):
        """One new token per beam over a split cache (see the module docstring).

        Args:
          x: ``[B, W, D]`` input states of the new tokens.
          positions: ``[B, W]`` their RoPE positions.
          history: a prefilled cache (``k, v [full layers, B, S, K, H]``, ``valid [B, S]`` and,
            with sliding layers, ``window``), read only.
          generated: ``{"k", "v": [layers, B, W, P, K, H]}`` of the beams' earlier tokens, or None.
          before_block: as in :meth:`__call__`, on ``[B, W, D]`` states.

        Returns ``(states [B, W, D], generated cache with P + 1 tokens)``.
        """
        layout = self.cache_layout(history["valid"].shape[1])
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            if before_block is not None:
                x = before_block(i, x)
            gen = None if generated is None else (generated["k"][i], generated["v"][i])
            kind, j = layout[i]
            if kind == "window":
                hist = history["window"][j]
                hist_kv, hist_valid = (hist["k"], hist["v"]), hist["valid"]
            else:
                hist_kv, hist_valid = (history["k"][j], history["v"][j]), history["valid"]
            x, (k, v) = block.beam_step(x, positions, hist_kv, hist_valid, gen, self.windows[i])
            new_k.append(k)
            new_v.append(v)
        return self.final_norm(x), {"k": jnp.stack(new_k), "v": jnp.stack(new_v)}

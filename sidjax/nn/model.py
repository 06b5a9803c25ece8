"""The generative recommender: SID token embeddings (+ PrefixMem) -> decoder -> next-SID-token head.

``SIDRecommender`` is the Flax NNX module trained and decoded by sidjax. With
``model.prefixmem.enabled`` the PrefixMem output (a pure function of its own parameter pytree) is
added to the token embeddings at SID positions, the way a vision encoder feeds a language model
(or, with ``model.prefixmem.inject_layers``, to the residual stream before those decoder blocks,
from memory rows read once per call); without it the model is the plain "SID tokens in the
vocabulary" baseline. With ``model.item_memory.enabled`` (exclusive with PrefixMem) the
parameter-matched control of PrefixMem (:mod:`sidjax.nn.itemmem`: a table of PrefixMem's size keyed
by the full SID of each completed history item, added at its last SID token only) is added at the
embeddings instead. The decoder is any family of :mod:`sidjax.nn.families` (default: Llama-style).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.config import ModelConfig
from sidjax.nn import families, itemmem, prefixmem
from sidjax.nn.prefixmem import resolve_prefixmem  # noqa: F401 - also public here
from sidjax.parallel import axes
from sidjax.tokens import SIDVocab


def positions_from_valid(valid: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """RoPE positions of left-padded tokens: 0 at the first valid token, counting up."""
    return jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0) + start


def positions_from_segments(valid: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """RoPE positions ``[B, T]`` of a packed row: 0 at each segment's first valid token, counting up.

    A segment starts where ``segment_ids`` changes; padding gets the position of its neighbours
    (it is masked out of attention anyway).
    """
    count = jnp.cumsum(valid, axis=-1)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=-1)
    # The running count at each segment's start is non-decreasing, so a cumulative max carries it.
    base = jax.lax.cummax(jnp.where(starts, count - valid, 0), axis=1)
    return jnp.maximum(count - base - 1, 0)


class SIDRecommender(nnx.Module):
    """Decoder-only generative recommender over SID tokens (any family of sidjax.nn.families).

    ``mesh`` (a ``jax.sharding.Mesh``) and ``rules`` (default
    :data:`sidjax.parallel.DEFAULT_RULES`): PrefixMem reads its row-sharded table with
    :func:`sidjax.parallel.sharded_take` (shard_map: masked local gather + psum) instead of a
    plain gather; the table rows are padded to the row axis (:func:`prefixmem.for_mesh`). Set
    ``model.mesh = None`` to run a trained model on one device.
    """

    def __init__(self, cfg: ModelConfig, vocab: SIDVocab, *, rngs: nnx.Rngs, mesh=None,
                 rules=None):
        arch = families.resolve(cfg)
        if arch.prefixmem.enabled and arch.item_memory.enabled:
            raise ValueError("model.prefixmem.enabled and model.item_memory.enabled are both true; "
                             "the item memory is PrefixMem's parameter-matched control: enable one")
        self.arch = arch
        self.vocab_size = vocab.size
        self.pad_id = vocab.pad_id
        self.embed = nnx.Embed(vocab.size, arch.d_model, rngs=rngs,
                               embedding_metadata=axes.metadata(("vocab", "embed")))
        self.embed_dropout = nnx.Dropout(arch.dropout)
        self.decoder = families.build_decoder(arch, rngs=rngs)
        if not arch.tie_embeddings:
            self.head = nnx.Linear(arch.d_model, vocab.size, use_bias=False, rngs=rngs,
                                   kernel_metadata=axes.metadata(("embed", "vocab")))
        self.pm_cfg = resolve_prefixmem(arch, vocab.codes_per_level) if arch.prefixmem.enabled \
            else None
        if self.pm_cfg is not None:
            if mesh is not None:
                self.pm_cfg = prefixmem.for_mesh(self.pm_cfg, mesh, rules)
            too_deep = [i for i in self.pm_cfg.inject_layers if i >= arch.num_layers]
            if too_deep:
                raise ValueError(f"model.prefixmem.inject_layers={self.pm_cfg.inject_layers} names "
                                 f"blocks {too_deep}, but model.num_layers={arch.num_layers}")
            pm_axes = prefixmem.param_axes(self.pm_cfg)  # the table, else projections and gate
            self.prefixmem = nnx.Dict({k: axes.param(
                v, pm_axes[k], group=axes.TABLE if k == "table" else axes.ADAPTER)
                for k, v in prefixmem.init(rngs.params(), self.pm_cfg).items()})
        self.im_cfg = itemmem.resolve(arch, vocab.codes_per_level, mesh=mesh, rules=rules) \
            if arch.item_memory.enabled else None
        if self.im_cfg is not None:
            im_axes = itemmem.param_axes(self.im_cfg)
            self.itemmem = nnx.Dict({k: axes.param(
                v, im_axes[k], group=axes.TABLE if k == "table" else None)
                for k, v in itemmem.init(rngs.params(), self.im_cfg).items()})
        self.mesh = mesh
        self.rules = rules

    def embed_tokens(self, tokens):
        """Token embeddings ``[..., D]`` (times ``sqrt(D)`` with ``embed_scale``, as Gemma)."""
        x = self.embed(tokens)
        if self.arch.embed_scale:
            x = x * jnp.asarray(math.sqrt(self.arch.d_model), x.dtype)
        return x

    @property
    def tied_output_params(self) -> int:
        """Embedding parameters used as the output matmul (0 with a separate head; FLOPs counts)."""
        return self.embed.embedding.size if self.arch.tie_embeddings else 0

    def logits(self, states):
        """Next-token logits ``[..., V]`` of final states ``[..., D]`` (tied: the embedding)."""
        if self.arch.tie_embeddings:
            return self.embed.attend(states)
        return self.head(states)

    def _with_prefixmem(self, x, codes, levels, last_only: bool = False):
        """``(x + PrefixMem at the embeddings, before_block hook)`` (unchanged and None without it).

        ``codes, levels [..., T]`` (``x [..., T, D]``); with ``last_only`` they are windows whose
        last position only is fed (``x [..., D]``; the earlier positions only feed the n-grams):
        the rows of that one position are hashed (:func:`prefixmem.step_rows`, from the last
        ``max(orders)`` codes) and gathered, not the whole window's.
        """
        if self.pm_cfg is None:
            return x, None
        params = {k: v[...] for k, v in self.prefixmem.items()}
        if last_only:
            levels = levels[..., -1]
            rows = prefixmem.step_rows(self.pm_cfg, codes, levels)
        else:
            rows = prefixmem.memory_rows(self.pm_cfg, codes, levels)
        memory = prefixmem.read_memory(params, rows=rows, cfg=self.pm_cfg, mesh=self.mesh,
                                       rules=self.rules)
        inject = functools.partial(prefixmem.inject, params, memory, levels=levels, cfg=self.pm_cfg)
        return inject(x=x, layer=None), lambda i, h: inject(x=h, layer=i)

    def _with_item_memory(self, x, codes, levels, last_only: bool = False):
        """``x`` plus the item memory's output (:mod:`sidjax.nn.itemmem`; ``x`` without it).

        Shapes as :meth:`_with_prefixmem`. It is non-zero only at level-L tokens (a completed
        item), keyed by the L codes ending there. With ``last_only`` the windows hold the current
        item's fed prefix, so a window shorter than L has no completed item: nothing is added (and
        nothing computed). That is every step of :mod:`sidjax.decode`, which feeds levels 1..L-1.
        """
        if self.im_cfg is None or (last_only and codes.shape[-1] < self.im_cfg.num_levels):
            return x
        params = {k: v[...] for k, v in self.itemmem.items()}
        if last_only:  # one position: hash its last L codes and gather its rows only
            levels = levels[..., -1]
            rows = itemmem.step_rows(self.im_cfg, codes, levels)
        else:
            rows = itemmem.memory_rows(self.im_cfg, codes, levels)
        memory = itemmem.read_memory(params, rows=rows, cfg=self.im_cfg, mesh=self.mesh,
                                     rules=self.rules)
        delta = itemmem.project(params, memory, levels, cfg=self.im_cfg, hidden=x)
        return x + delta.astype(x.dtype)

    def __call__(self, tokens, codes, levels, *, dropout_key=None, segment_ids=None,
                 positions=None):
        """Next-token logits ``[B, T, V]`` for left-padded sequences (training, scoring).

        Packed rows: ``segment_ids [B, T]`` (1, 2, ... per sequence, 0 on padding) keep attention
        inside each sequence; ``positions [B, T]`` are the RoPE positions (default: restarting at 0
        in each segment). Every segment starts with BOS, so PrefixMem's n-grams never cross one.
        """
        rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
        valid = tokens != self.pad_id
        if segment_ids is not None:
            valid = valid & (segment_ids > 0)
            if positions is None:
                positions = positions_from_segments(valid, segment_ids)
        elif positions is None:
            positions = positions_from_valid(valid)
        x, hook = self._with_prefixmem(self.embed_tokens(tokens), codes, levels)
        x = self._with_item_memory(x, codes, levels)
        x = self.embed_dropout(x, deterministic=rngs is None, rngs=rngs)
        x, _ = self.decoder(x, positions, valid, rngs=rngs, segment_ids=segment_ids,
                            before_block=hook)
        return self.logits(x)

    def prefill(self, tokens, codes, levels, extra: int = 0):
        """Encodes histories once; returns ``(logits of the last position [B, V], cache)``.

        The cache has room for ``extra`` more tokens per sequence (0 for :meth:`beam_step`, which
        keeps generated tokens in a separate per-beam cache). With ``model.attention=bfts`` a
        sliding layer of window ``w`` shorter than that keeps only its last ``w`` keys
        (``cache["window"]``, :mod:`sidjax.nn.decoder`).
        """
        valid = tokens != self.pad_id
        cache = self.decoder.init_cache(tokens.shape[0], tokens.shape[1] + extra)
        x, hook = self._with_prefixmem(self.embed_tokens(tokens), codes, levels)
        x = self._with_item_memory(x, codes, levels)
        x, cache = self.decoder(x, positions_from_valid(valid), valid, cache=cache,
                                before_block=hook)
        cache["next_position"] = jnp.sum(valid, axis=-1).astype(jnp.int32)
        return self.logits(x[:, -1]), cache

    def decode_step(self, tokens, codes, levels, cache):
        """Feeds one token per sequence; returns ``(logits [B, V], cache)``.

        ``tokens, codes, levels`` are ``[B, W]`` windows whose last column is the new token; the
        earlier columns (the current item's previous SID tokens) only feed PrefixMem's n-grams
        (the last ``max(orders)`` of them: one position's rows are hashed and gathered).
        """
        x, hook = self._with_prefixmem(self.embed_tokens(tokens[:, -1:]), codes[:, None],
                                       levels[:, None], last_only=True)  # B 1 D
        # Item memory: the fed token is level W of the current item (W < L when decoding a SID),
        # so nothing is added; a W >= L window of a completed item gets its full-SID rows.
        x = self._with_item_memory(x, codes[:, None], levels[:, None], last_only=True)
        positions = cache["next_position"][:, None]
        next_position = cache.pop("next_position")
        x, cache = self.decoder(x, positions, jnp.ones_like(positions, bool), cache=cache,
                                before_block=hook)
        cache["next_position"] = next_position + 1
        return self.logits(x[:, -1]), cache

    def beam_step(self, tokens, codes, levels, history: dict, generated: dict | None, depth: int):
        """Feeds the ``depth``-th generated SID token of every beam; returns ``(logits, generated)``.

        ``tokens, codes, levels`` are ``[B, K, depth]`` windows of each beam's generated prefix (the
        last column is the new token; the earlier ones only feed PrefixMem's n-grams, hashed for
        the new position only and gathered for it alone: :func:`prefixmem.step_rows`). ``history`` is
        :meth:`prefill`'s cache (``extra=0``), shared by the K beams of a sequence; ``generated`` is
        the per-beam cache of the ``depth - 1`` earlier tokens (None at depth 1). Returns logits
        ``[B, K, V]`` for the next token and the generated cache grown by one token.
        """
        x, hook = self._with_prefixmem(self.embed_tokens(tokens[..., -1]), codes, levels,
                                       last_only=True)  # B K D
        # Item memory: depth <= L - 1 here (the last level is never fed), so it adds nothing.
        x = self._with_item_memory(x, codes, levels, last_only=True)
        positions = jnp.broadcast_to(history["next_position"][:, None] + (depth - 1),
                                     x.shape[:2])
        x, generated = self.decoder.beam_step(x, positions, history, generated, before_block=hook)
        return self.logits(x), generated


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))

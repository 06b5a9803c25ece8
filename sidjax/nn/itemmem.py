"""Item memory: the parameter-matched control of PrefixMem, as pure functions on pytrees.

PrefixMem (:mod:`sidjax.nn.prefixmem`) adds, at every SID token of level l, memory rows keyed by the
prefix n-grams of the current item's SID. Part of its gain over the plain model could come only
from its extra parameters (a table several times the decoder's size). This module is the control
of that comparison: the SAME number of parameters and the same projection and gate shapes, but a
table that is NOT prefix-conditioned. It is keyed by the full SID of a completed history item:

* At a position of the last SID level L (levels are 1..L at SID tokens, 0 at BOS, padding and
  text) the item is complete; its key is the full code tuple ``(c_1..c_L)``, the codes at that
  position and the L-1 positions before it (an item's SID tokens are contiguous).
* Each of the H hash heads hashes the tuple with prefixmem's multiplicative-XOR uint32 hash
  (:func:`sidjax.nn.prefixmem._table_rows`, own odd multipliers per head from a fixed seed) modulo
  its own prime; the heads partition the table rows (distinct primes at most ``rows / H``, the
  table padded to exactly ``rows`` rows; see :func:`_head_sizes`).
* The H rows are concatenated (``[..., H * mem_dim]``), projected to ``d_model`` and gated against
  the hidden state they are added to exactly as PrefixMem's concat fusion (its
  :func:`~sidjax.nn.prefixmem.project` and :func:`~sidjax.nn.prefixmem.init_projections` are
  reused), and added ONLY at level-L positions (zeros elsewhere).

This is causal and leak-free: the target at a level-L position is the next item's first code, and
during beam search the fed tokens (levels 1..L-1 of the item being generated) get nothing.

Sizes (:func:`resolve`): ``mem_dim``, ``gate``, ``param_dtype`` and ``d_model`` come from the
model's :class:`~sidjax.config.PrefixMemConfig` (``model.prefixmem``, though it stays disabled);
``item_memory.rows = 0`` takes PrefixMem's padded table rows (``prefixmem.layout(..).num_rows``) and
``item_memory.heads = 0`` its slot count (``len(orders) * hash_heads``). With PrefixMem's concat
fusion at the embeddings (``inject_layers=()``, the defaults) the control then has exactly
PrefixMem's parameters: table ``[rows, mem_dim]``, ``w_value [H * mem_dim, d]`` and, with the gate,
``w_key [H * mem_dim, d]``, ``query_scale [d]``, ``key_scale [d]``.

    cfg = resolve(model_cfg, vocab.codes_per_level)
    params = init(key, cfg)
    delta = apply(params, codes, levels, cfg=cfg, hidden=token_embeddings)   # [B, T, d_model]

The leaves are named like PrefixMem's (``table``, ``w_value``, ...). The model wraps them in
``nnx.Param`` with the logical axes of :func:`param_axes`, the table tagged as a memory table
(:mod:`sidjax.parallel.axes`), so the optimizer groups of :func:`sidjax.train.optim.param_labels`
(table: no decay, ``prefixmem_lr_mult``) treat both alike.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.config import ModelConfig, PrefixMemConfig
from sidjax.nn import prefixmem

# Logical axis names of every parameter (the same names as PrefixMem's, one injection site).
PARAM_AXES = prefixmem.PARAM_AXES

HASH_SEED = 0x17E3  # seeds the per-head multipliers: np.random.default_rng((HASH_SEED, head))


@dataclasses.dataclass(frozen=True)
class ItemMemSpec:
    """Resolved item-memory sizes (frozen, hashable: a static argument under ``jit``).

    ``tables``: one hashed :class:`~sidjax.nn.prefixmem.TableSpec` per head (``level = order =
    num_levels``, a prime ``size``, its ``offset`` into the table, odd uint32 multipliers).
    ``proj``: the PrefixMem config whose projection and gate this control uses (concat fusion,
    ``inject_layers=()``, one order and ``heads`` hash heads, so ``fan_in = heads * mem_dim``); only
    its ``d_model``, ``gate`` and ``mem_dim`` matter.
    """

    num_levels: int
    rows: int
    heads: int
    mem_dim: int
    d_model: int
    gate: bool
    param_dtype: str
    tables: tuple[prefixmem.TableSpec, ...]
    proj: PrefixMemConfig


def _head_sizes(rows: int, heads: int) -> tuple[int, ...]:
    """Prime sizes of the heads, each at most ``rows // heads`` (their sum is <= ``rows``).

    Distinct primes, the largest first, where there are ``heads`` of them; otherwise (a tiny
    table, ``rows // heads`` below ~20) every head takes the largest prime (their multipliers
    still differ).
    """
    primes = [n for n in range(rows // heads, 1, -1) if prefixmem._is_prime(n)]
    if not primes:
        raise ValueError(f"item_memory: {rows} rows are too few for {heads} hash heads (each "
                         "needs >= 2 rows); raise model.item_memory.rows or lower "
                         "model.item_memory.heads")
    return tuple(primes[:heads]) if len(primes) >= heads else (primes[0],) * heads


def _multipliers(head: int, num_levels: int) -> tuple[int, ...]:
    """Odd uint32 multipliers of head ``head``, one per SID level (fixed seed)."""
    rng = np.random.default_rng((HASH_SEED, head))
    return tuple(int(m) | 1 for m in rng.integers(1 << 20, 1 << 31, size=num_levels))


def resolve(model_cfg: ModelConfig, codes_per_level: tuple[int, ...], *, mesh=None,
            rules=None) -> ItemMemSpec:
    """The :class:`ItemMemSpec` of ``model_cfg.item_memory`` for a SID table's code counts.

    Sizes left at 0 take PrefixMem's (``model_cfg.prefixmem`` with ``codes_per_level`` and
    ``d_model`` filled in, as :func:`sidjax.nn.prefixmem.resolve_prefixmem`). With ``mesh`` the
    PrefixMem rows are padded for it first (:func:`prefixmem.for_mesh`, so the two stay equal
    under the same mesh) and explicit rows are rounded up to a multiple of the row-shard axis.
    Raises ``ValueError`` naming the key of a size that cannot work.
    """
    im = model_cfg.item_memory
    if im.rows < 0 or im.heads < 0:
        raise ValueError(f"model.item_memory.rows={im.rows} and model.item_memory.heads="
                         f"{im.heads} must be >= 0 (0 = PrefixMem's)")
    pm = prefixmem.resolve_prefixmem(model_cfg, codes_per_level)
    if mesh is not None:
        pm = prefixmem.for_mesh(pm, mesh, rules)
    lay = prefixmem.layout(pm)  # also validates mem_dim, d_model, param_dtype, ...
    heads = im.heads or lay.num_slots
    rows = im.rows or lay.num_rows
    shards = prefixmem._row_shards(mesh, rules)[1]
    rows = -(-rows // shards) * shards
    num_levels = len(pm.codes_per_level)
    tables, offset = [], 0
    for head, size in enumerate(_head_sizes(rows, heads)):
        tables.append(prefixmem.TableSpec(num_levels, num_levels, head, offset, size, False,
                                          _multipliers(head, num_levels)))
        offset += size
    if len({t.radix for t in tables}) != heads:
        raise AssertionError("item_memory: two hash heads drew the same multipliers")
    proj = dataclasses.replace(pm, orders=(1,), hash_heads=heads, fusion="concat",
                               inject_layers=())
    return ItemMemSpec(num_levels, rows, heads, pm.mem_dim, pm.d_model, pm.gate, pm.param_dtype,
                       tuple(tables), proj)


def init(key: jax.Array, cfg: ItemMemSpec) -> dict[str, jax.Array]:
    """Fresh parameters: the ``[rows, mem_dim]`` table and PrefixMem's projection (and gate).

    The keys are split as :func:`sidjax.nn.prefixmem.init` does (index 0 for the table).
    """
    k_table = jax.random.split(key, 3)[0]
    table = jax.random.normal(k_table, (cfg.rows, cfg.mem_dim), jnp.float32)
    return {"table": table.astype(cfg.param_dtype),
            **prefixmem.init_projections(key, cfg.proj)}


def lookup_rows(cfg: ItemMemSpec, codes: jax.Array, levels: jax.Array) -> jax.Array:
    """Row ids ``[..., T, H]`` (int32; -1 off level-L positions) read at each position.

    ``codes`` and ``levels`` are ``[..., T]``: the raw SID code and level (1-based; 0 = not a SID
    token) of each position; an item's SID tokens must be consecutive positions. Head ``h`` hashes
    the full SID ``(c_1..c_L)`` ending at a level-L position into its own rows. Parameter-free
    (the keying step; :func:`read_memory` ``rows=`` takes its output).
    """
    window = prefixmem._prefix_codes(codes, cfg.num_levels)  # [..., T, L]: code j tokens back
    return _rows_of_window(cfg, window, levels)


def _rows_of_window(cfg: ItemMemSpec, window: jax.Array, levels: jax.Array) -> jax.Array:
    """Row ids ``[..., H]`` of positions whose last L codes (newest first) are ``window``."""
    complete = levels == cfg.num_levels
    rows = [prefixmem._table_rows(spec, window) for spec in cfg.tables]
    return jnp.where(complete[..., None], jnp.stack(rows, axis=-1), -1)


memory_rows = lookup_rows  # parameter-free keying, as prefixmem.memory_rows


def step_rows(cfg: ItemMemSpec, codes: jax.Array, level: jax.Array) -> jax.Array:
    """Row ids ``[..., H]`` of ONE new position: ``lookup_rows(cfg, codes, levels)[..., -1, :]``.

    ``codes [..., W]`` end with the new position's code (only the last L are read); ``level
    [...]`` is its level. Parameter-free, as :func:`sidjax.nn.prefixmem.step_rows`.
    """
    return _rows_of_window(cfg, prefixmem._last_prefix(codes, cfg.num_levels), level)


def read_memory(params: dict[str, jax.Array], codes: jax.Array | None = None,
                levels: jax.Array | None = None, *, rows: jax.Array | None = None,
                cfg: ItemMemSpec, mesh=None, rules=None) -> jax.Array:
    """Concatenated rows ``[..., T, H * mem_dim]`` of each position (zeros off level-L positions).

    Give ``codes, levels [..., T]`` or precomputed ``rows`` (:func:`lookup_rows` ``[..., T, H]``
    or :func:`step_rows` ``[..., H]``), as :func:`sidjax.nn.prefixmem.read_memory`.
    ``mesh``/``rules``: read the table row-sharded over the axis ``rules`` map ``table_rows`` to,
    with :func:`sidjax.parallel.sharded_take` (as :func:`sidjax.nn.prefixmem.read_memory`).
    """
    rows = prefixmem._rows_arg(rows, codes, levels, lookup_rows, cfg)
    ids = jnp.maximum(rows, 0)
    axis, n = prefixmem._row_shards(mesh, rules)
    table = params["table"]
    if axis is None:
        gathered = jnp.take(table, ids, axis=0)
    else:
        from sidjax.parallel.lookup import sharded_take
        from sidjax.parallel.rules import DEFAULT_RULES

        if table.shape[0] % n:
            raise ValueError(f"the item-memory table has {table.shape[0]} rows, not a multiple of "
                             f"the {axis!r} mesh axis size {n}; resolve(..., mesh=mesh) pads them")
        gathered = sharded_take(table, ids, mesh=mesh, row_axis=axis,
                                batch_axes=(rules or DEFAULT_RULES).lookup("batch"))
    gathered = (gathered * (rows >= 0)[..., None]).astype(jnp.float32)  # [..., T, H, M]
    return gathered.reshape(rows.shape[:-1] + (-1,))


def project(params: dict[str, jax.Array], memory: jax.Array, levels: jax.Array, *,
            cfg: ItemMemSpec, hidden: jax.Array | None = None) -> jax.Array:
    """Projects (and gates against ``hidden``) a :func:`read_memory` output: ``[..., T, d_model]``.

    :func:`sidjax.nn.prefixmem.project` (``einsum('...TF,FD->...TD')`` with ``F = H * mem_dim``,
    gate ``sigmoid(<RMSNorm(h), RMSNorm(W_k m)> / sqrt(d))``), masked to the level-L positions.
    """
    complete = (levels == cfg.num_levels).astype(jnp.int32)  # prefixmem masks by levels > 0
    return prefixmem.project(params, memory, complete, cfg=cfg.proj, hidden=hidden)


def apply(params: dict[str, jax.Array], codes: jax.Array, levels: jax.Array, *,
          cfg: ItemMemSpec, hidden: jax.Array | None = None, mesh=None,
          rules=None) -> jax.Array:
    """Item-memory output ``[..., T, d_model]`` to add to the hidden states (0 off level L).

    Args:
      params: from :func:`init`.
      codes, levels: ``[..., T]`` int arrays (see :func:`lookup_rows`).
      cfg: the spec the params were made with (:func:`resolve`).
      hidden: ``[..., T, d_model]`` states the output is added to; required by the gate (without
        it the output is ungated).
      mesh, rules: read the table row-sharded (see :func:`read_memory`); ``None``: plain gather.
    """
    memory = read_memory(params, codes, levels, cfg=cfg, mesh=mesh, rules=rules)
    return project(params, memory, levels, cfg=cfg, hidden=hidden)


def param_axes(cfg: ItemMemSpec) -> dict[str, tuple[str, ...]]:
    """Logical axis names of every parameter :func:`init` makes for ``cfg``
    (``table_rows``/``mem`` for the table, ``mem_concat``/``embed`` for the projections)."""
    return prefixmem.param_axes(cfg.proj)


def param_count(cfg: ItemMemSpec) -> int:
    """Number of parameters :func:`init` creates (PrefixMem's at the default sizes)."""
    per_site = cfg.heads * cfg.mem_dim * cfg.d_model * (2 if cfg.gate else 1) + (
        2 * cfg.d_model if cfg.gate else 0)
    return cfg.rows * cfg.mem_dim + per_site


def flops_per_token(cfg: ItemMemSpec) -> int:
    """FLOPs added per token (a multiply-add is 2), in :func:`sidjax.nn.prefixmem.flops_per_token`'s
    convention: the value and key projections and the gate; the gather and the integer hashing
    count 0. The projection is computed densely at every position (masked to level L after), like
    PrefixMem's at every SID position; at the default sizes the two are equal."""
    return prefixmem.flops_per_token(cfg.proj)


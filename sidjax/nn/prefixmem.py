"""PrefixMem: prefix n-gram memory tables for Semantic ID tokens, as pure functions on pytrees.

At a SID token of level l with item codes (c_1..c_L), PrefixMem reads one memory row per prefix
n-gram ending at level l, (c_{l-n+1}..c_l) for each configured order n <= l. Each (level, order) pair
has its own table: indexed exactly while its key space (product of the code counts) is at most
``exact_threshold``, otherwise through ``hash_heads`` multiplicative-XOR hashes, each modulo its own
prime (distinct across heads, orders and levels). All tables share one flattened ``[rows, mem_dim]``
array with per-table offsets. The rows read at a position fill ``S = len(orders) * hash_heads`` slots
(unused slots are zero), are concatenated and projected to ``d_model``; with the gate on, the result
is scaled by ``alpha = sigmoid(<RMSNorm(h), RMSNorm(W_k m)> / sqrt(d))`` against the hidden state h it
is added to. Positions of level 0 (BOS, padding, text) get zeros.

    params = init(key, cfg)
    delta = apply(params, codes, levels, cfg=cfg, hidden=token_embeddings)   # [B, T, d_model]
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.config import PrefixMemConfig

# Logical axis names of each parameter (mapped to mesh axes by sidjax.parallel rules).
PARAM_AXES = {
    "table": ("table_rows", "mem"),
    "w_value": ("mem_concat", "embed"),
    "w_key": ("mem_concat", "embed"),
    "query_scale": ("embed",),
    "key_scale": ("embed",),
}


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One memory table: rows for the order-``order`` prefix n-grams at ``level``."""

    level: int
    order: int
    head: int
    offset: int
    size: int
    exact: bool
    radix: tuple[int, ...]  # exact: multipliers per n-gram code; hashed: odd uint32 multipliers


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static layout of all tables: specs, slot count, total (padded) rows."""

    tables: tuple[TableSpec, ...]
    num_slots: int
    num_rows: int


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, math.isqrt(n) + 1))


def _primes_from(start: int):
    n = max(start, 2)
    while True:
        if _is_prime(n):
            yield n
        n += 1


def check_config(cfg: PrefixMemConfig) -> None:
    """Raises ``ValueError`` naming the key when ``cfg`` cannot build a layout."""
    if not cfg.codes_per_level:
        raise ValueError("prefixmem.codes_per_level is empty: set it from the SID table "
                         "(sidjax.nn.model does this) before init/apply")
    if cfg.d_model <= 0:
        raise ValueError("prefixmem.d_model must be > 0 (set it to model.d_model)")
    if not cfg.orders or min(cfg.orders) < 1 or len(set(cfg.orders)) != len(cfg.orders):
        raise ValueError(f"prefixmem.orders must be distinct integers >= 1, got {cfg.orders}")
    if cfg.hash_heads < 1 or cfg.mem_dim < 1:
        raise ValueError("prefixmem.hash_heads and prefixmem.mem_dim must be >= 1")


@functools.lru_cache(maxsize=64)
def layout(cfg: PrefixMemConfig) -> Layout:
    """Table specs and offsets for ``cfg`` (cached; ``cfg`` is frozen and hashable)."""
    check_config(cfg)
    ks = cfg.codes_per_level
    primes = _primes_from(cfg.hash_table_size)
    tables, offset = [], 0
    for level in range(1, len(ks) + 1):
        for order in sorted(o for o in cfg.orders if o <= level):
            window = ks[level - order:level]
            space = int(np.prod(window))
            if space <= cfg.exact_threshold:
                radix = tuple(int(np.prod(window[j + 1:])) for j in range(order))
                tables.append(TableSpec(level, order, 0, offset, space, True, radix))
                offset += space
                continue
            for head in range(cfg.hash_heads):
                rng = np.random.default_rng((level, order, head))
                mults = tuple(int(m) | 1 for m in rng.integers(1 << 20, 1 << 31, size=order))
                size = next(primes)
                tables.append(TableSpec(level, order, head, offset, size, False, mults))
                offset += size
    multiple = max(1, cfg.pad_rows_to)
    num_rows = -(-offset // multiple) * multiple
    return Layout(tuple(tables), len(cfg.orders) * cfg.hash_heads, num_rows)


def init(key: jax.Array, cfg: PrefixMemConfig) -> dict[str, jax.Array]:
    """Fresh parameters: the flattened table, value projection and (with the gate) key projection."""
    lay = layout(cfg)
    k_table, k_value, k_key = jax.random.split(key, 3)
    fan_in = lay.num_slots * cfg.mem_dim
    params = {
        "table": jax.random.normal(k_table, (lay.num_rows, cfg.mem_dim), jnp.float32),
        "w_value": jax.random.normal(k_value, (fan_in, cfg.d_model)) / math.sqrt(fan_in),
    }
    if cfg.gate:
        params["w_key"] = jax.random.normal(k_key, (fan_in, cfg.d_model)) / math.sqrt(fan_in)
        params["query_scale"] = jnp.ones((cfg.d_model,))
        params["key_scale"] = jnp.ones((cfg.d_model,))
    return params


def _prefix_codes(codes: jax.Array, max_order: int) -> jax.Array:
    """``[..., T, max_order]``: slot j holds the code j positions back (same item when j < level)."""
    t = codes.shape[-1]
    padded = jnp.concatenate([jnp.zeros(codes.shape[:-1] + (max_order - 1,), codes.dtype), codes],
                             axis=-1)
    start = max_order - 1
    return jnp.stack([padded[..., start - j:start - j + t] for j in range(max_order)], axis=-1)


def _table_rows(spec: TableSpec, prefix: jax.Array) -> jax.Array:
    """Global row of each position for one table; ``prefix[..., j]`` is the code j tokens back."""
    ngram = [prefix[..., spec.order - 1 - j] for j in range(spec.order)]  # oldest code first
    if spec.exact:
        local = sum(c.astype(jnp.int32) * r for c, r in zip(ngram, spec.radix))
    else:
        h = jnp.zeros(prefix.shape[:-1], jnp.uint32)
        for c, m in zip(ngram, spec.radix):
            h = (h ^ ((c.astype(jnp.uint32) + jnp.uint32(1)) * jnp.uint32(m))) * jnp.uint32(
                0x9E3779B1)
            h = h ^ (h >> jnp.uint32(15))
        local = (h % jnp.uint32(spec.size)).astype(jnp.int32)
    return local + spec.offset


def lookup_rows(cfg: PrefixMemConfig, codes: jax.Array, levels: jax.Array) -> jax.Array:
    """Row ids ``[..., T, S]`` (int32, -1 for an empty slot) read at each position.

    ``codes`` and ``levels`` are ``[..., T]``: the raw SID code and level (1-based; 0 = not a SID
    token) of each position. The codes of an item's levels must be consecutive positions.
    Slot ``s = order_index * hash_heads + head``.
    """
    lay = layout(cfg)
    orders = sorted(cfg.orders)
    prefix = _prefix_codes(codes, max(orders))
    rows = jnp.full(codes.shape + (lay.num_slots,), -1, jnp.int32)
    slot_of = {o: i * cfg.hash_heads for i, o in enumerate(orders)}
    for spec in lay.tables:
        slot = slot_of[spec.order] + spec.head
        hit = levels == spec.level
        rows = rows.at[..., slot].set(jnp.where(hit, _table_rows(spec, prefix), rows[..., slot]))
    return rows


def _rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def apply(params: dict[str, jax.Array], codes: jax.Array, levels: jax.Array, *,
          cfg: PrefixMemConfig, hidden: jax.Array | None = None, mesh=None) -> jax.Array:
    """PrefixMem output ``[..., T, d_model]`` to add to the hidden states at SID positions.

    Args:
      params: from :func:`init`.
      codes, levels: ``[..., T]`` int arrays (see :func:`lookup_rows`).
      cfg: the config the params were made with.
      hidden: ``[..., T, d_model]`` states the output is added to; required by the gate (without
        it the output is ungated).
      mesh: a ``jax.sharding.Mesh`` whose rules shard the table by rows; ``None`` for a plain gather.
    """
    rows = lookup_rows(cfg, codes, levels)
    valid = rows >= 0
    if mesh is None:
        gathered = jnp.take(params["table"], jnp.maximum(rows, 0), axis=0)
    else:
        from sidjax.parallel.lookup import sharded_take

        gathered = sharded_take(params["table"], jnp.maximum(rows, 0), mesh=mesh)
    memory = (gathered * valid[..., None]).reshape(rows.shape[:-1] + (-1,))
    memory = memory.astype(params["w_value"].dtype)
    value = jnp.einsum("...TM,MD->...TD", memory, params["w_value"])
    if cfg.gate and hidden is not None:
        key = jnp.einsum("...TM,MD->...TD", memory, params["w_key"])
        score = jnp.sum(_rms_norm(hidden, params["query_scale"]) * _rms_norm(key, params["key_scale"]),
                        axis=-1, keepdims=True)
        value = value * jax.nn.sigmoid(score / math.sqrt(cfg.d_model))
    return value * (levels > 0)[..., None]


def param_count(cfg: PrefixMemConfig) -> int:
    """Number of parameters :func:`init` creates."""
    lay = layout(cfg)
    fan_in = lay.num_slots * cfg.mem_dim
    return lay.num_rows * cfg.mem_dim + fan_in * cfg.d_model * (2 if cfg.gate else 1) + (
        2 * cfg.d_model if cfg.gate else 0)


def flops_per_token(cfg: PrefixMemConfig) -> int:
    """Multiply-add FLOPs (x2) PrefixMem adds per SID token: projections and the gate's dot."""
    fan_in = layout(cfg).num_slots * cfg.mem_dim
    projections = 2 * fan_in * cfg.d_model * (2 if cfg.gate else 1)
    return projections + (8 * cfg.d_model if cfg.gate else 0)

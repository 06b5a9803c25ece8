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

Fusion (``cfg.fusion``): ``concat`` projects the ``S * mem_dim`` concatenated rows (``w_value`` is
``[S * mem_dim, d]``); ``sum`` projects the sum of the rows (``[mem_dim, d]``), S times cheaper.

Injection (``cfg.inject_layers``): ``()`` adds the output to the input embeddings (one projection,
the shapes above). A non-empty tuple adds it to the residual stream before each listed decoder block
instead, with one projection and gate per site (stacked on a leading ``sites`` axis) over memory
rows gathered once: ``memory = read_memory(...)`` then ``x = inject(params, memory, x, levels,
cfg=cfg, layer=i)`` before block ``i``.

Keying is separate from lookup (as MaxText's engram): the parameter-free :func:`memory_rows` (one
new position: :func:`step_rows`) can run ahead of time; ``read_memory(params, rows=rows, cfg=cfg)``
gathers its output. Cached decoding hashes and gathers the new position only.
(Longer than 450 lines because layout, keying, lookup and projection share private table helpers
that itemmem reuses.)

Sharding (``apply(..., mesh=mesh)``): the table is split by rows over the mesh axis that the rules
map ``table_rows`` to (``'model'`` by default) and read with :func:`sidjax.parallel.sharded_take`
inside ``shard_map`` (masked local gather, then ``psum`` over the row axis; the table gradient stays
on the owning shard; see :mod:`sidjax.parallel.lookup` for the communication volume and the
all-to-all alternative). The row count must be a multiple of that axis size: ``for_mesh(cfg, mesh)``
sets ``pad_rows_to`` accordingly. Everything else (projections, gate) is ordinary GSPMD code.

Memory arithmetic (:func:`memory_report`)
-----------------------------------------
Four SID levels with 1e8 hashed rows each (``orders=(1,)``, 2 hash heads of ~5e7 rows per level,
``mem_dim=64``; 400,000,640 rows after padding to 64) on a TPU v5e-64 slice (64 chips, 16 GiB HBM
each), float32 table and Adam (2 moments, float32):

* whole table: 4.0e8 rows x 64 x 4 B = 102.4 GB (95.4 GiB): does not fit on one chip;
* mesh ``(data=2, fsdp=1, model=32)``: 1.25e7 rows per chip = 3.2 GB table + 6.4 GB Adam moments
  = 9.6 GB (8.9 GiB) per chip, leaving ~7 GiB for the decoder and activations;
* mesh ``(data=1, fsdp=1, model=64)``: 1.6 GB + 3.2 GB = 4.8 GB (4.5 GiB) per chip;
* mesh ``(data=8, fsdp=1, model=8)``: 12.8 GB + 25.6 GB = 38.4 GB per chip: does not fit (a
  bfloat16 table, ``param_dtype="bfloat16"``, halves the table but not float32 moments).

The projections are small in comparison (concat, d=2048: 2 x 128 x 2048 x 4 B = 2 MiB).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.config import ModelConfig, PrefixMemConfig

FUSIONS = ("concat", "sum")

# Logical axis names of each parameter with one injection site (mapped to mesh axes by
# sidjax.parallel rules); see param_axes() for the stacked per-site layout.
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
    if cfg.fusion not in FUSIONS:
        raise ValueError(f"prefixmem.fusion must be one of {FUSIONS}, got {cfg.fusion!r}")
    layers = cfg.inject_layers
    if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"prefixmem.inject_layers must be distinct block indices >= 0, got {layers}")
    try:
        jnp.dtype(cfg.param_dtype)
    except TypeError as err:
        raise ValueError(f"prefixmem.param_dtype {cfg.param_dtype!r} is not a dtype name "
                         "(e.g. float32, bfloat16)") from err


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


def num_sites(cfg: PrefixMemConfig) -> int:
    """Number of injection sites (projection sets): 1 at the embeddings, else one per layer."""
    return max(1, len(cfg.inject_layers))


def fan_in(cfg: PrefixMemConfig) -> int:
    """Width of the memory vector the projections read: ``S * mem_dim`` (concat) or ``mem_dim``."""
    slots = layout(cfg).num_slots if cfg.fusion == "concat" else 1
    return slots * cfg.mem_dim


def param_axes(cfg: PrefixMemConfig) -> dict[str, tuple[str, ...]]:
    """Logical axis names of every parameter :func:`init` makes for ``cfg``."""
    if not cfg.inject_layers:
        return {k: v for k, v in PARAM_AXES.items() if cfg.gate or k in ("table", "w_value")}
    return {k: v if k == "table" else ("sites",) + v for k, v in param_axes(
        dataclasses.replace(cfg, inject_layers=())).items()}


def init_projections(key: jax.Array, cfg: PrefixMemConfig) -> dict[str, jax.Array]:
    """Fresh projection and gate parameters (everything but the table), as :func:`init` makes."""
    _, k_value, k_key = jax.random.split(key, 3)  # index 0 is the table's key in init()
    f = fan_in(cfg)
    lead = (len(cfg.inject_layers),) if cfg.inject_layers else ()
    params = {"w_value": jax.random.normal(k_value, lead + (f, cfg.d_model)) / math.sqrt(f)}
    if cfg.gate:
        params["w_key"] = jax.random.normal(k_key, lead + (f, cfg.d_model)) / math.sqrt(f)
        params["query_scale"] = jnp.ones(lead + (cfg.d_model,))
        params["key_scale"] = jnp.ones(lead + (cfg.d_model,))
    return params


def init(key: jax.Array, cfg: PrefixMemConfig) -> dict[str, jax.Array]:
    """Fresh parameters: the flattened table, value projection and (with the gate) key projection."""
    lay = layout(cfg)
    k_table = jax.random.split(key, 3)[0]
    table = jax.random.normal(k_table, (lay.num_rows, cfg.mem_dim), jnp.float32)
    return {"table": table.astype(cfg.param_dtype), **init_projections(key, cfg)}


def for_mesh(cfg: PrefixMemConfig, mesh, rules=None) -> PrefixMemConfig:
    """``cfg`` with ``pad_rows_to`` a multiple of the size of the mesh axis that shards the rows."""
    n = _row_shards(mesh, rules)[1]
    return dataclasses.replace(cfg, pad_rows_to=math.lcm(max(1, cfg.pad_rows_to), n))


def _row_shards(mesh_shape, rules=None) -> tuple[str | None, int]:
    """``(axis, size)`` of the mesh axis the rules give ``table_rows`` (``(None, 1)``: unsharded)."""
    from sidjax.parallel.rules import DEFAULT_RULES

    sizes = _axis_sizes(mesh_shape)
    axes = [a for a in (rules or DEFAULT_RULES).lookup("table_rows") if sizes.get(a, 1) > 1]
    if len(axes) > 1:
        raise ValueError(f"the rules split table_rows over several mesh axes {axes}; "
                         "sharded_take supports one: map table_rows to a single axis")
    return (axes[0], sizes[axes[0]]) if axes else (None, 1)


def _axis_sizes(mesh_shape) -> dict[str, int]:
    """Axis sizes of a ``Mesh``, a ``{axis: size}`` dict or a ``(data, fsdp, model)`` tuple."""
    if mesh_shape is None:
        return {}
    if hasattr(mesh_shape, "shape"):
        return {k: int(v) for k, v in dict(mesh_shape.shape).items()}
    if isinstance(mesh_shape, dict):
        return {k: int(v) for k, v in mesh_shape.items()}
    from sidjax.parallel.mesh import MESH_AXES

    if len(mesh_shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {tuple(mesh_shape)} must give one size per axis {MESH_AXES}")
    return {k: int(v) for k, v in zip(MESH_AXES, mesh_shape)}


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


def _rows_of_prefix(cfg: PrefixMemConfig, prefix: jax.Array, levels: jax.Array) -> jax.Array:
    """Row ids ``[..., S]`` of positions whose prefix codes are ``prefix [..., max_order]``."""
    lay = layout(cfg)
    orders = sorted(cfg.orders)
    rows = jnp.full(levels.shape + (lay.num_slots,), -1, jnp.int32)
    slot_of = {o: i * cfg.hash_heads for i, o in enumerate(orders)}
    for spec in lay.tables:
        slot = slot_of[spec.order] + spec.head
        hit = levels == spec.level
        rows = rows.at[..., slot].set(jnp.where(hit, _table_rows(spec, prefix), rows[..., slot]))
    return rows


def memory_rows(cfg: PrefixMemConfig, codes: jax.Array, levels: jax.Array) -> jax.Array:
    """Row ids ``[..., T, S]`` (int32, -1 for an empty slot) read at each position: the keying
    step, parameter-free (no table or projection), for ``read_memory(params, rows=...)``.

    ``codes`` and ``levels`` are ``[..., T]``: the raw SID code and level (1-based; 0 = not a SID
    token) of each position. The codes of an item's levels must be consecutive positions.
    Slot ``s = order_index * hash_heads + head``.
    """
    return _rows_of_prefix(cfg, _prefix_codes(codes, max(cfg.orders)), levels)


lookup_rows = memory_rows  # the earlier name


def step_rows(cfg: PrefixMemConfig, codes: jax.Array, level: jax.Array) -> jax.Array:
    """Row ids ``[..., S]`` of ONE new position (level ``level [...]``), parameter-free: equal to
    ``memory_rows(cfg, codes, levels)[..., -1, :]`` but hashing that position only. ``codes [...,
    W]`` end with its code; only the last ``max(orders)`` (all its n-grams reach) are read."""
    return _rows_of_prefix(cfg, _last_prefix(codes, max(cfg.orders)), level)


def _last_prefix(codes: jax.Array, max_order: int) -> jax.Array:
    """``_prefix_codes(codes, max_order)[..., -1, :]``, from the last ``max_order`` codes only."""
    return _prefix_codes(codes[..., -max_order:], max_order)[..., -1, :]


def _rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rows_arg(rows, codes, levels, keying, cfg):
    """``rows`` if given (then without codes/levels), else ``keying(cfg, codes, levels)``."""
    if (rows is None) == (codes is None or levels is None):
        raise TypeError("read_memory takes codes and levels, or precomputed rows=, not both")
    return keying(cfg, codes, levels) if rows is None else rows


def read_memory(params: dict[str, jax.Array], codes: jax.Array | None = None,
                levels: jax.Array | None = None, *, rows: jax.Array | None = None,
                cfg: PrefixMemConfig, mesh=None, rules=None) -> jax.Array:
    """The fused memory vector ``[..., T, fan_in(cfg)]`` of each position (zeros off SID tokens).

    Give ``codes, levels [..., T]`` or ``rows``: precomputed :func:`memory_rows` ``[..., T, S]`` (the
    same result, bit for bit) or :func:`step_rows` ``[..., S]`` (giving ``[..., fan_in]``).

    ``mesh``/``rules``: read the table row-sharded over the axis ``rules`` map ``table_rows`` to
    (see the module docstring); ``None`` for a plain gather.
    """
    rows = _rows_arg(rows, codes, levels, memory_rows, cfg)
    valid = rows >= 0
    ids = jnp.maximum(rows, 0)
    axis, n = _row_shards(mesh, rules)
    table = params["table"]
    if axis is None:
        gathered = jnp.take(table, ids, axis=0)
    else:
        from sidjax.parallel.lookup import sharded_take
        from sidjax.parallel.rules import DEFAULT_RULES

        if table.shape[0] % n:
            raise ValueError(
                f"the PrefixMem table has {table.shape[0]} rows, not a multiple of the {axis!r} "
                f"mesh axis size {n}; set prefixmem.pad_rows_to to a multiple of {n} "
                "(prefixmem.for_mesh(cfg, mesh) does it) and re-initialise")
        batch_axes = (rules or DEFAULT_RULES).lookup("batch")
        gathered = sharded_take(table, ids, mesh=mesh, row_axis=axis, batch_axes=batch_axes)
    gathered = (gathered * valid[..., None]).astype(jnp.float32)  # [..., T, S, M]
    if cfg.fusion == "sum":
        return jnp.sum(gathered, axis=-2)
    return gathered.reshape(rows.shape[:-1] + (-1,))


def _site(params: dict[str, jax.Array], cfg: PrefixMemConfig, site: int) -> dict[str, jax.Array]:
    if not cfg.inject_layers:
        if site != 0:
            raise ValueError(f"site {site} requested but prefixmem.inject_layers is empty (one site)")
        return params
    return {k: v if k == "table" else v[site] for k, v in params.items()}


def project(params: dict[str, jax.Array], memory: jax.Array, levels: jax.Array, *,
            cfg: PrefixMemConfig, hidden: jax.Array | None = None, site: int = 0) -> jax.Array:
    """Projects (and gates against ``hidden``) a :func:`read_memory` output: ``[..., T, d_model]``.

    ``site`` picks the projection set (the index into ``cfg.inject_layers``; 0 at the embeddings).
    """
    p = _site(params, cfg, site)
    value = jnp.einsum("...TF,FD->...TD", memory, p["w_value"])
    if cfg.gate and hidden is not None:
        key = jnp.einsum("...TF,FD->...TD", memory, p["w_key"])
        score = jnp.sum(_rms_norm(hidden, p["query_scale"]) * _rms_norm(key, p["key_scale"]),
                        axis=-1, keepdims=True)
        value = value * jax.nn.sigmoid(score / math.sqrt(cfg.d_model))
    return value * (levels > 0)[..., None]


def apply(params: dict[str, jax.Array], codes: jax.Array, levels: jax.Array, *,
          cfg: PrefixMemConfig, hidden: jax.Array | None = None, mesh=None, rules=None,
          site: int = 0) -> jax.Array:
    """PrefixMem output ``[..., T, d_model]`` to add to the hidden states at SID positions.

    Args:
      params: from :func:`init`.
      codes, levels: ``[..., T]`` int arrays (see :func:`memory_rows`).
      cfg: the config the params were made with.
      hidden: ``[..., T, d_model]`` states the output is added to; required by the gate (without
        it the output is ungated).
      mesh: a ``jax.sharding.Mesh``; the table is read row-sharded over the axis ``rules``
        (default :data:`sidjax.parallel.DEFAULT_RULES`) map ``table_rows`` to. ``None``: plain
        gather.
      site: projection set to use when ``cfg.inject_layers`` is non-empty.
    """
    memory = read_memory(params, codes, levels, cfg=cfg, mesh=mesh, rules=rules)
    return project(params, memory, levels, cfg=cfg, hidden=hidden, site=site)


def inject(params: dict[str, jax.Array], memory: jax.Array | None, x: jax.Array,
           levels: jax.Array, *, cfg: PrefixMemConfig, layer: int | None) -> jax.Array:
    """Residual stream ``x`` after PrefixMem's injection at ``layer`` (unchanged if none there).

    A decoder calls it with ``layer=None`` on the input embeddings and with ``layer=i`` before
    block ``i``; ``memory`` is :func:`read_memory` of the sequence, computed once. With an empty
    ``cfg.inject_layers`` only ``layer=None`` injects; otherwise only the listed blocks do.
    """
    if layer is None:
        if cfg.inject_layers:
            return x
        site = 0
    elif layer in cfg.inject_layers:
        site = cfg.inject_layers.index(layer)
    else:
        return x
    return x + project(params, memory, levels, cfg=cfg, hidden=x, site=site).astype(x.dtype)


def param_count(cfg: PrefixMemConfig) -> int:
    """Number of parameters :func:`init` creates."""
    per_site = fan_in(cfg) * cfg.d_model * (2 if cfg.gate else 1) + (
        2 * cfg.d_model if cfg.gate else 0)
    return layout(cfg).num_rows * cfg.mem_dim + num_sites(cfg) * per_site


def flops_per_token(cfg: PrefixMemConfig) -> int:
    """FLOPs PrefixMem adds per SID token (a multiply-add is 2): projections, gate, row sum."""
    projections = 2 * fan_in(cfg) * cfg.d_model * (2 if cfg.gate else 1)
    fuse = layout(cfg).num_slots * cfg.mem_dim if cfg.fusion == "sum" else 0
    return num_sites(cfg) * (projections + (8 * cfg.d_model if cfg.gate else 0)) + fuse


def memory_report(cfg: PrefixMemConfig, mesh_shape, *, rules=None,
                  optimizer_slots: int = 2) -> dict:
    """Bytes per device of PrefixMem's parameters (and optimizer moments) on a mesh.

    Args:
      cfg: the PrefixMem config (the table uses ``cfg.param_dtype``; projections are float32).
      mesh_shape: a ``Mesh``, a ``{axis: size}`` dict or ``(data, fsdp, model)`` sizes.
      rules: logical-to-mesh axis rules (default :data:`sidjax.parallel.DEFAULT_RULES`).
      optimizer_slots: float32 moments kept per parameter (2 for Adam, 0 to leave them out).

    Returns:
      A dict: ``devices``, ``row_axis``, ``row_shards``, ``table_rows`` (padded to the row shards),
      ``table_dtype``, ``table_bytes`` (whole table), ``table_bytes_per_device``,
      ``projection_bytes_per_device``, ``optimizer_bytes_per_device``, ``total_bytes_per_device``.
    """
    import types

    from sidjax.parallel.rules import logical_to_spec

    sizes = _axis_sizes(mesh_shape)
    axis, n = _row_shards(sizes, rules)
    rows = -(-layout(cfg).num_rows // n) * n
    shapes = {k: v.shape for k, v in jax.eval_shape(
        lambda: init_projections(jax.random.key(0), cfg)).items()}
    shapes["table"] = (rows, cfg.mem_dim)
    fake_mesh = types.SimpleNamespace(shape=sizes)

    def per_device(name: str) -> int:
        spec = logical_to_spec(param_axes(cfg)[name], rules, mesh=fake_mesh)
        count = 1
        for dim, entry in zip(shapes[name], spec):
            axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
            count *= -(-dim // math.prod(sizes[a] for a in axes))
        return count

    table_item = jnp.dtype(cfg.param_dtype).itemsize
    table_dev = per_device("table") * table_item
    proj_elems = sum(per_device(k) for k in shapes if k != "table")
    optimizer = optimizer_slots * 4 * (per_device("table") + proj_elems)
    return {
        "devices": math.prod(sizes.values()) if sizes else 1,
        "row_axis": axis,
        "row_shards": n,
        "table_rows": rows,
        "table_dtype": str(jnp.dtype(cfg.param_dtype)),
        "table_bytes": rows * cfg.mem_dim * table_item,
        "table_bytes_per_device": table_dev,
        "projection_bytes_per_device": proj_elems * 4,
        "optimizer_bytes_per_device": optimizer,
        "total_bytes_per_device": table_dev + proj_elems * 4 + optimizer,
    }


def resolve_prefixmem(cfg: ModelConfig, codes_per_level: tuple[int, ...]) -> PrefixMemConfig:
    """The PrefixMem config of model ``cfg`` with the SID code counts and ``d_model`` filled in."""
    pm = cfg.prefixmem
    return dataclasses.replace(pm, codes_per_level=tuple(codes_per_level),
                               d_model=pm.d_model or cfg.d_model)

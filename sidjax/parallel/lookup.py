"""Embedding lookup from a table sharded by rows over one mesh axis.

``sharded_take(table, ids, mesh=mesh)`` equals ``table[ids]`` but never gathers the table: the
``[R, D]`` table is split into ``n`` contiguous row blocks over ``row_axis`` (``'model'`` by
default), the ids are split over the batch axes, and inside ``shard_map`` every device

1. gathers, for its slice of the batch, the rows that fall in its own block (ids outside the
   block read a dummy local row and are masked to zero), then
2. sums the partial results over ``row_axis`` with ``psum``. Exactly one shard owns each id, so
   the sum adds one real row to ``n - 1`` zeros and is exact in any dtype.

The backward pass is the transpose: the ``psum`` becomes a free broadcast of the (already
replicated over ``row_axis``) output cotangent, the masked gather becomes a local scatter-add into
the owning shard only, and the table gradient block ``[R / n, D]`` is summed over the batch axes
like any data-parallel gradient.

Communication volume
--------------------
With ids of shape ``[B, T, S]`` (batch, history length, Semantic ID levels), ``b`` batch shards
and ``n`` row shards, each device holds a dense partial output of ``(B / b) * T * S * D`` elements
and the ring all-reduce over ``row_axis`` moves about ``2 (n - 1) / n * (B / b) * T * S * D``
elements per device per lookup (forward only; the backward needs no collective on the
activations). Replicating or all-gathering the table instead would move / store ``R * D``
elements per device, so row sharding wins whenever ``2 * (B / b) * T * S`` is well below ``R``,
the usual case for large item / Semantic ID vocabularies, and the table never has to fit whole on
one device. The price is that the ``n`` devices of a row group all see the same ``B / b`` ids
(the batch cannot also be split over ``row_axis``), so ``(n - 1) / n`` of the gathers and of the
all-reduced bytes are zeros.

All-to-all alternative (not implemented)
----------------------------------------
For very large per-device batches, split the ids over ``row_axis`` as well and route them
MoE-style: each device buckets its ids by owner shard (``id // (R / n)``) into fixed-capacity
buffers (static shapes; overflow dropped or sent in a second round; duplicate ids may be
merged first), an ``all_to_all`` sends the ids to their owners, owners gather locally, a second
``all_to_all`` returns the rows, and a local un-permute restores the order. Each row then crosses
the network once, about ``(n - 1) / n * B T S D / (b n)`` elements per device, roughly ``2 n``
times less than the ``psum``, with no redundant gathers, at the cost of sort/permute work,
capacity padding, and an ``all_to_all`` pair again in the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from sidjax.parallel.mesh import axis_size


def pad_rows(num_rows: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= num_rows`` (the padded table height).

    Pad the table with that many rows (e.g. zeros) before sharding it over an axis of size
    ``multiple``; the extra rows are never looked up by valid ids.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    if num_rows < 0:
        raise ValueError(f"num_rows must be non-negative, got {num_rows}")
    return -(-num_rows // multiple) * multiple


def _batch_axes(mesh: Mesh, batch_axes: Sequence[str], row_axis: str, batch: int) -> tuple:
    """Batch axes (in order) that exist in ``mesh``, are > 1, and evenly split ``batch``."""
    kept: list[str] = []
    prod = 1
    for ax in batch_axes:
        size = axis_size(mesh, ax)
        if ax == row_axis or size == 1 or ax in kept:
            continue
        if batch % (prod * size) == 0:
            kept.append(ax)
            prod *= size
    return tuple(kept)


def sharded_take(
    table: jax.Array,
    ids: jax.Array,
    *,
    mesh: Mesh | None = None,
    row_axis: str = "model",
    batch_axes: Sequence[str] = ("data", "fsdp"),
) -> jax.Array:
    """``table[ids]`` for a ``[R, D]`` table sharded by rows over ``row_axis``.

    Args:
      table: ``[R, D]`` embedding table. ``R`` must be a multiple of the ``row_axis`` size (pad
        with :func:`pad_rows`). Any input sharding works; the function asks for
        ``P(row_axis, None)``.
      ids: integer ids of any shape ``[...]``, each in ``[0, R)``. The leading dimension is
        split over those ``batch_axes`` (in order) whose combined size divides it; the rest of
        the dimensions (and a leading dim that nothing divides) are replicated.
      mesh: the device mesh. ``None``, or a mesh where ``row_axis`` is absent or of size 1, gives
        plain ``jnp.take(table, ids, axis=0)``.
      row_axis: mesh axis the table rows are split over.
      batch_axes: mesh axes the leading id dimension may be split over.

    Returns:
      ``ids.shape + (D,)`` array equal to ``table[ids]``, sharded like the ids on the leading
      dimension. Works under ``jax.jit`` and ``jax.grad`` (the table gradient lands on the
      owning row shard only).
    """
    ids = jnp.asarray(ids)
    if table.ndim != 2:
        raise ValueError(f"table must be [R, D], got shape {table.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    n = axis_size(mesh, row_axis)
    if n == 1:
        return jnp.take(table, ids, axis=0)

    num_rows = table.shape[0]
    if num_rows % n:
        raise ValueError(
            f"table has {num_rows} rows, not a multiple of the {row_axis!r} axis size {n}; "
            f"pad it to pad_rows({num_rows}, {n}) = {pad_rows(num_rows, n)} rows"
        )
    rows_per_shard = num_rows // n

    lead = _batch_axes(mesh, batch_axes, row_axis, ids.shape[0]) if ids.ndim else ()
    lead_spec = None if not lead else lead[0] if len(lead) == 1 else lead
    ids_spec = PartitionSpec(lead_spec, *([None] * (ids.ndim - 1))) if ids.ndim else PartitionSpec()
    out_spec = PartitionSpec(*ids_spec, None)

    def local_take(tbl: jax.Array, idx: jax.Array) -> jax.Array:
        start = (jax.lax.axis_index(row_axis) * rows_per_shard).astype(idx.dtype)
        local = idx - start
        owned = (local >= 0) & (local < rows_per_shard)
        rows = jnp.take(tbl, jnp.where(owned, local, 0), axis=0, mode="clip")
        rows = jnp.where(owned[..., None], rows, jnp.zeros((), rows.dtype))
        return jax.lax.psum(rows, row_axis)

    return jax.shard_map(
        local_take,
        mesh=mesh,
        in_specs=(PartitionSpec(row_axis, None), ids_spec),
        out_specs=out_spec,
    )(table, ids)

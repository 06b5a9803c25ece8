"""Parameter metadata: every ``nnx.Param`` of the sidjax models carries its logical axis names
and, where it has one, its optimizer role, so both travel with the parameter (as in Flax's
lm1b_nnx and MaxText) instead of being guessed from its name.

* Logical axes: Flax's Variable sharding field, ``out_sharding`` (Flax 0.12 remaps the older
  ``sharding=`` / ``sharding_names=`` to it), one logical name (or ``None``) per dimension, e.g.
  ``("embed", "mlp")``. :func:`sidjax.train.partition.param_logical_axes` reads it and
  :mod:`sidjax.parallel.rules` maps the names to mesh axes. The names are logical, not mesh
  axes, so Flax's eager sharding at creation is switched off for these parameters
  (``eager_sharding=False``); the partitioner places them.
* ``group``: :data:`TABLE` for a memory table (PrefixMem's or the item memory's: no weight
  decay, its own learning rate, counted apart from the decoder) or :data:`ADAPTER` for
  PrefixMem's projections and gate (the only parameters trained during
  ``train.freeze_decoder_steps``); absent otherwise. :mod:`sidjax.train.optim` reads it.

    self.w = param(init(key, (d, f)), ("embed", "mlp"))
    self.memory = param(table, ("table_rows", "mem"), group=TABLE)
    nnx.Linear(d, v, kernel_metadata=metadata(("embed", "vocab")), rngs=rngs)  # built-ins
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

AXES = "out_sharding"  # Flax's Variable sharding metadata field
GROUP = "group"
TABLE = "table"
ADAPTER = "adapter"
GROUPS = (TABLE, ADAPTER)

Axes = tuple[str | None, ...]


def metadata(axes: Sequence[str | None], group: str | None = None) -> dict[str, Any]:
    """Variable metadata naming ``axes`` (and ``group``): the keyword arguments of
    :func:`param`, or the ``*_metadata`` argument of Flax's built-in layers."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"parameter group {group!r}; use one of {GROUPS} or None")
    meta: dict[str, Any] = {AXES: tuple(axes), "eager_sharding": False}
    if group is not None:
        meta[GROUP] = group
    return meta


def param(value: Any, axes: Sequence[str | None], *, group: str | None = None) -> nnx.Param:
    """``nnx.Param(value)`` with the logical ``axes`` of its dimensions (and ``group``)."""
    if len(axes) != jax.numpy.ndim(value):
        raise ValueError(f"{len(axes)} logical axes {tuple(axes)} for a parameter of shape "
                         f"{jax.numpy.shape(value)}")
    return nnx.Param(value, **metadata(axes, group))


def is_variable(x: Any) -> bool:
    """Whether ``x`` is an ``nnx.Variable`` (the leaves of an ``nnx.State`` that carry metadata)."""
    return isinstance(x, nnx.Variable)


def logical_axes(var: Any) -> Axes | None:
    """The logical axis names of a parameter (None: a raw array, or a Param without them)."""
    if not is_variable(var):
        return None
    axes = var.get_metadata().get(AXES)
    return None if axes is None else tuple(axes)


def group(var: Any) -> str | None:
    """The ``group`` tag of a parameter (:data:`TABLE`, :data:`ADAPTER` or None)."""
    return var.get_metadata().get(GROUP) if is_variable(var) else None


def path_str(path) -> str:
    """``a/b/0/c`` of a pytree path (dict keys, attribute names, sequence indices)."""
    return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))))
                    for p in path)


def map_params(fn, params: Any) -> Any:
    """``fn(path, variable)`` for every Variable of ``params`` (an ``nnx.State`` or a pytree of
    Variables), in a tree shaped like ``params`` (each Variable holding ``fn``'s result, as
    ``jax.tree.map`` over the arrays gives). Raises a one-line ``ValueError`` naming the path of
    a raw array: the metadata lives on the Variables, so pass the model's ``nnx.State``
    (``nnx.split`` / ``nnx.state``), not plain arrays."""
    leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_variable)[0]
    out = []
    for path, var in leaves:
        if not is_variable(var):
            raise ValueError(
                f"parameter {path_str(path)} is a plain array without metadata; pass the model's "
                "nnx.State (nnx.split/nnx.state), whose nnx.Params carry their logical axes and "
                "group")
        out.append(fn(path, var))
    return jax.tree.unflatten(jax.tree.structure(params), out)

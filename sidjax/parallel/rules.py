"""The one table mapping logical tensor dimension names to physical mesh axes.

Modules annotate their parameters and activations with *logical* dimension names (MaxText
vocabulary) and never mention mesh axes; this table is the only place that says how they are laid
out on the ``('data', 'fsdp', 'model')`` mesh of :mod:`sidjax.parallel.mesh`:

==============  ====================  =====================================================
logical name    mesh axes             used for
==============  ====================  =====================================================
``batch``       ``('data', 'fsdp')``  leading batch dimension of inputs and activations
``table_rows``  ``'model'``           rows of the Semantic ID / item embedding table
``embed``       ``'fsdp'``            model width of parameters (FSDP shards weights here)
``mlp``         ``'model'``           MLP hidden units
``heads``       ``'model'``           attention heads
``vocab``       ``'model'``           output vocabulary / codebook logits
``kv``          ``None``              per-head feature dimension
``length``      ``None``              sequence length
``levels``      ``None``              Semantic ID levels (codebooks per item)
``mem``         ``None``              width of one PrefixMem memory row
``mem_concat``  ``None``              PrefixMem projection input (rows of all slots)
``sites``       ``None``              PrefixMem injection sites (one projection per site)
==============  ====================  =====================================================

Resolution (:func:`logical_to_spec`) goes left to right over a tensor's dimensions. A mesh axis
already claimed by an earlier dimension is dropped from later ones, so an activation
``('batch', 'length', 'embed')`` becomes ``P(('data', 'fsdp'), None, None)``: the batch keeps
``fsdp`` and ``embed`` is left whole. With ``strict=True`` such a clash raises instead. When a mesh
is given, axes it lacks or that have size 1 map to ``None`` too, so on one CPU device every spec is
fully replicated and sharding is a no-op.

``DEFAULT_RULES.pairs`` is in the ``((name, axes), ...)`` format that Flax's
``nn.logical_axis_rules`` / ``nnx.logical_axis_rules`` accept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
LogicalNames = tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class AxisRules:
    """An immutable table of ``(logical_name, mesh_axes)`` pairs.

    ``mesh_axes`` is a mesh axis name, a tuple of them (the dimension is split over their
    product, outermost first), or ``None`` (replicated).
    """

    pairs: tuple[tuple[str, MeshAxes], ...]

    def __post_init__(self) -> None:
        names = [name for name, _ in self.pairs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"logical axis names listed more than once: {dupes}")

    def lookup(self, name: str) -> tuple[str, ...]:
        """Mesh axes (possibly empty) for logical ``name``; unknown names raise ``KeyError``."""
        for key, axes in self.pairs:
            if key == name:
                if axes is None:
                    return ()
                return (axes,) if isinstance(axes, str) else tuple(axes)
        known = ", ".join(k for k, _ in self.pairs)
        raise KeyError(f"unknown logical axis name {name!r}; known names: {known}")

    def replace(self, **overrides: MeshAxes) -> AxisRules:
        """A copy with the given names remapped (or added, at the end)."""
        pairs = [(k, overrides.pop(k, v)) for k, v in self.pairs]
        pairs.extend(overrides.items())
        return AxisRules(tuple(pairs))


DEFAULT_RULES = AxisRules(
    (
        ("batch", ("data", "fsdp")),
        ("table_rows", "model"),
        ("embed", "fsdp"),
        ("mlp", "model"),
        ("heads", "model"),
        ("vocab", "model"),
        ("kv", None),
        ("length", None),
        ("levels", None),
        ("mem", None),
        ("mem_concat", None),
        ("sites", None),
        ("content", None),  # MSP: the content-vector dimension (sidjax.nn.msp)
        ("experts", None),  # MSP: its expert projections
    )
)
"""The project-wide logical-to-physical axis table."""


def logical_to_spec(
    names: Sequence[str | None],
    rules: AxisRules | None = None,
    *,
    mesh: Mesh | None = None,
    strict: bool = False,
) -> PartitionSpec:
    """Translate one tensor's logical dimension names into a ``PartitionSpec``.

    Args:
      names: one logical name (or ``None`` = replicated) per tensor dimension.
      rules: the table; defaults to :data:`DEFAULT_RULES`.
      mesh: when given, mesh axes absent from it or of size 1 are dropped (so a one-device mesh
        gives a fully replicated spec).
      strict: raise ``ValueError`` when a mesh axis would be used by two dimensions, instead of
        keeping it on the first one only.

    Returns:
      A ``PartitionSpec`` with one entry per dimension: ``None``, an axis name, or a tuple of
      axis names.
    """
    rules = DEFAULT_RULES if rules is None else rules
    sizes = None if mesh is None else dict(mesh.shape)
    used: dict[str, int] = {}
    entries: list[MeshAxes] = []
    for dim, name in enumerate(names):
        axes = () if name is None else rules.lookup(name)
        kept = []
        for ax in axes:
            if sizes is not None and sizes.get(ax, 1) == 1:
                continue
            if ax in used:
                if strict:
                    raise ValueError(
                        f"mesh axis {ax!r} used by dimension {used[ax]} ({names[used[ax]]!r}) "
                        f"and dimension {dim} ({name!r}) of logical axes {tuple(names)}"
                    )
                continue
            used[ax] = dim
            kept.append(ax)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*entries)


def named_sharding(
    mesh: Mesh, names: Sequence[str | None], rules: AxisRules | None = None
) -> NamedSharding:
    """``NamedSharding`` on ``mesh`` for a tensor with logical dimension ``names``."""
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh=mesh))


def _is_names_leaf(x: Any) -> bool:
    return x is None or (isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x))


def logical_shardings(logical_tree: Any, mesh: Mesh, rules: AxisRules | None = None) -> Any:
    """Map a pytree whose leaves are logical-name tuples to a pytree of ``NamedSharding``.

    A leaf is a tuple of names/``None`` (one per dimension; ``()`` for scalars) or ``None``
    (fully replicated). The result can be passed as ``in_shardings``/``out_shardings`` to
    ``jax.jit``.
    """

    def one(names: LogicalNames | None) -> NamedSharding:
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        return named_sharding(mesh, names, rules)

    return jax.tree.map(one, logical_tree, is_leaf=_is_names_leaf)


def shard_pytree(tree: Any, logical_tree: Any, mesh: Mesh, rules: AxisRules | None = None) -> Any:
    """Place every array of ``tree`` on ``mesh`` per the matching leaf of ``logical_tree``.

    ``logical_tree`` has the structure of ``tree`` with each array replaced by its logical-name
    tuple (or ``None`` for replicated). Each tuple's length must equal the array's rank.
    """

    def one(names: LogicalNames | None, x: Any) -> NamedSharding:
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        if len(names) != x.ndim:
            raise ValueError(
                f"logical axes {names} have {len(names)} entries but the array has shape {x.shape}"
            )
        return named_sharding(mesh, names, rules)

    shardings = jax.tree.map(one, logical_tree, tree, is_leaf=_is_names_leaf)
    return jax.device_put(tree, shardings)

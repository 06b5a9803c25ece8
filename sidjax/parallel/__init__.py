"""Parallelism for sidjax: the device mesh, the logical axis rules table, sharded lookups.

* :mod:`sidjax.parallel.mesh`: ``MeshConfig`` / ``make_mesh`` for the ``('data', 'fsdp', 'model')``
  mesh.
* :mod:`sidjax.parallel.rules`: ``DEFAULT_RULES`` (the one logical-to-mesh-axis table),
  ``logical_to_spec``, ``named_sharding``, ``logical_shardings``, ``shard_pytree``.
* :mod:`sidjax.parallel.lookup`: ``sharded_take`` (row-sharded embedding gather) and ``pad_rows``.
* :mod:`sidjax.parallel.axes`: the metadata every ``nnx.Param`` carries (its logical axes, in
  Flax's ``out_sharding`` field, and its optimizer ``group``): ``param``, ``metadata``.
"""

from sidjax.parallel.lookup import pad_rows, sharded_take
from sidjax.parallel.mesh import MESH_AXES, MeshConfig, axis_size, make_mesh
from sidjax.parallel.rules import (
    DEFAULT_RULES,
    AxisRules,
    logical_shardings,
    logical_to_spec,
    named_sharding,
    shard_pytree,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "AxisRules",
    "MeshConfig",
    "axis_size",
    "logical_shardings",
    "logical_to_spec",
    "make_mesh",
    "named_sharding",
    "pad_rows",
    "shard_pytree",
    "sharded_take",
]

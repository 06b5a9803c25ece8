"""Where the training state and the batches live: logical axes of the model's parameters and
the partitioners that turn them into shardings.

Every parameter names the logical dimensions of its array in its own ``nnx.Param`` metadata
(Flax's ``out_sharding`` field, set where the parameter is created; :mod:`sidjax.parallel.axes`);
:func:`param_logical_axes` reads them from the model's state, and :mod:`sidjax.parallel.rules`
maps them to the ``('data', 'fsdp', 'model')`` mesh, so data parallelism, FSDP (weights and
optimizer state split over ``fsdp``) and table sharding (PrefixMem rows over ``model``) are
chosen by the mesh sizes alone. On one device :class:`NoOpPartitioner` leaves everything where
it is (RecML style).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sidjax.parallel import DEFAULT_RULES, AxisRules, MeshConfig, logical_to_spec, make_mesh
from sidjax.parallel.axes import logical_axes, map_params, path_str


def path_names(path) -> tuple[str, ...]:
    """The string keys of a pytree path (dict keys, attribute names, sequence indices)."""
    return tuple(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def param_logical_axes(params: Any) -> Any:
    """Logical dimension names of every parameter, read from its ``nnx.Param`` metadata: a tree
    shaped like ``params`` (an ``nnx.State``, e.g. ``nnx.split(model)[1]`` or
    ``nnx.state(model, nnx.Param)``, or a restored copy of one), each Variable holding a tuple.

    Raises a one-line ``ValueError`` naming the parameter when it has no axis metadata, or not
    one name per dimension (add ``out_sharding=`` to its ``nnx.Param``), or is a plain array.
    """
    def one(path, var):
        axes = logical_axes(var)
        if axes is None:
            raise ValueError(
                f"no logical axes for parameter {path_str(path)} of shape {tuple(var.shape)}: add "
                "out_sharding=(one logical axis name per dimension) to its nnx.Param (Flax's "
                "sharding metadata; sidjax.parallel.axes.param does it)")
        if len(axes) != len(var.shape):
            raise ValueError(
                f"parameter {path_str(path)} of shape {tuple(var.shape)} has {len(axes)} logical "
                f"axes {axes}; its nnx.Param out_sharding= needs one name per dimension")
        return axes

    return map_params(one, params)


def divisible_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """``spec`` without the mesh axes that do not evenly divide their dimension of ``shape``."""
    sizes = dict(mesh.shape)
    entries = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept, prod = [], 1
        for ax in axes:
            if dim % (prod * sizes[ax]) == 0:
                kept.append(ax)
                prod *= sizes[ax]
        entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*entries)


@dataclasses.dataclass(frozen=True)
class NoOpPartitioner:
    """One device: no shardings, no data placement; ``jit`` with donation only."""

    mesh: Mesh | None = None

    def param_shardings(self, params):
        """``None`` for every parameter (leave it where it is)."""
        return jax.tree.map(lambda _: None, params)

    def state_shardings(self, params, opt_state):
        """``(None, None)``: jit keeps the inputs' placement."""
        return None, None

    def shard_batch(self, batch):
        """The batch, unchanged."""
        return batch

    def jit(self, fn, state_shardings, donate_argnums=(0, 1)):
        """``jax.jit(fn, donate_argnums=...)``."""
        return jax.jit(fn, donate_argnums=donate_argnums)


@dataclasses.dataclass(frozen=True)
class MeshPartitioner:
    """Shards the state per the logical axis rules and splits batches over ``('data', 'fsdp')``."""

    mesh: Mesh
    rules: AxisRules = DEFAULT_RULES

    def replicated(self) -> NamedSharding:
        """A fully replicated sharding on the mesh."""
        return NamedSharding(self.mesh, PartitionSpec())

    def param_shardings(self, params):
        """``NamedSharding`` of every parameter from :func:`param_logical_axes` and the rules."""
        def one(names, leaf):
            spec = logical_to_spec(names, self.rules, mesh=self.mesh)
            return NamedSharding(self.mesh, divisible_spec(spec, leaf.shape, self.mesh))

        return jax.tree.map(one, param_logical_axes(params), params,
                            is_leaf=lambda x: isinstance(x, tuple))

    def state_shardings(self, params, opt_state):
        """Shardings of ``(params, opt_state)``; shapes only are read (abstract trees work).

        An optimizer-state leaf whose path ends with a parameter's path and has its shape (Adam
        moments, accumulators) is sharded like that parameter; the rest (counts) is replicated.
        """
        p_shard = self.param_shardings(params)
        by_path = {path_names(p): (leaf.shape, s) for (p, leaf), s in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(p_shard))}

        def one(path, leaf):
            names = path_names(path)
            for start in range(len(names)):
                hit = by_path.get(names[start:])
                if hit is not None and hit[0] == getattr(leaf, "shape", None):
                    return hit[1]
            return self.replicated()

        return p_shard, jax.tree_util.tree_map_with_path(one, opt_state)

    def batch_sharding(self, x) -> NamedSharding:
        """Leading dimension over the ``batch`` rule's axes (those that divide it)."""
        spec = logical_to_spec(("batch",) + (None,) * (np.ndim(x) - 1), self.rules, mesh=self.mesh)
        return NamedSharding(self.mesh, divisible_spec(spec, np.shape(x), self.mesh))

    def shard_batch(self, batch):
        """Places a host batch on the mesh as one global array per field.

        With one process the batch is the global batch. With several, each process passes its
        own share (``sidjax.data.pipeline.train_dataset`` deals examples over processes) and the
        global batch is their concatenation in process order (``process_count`` x the rows).
        """
        count = jax.process_count()

        def one(x):
            x = np.asarray(x)
            global_shape = (x.shape[0] * count,) + x.shape[1:]
            sharding = self.batch_sharding(np.empty(global_shape, dtype=bool))
            if count == 1:
                return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
            return jax.make_array_from_process_local_data(sharding, x, global_shape)

        return jax.tree.map(one, batch)

    def jit(self, fn, state_shardings, donate_argnums=(0, 1)):
        """``fn(params, opt_state, batch, step, key)`` jitted with explicit state shardings."""
        p_shard, o_shard = state_shardings
        return jax.jit(fn, in_shardings=(p_shard, o_shard, None, None, None),
                       out_shardings=(p_shard, o_shard, self.replicated()),
                       donate_argnums=donate_argnums)


def make_partitioner(data: int = 1, fsdp: int = 1, model: int = 1,
                     rules: AxisRules = DEFAULT_RULES):
    """The partitioner for mesh sizes ``(data, fsdp, model)`` (one may be ``-1``: fill).

    A mesh of one device gives :class:`NoOpPartitioner`; otherwise a :class:`MeshPartitioner`
    over the first ``data * fsdp * model`` of ``jax.devices()`` (all of them with a ``-1``; all
    processes' devices when multi-host).
    """
    mesh_cfg = MeshConfig(data=data, fsdp=fsdp, model=model)
    devices = jax.devices()
    if -1 not in mesh_cfg.axis_sizes():
        devices = devices[:int(np.prod(mesh_cfg.axis_sizes()))]
    sizes = mesh_cfg.resolve(len(devices))  # validates, names the sizes on error
    if np.prod(sizes) == 1:
        return NoOpPartitioner()
    return MeshPartitioner(make_mesh(mesh_cfg, devices), rules)


def place_state(partitioner, params, opt_state):
    """``(params, opt_state)`` put on the partitioner's shardings (unchanged for no-op)."""
    p_shard, o_shard = partitioner.state_shardings(params, opt_state)
    if p_shard is None:
        return params, opt_state
    return jax.device_put(params, p_shard), jax.device_put(opt_state, o_shard)

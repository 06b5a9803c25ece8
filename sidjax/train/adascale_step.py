"""The AdaScale side of the training loop (``train.optimizer=adascale``): the number of replicas
``S``, the jitted step on per-replica gradients, the stop at the 1x budget in ``tau`` and the
check of ``S`` on a resume. The transformation itself is :mod:`sidjax.train.adascale`."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from sidjax.config import TrainConfig
from sidjax.train import adascale
from sidjax.train.optim import adascale_replicas


def replica_sharding(p_shard, replicas: int):
    """Shardings of per-replica gradients: the parameter's, behind a leading replica axis over
    ``data`` (when the data axis divides ``replicas`` and the parameter does not use it)."""
    def one(s):
        used = {a for e in s.spec if e for a in ((e,) if isinstance(e, str) else e)}
        size = dict(s.mesh.shape).get("data", 1)
        lead = "data" if size > 1 and replicas % size == 0 and "data" not in used else None
        return NamedSharding(s.mesh, PartitionSpec(lead, *s.spec))

    return jax.tree.map(one, p_shard)


def replica_train_step(grad_fn, tx, replicas: int, grad_accum: int, partitioner,
                        state_shardings) -> Callable:
    """The AdaScale step of :func:`sidjax.train.loop.make_train_step` (``replicas`` > 0)."""
    vgrad = jax.vmap(grad_fn, in_axes=(None, 0, 0))
    p_shard = state_shardings[0]
    constraint = None if p_shard is None else replica_sharding(p_shard, replicas)

    def step_fn(params, opt_state, batch, step, key):
        key = jax.random.fold_in(key, step)
        keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(replicas))
        shards = jax.tree.map(lambda x: x.reshape((replicas, x.shape[0] // replicas)
                                                  + x.shape[1:]), batch)
        if grad_accum == 1:
            (_, metrics), grads = vgrad(params, shards, keys)
        else:
            # in replica r, its rows b*k..b*k+k-1 form micro-batch slot b (as make_train_step)
            micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(
                (replicas, x.shape[1] // grad_accum, grad_accum) + x.shape[2:]), 2, 0), shards)

            def body(total, inputs):
                i, mb = inputs
                mkeys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
                (_, m), g = vgrad(params, mb, mkeys)
                return jax.tree.map(jnp.add, total, (g, m)), None

            zero = jax.eval_shape(vgrad, params, jax.tree.map(lambda x: x[0], micro), keys)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zero[1], zero[0][1]))
            (grads, metrics), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
            grads, metrics = jax.tree.map(lambda x: x / grad_accum, (grads, metrics))
        if constraint is not None:
            grads = jax.lax.with_sharding_constraint(grads, constraint)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        updates, opt_state = tx.update(grads, opt_state, params)
        stats = adascale.find_stats(opt_state)
        metrics["grad_norm"] = optax.tree.norm(jax.tree.map(lambda g: jnp.mean(g, axis=0), grads))
        metrics["learning_rate"] = adascale.find_state(
            opt_state, adascale.AdaScaleWrapState).learning_rate
        metrics["adascale/gain"], metrics["adascale/tau"] = stats.gain, stats.tau
        return optax.apply_updates(params, updates), opt_state, metrics

    if partitioner is None:
        return jax.jit(step_fn, donate_argnums=(0, 1))
    return partitioner.jit(step_fn, state_shardings)


def num_replicas(cfg: TrainConfig, partitioner) -> int:
    """AdaScale's ``S`` for ``cfg`` on ``partitioner``'s mesh (0 with ``train.optimizer=adamw``;
    :func:`sidjax.train.optim.adascale_replicas`)."""
    if cfg.optimizer != "adascale":
        return 0
    mesh = getattr(partitioner, "mesh", None)
    return adascale_replicas(cfg, 1 if mesh is None else dict(mesh.shape).get("data", 1))


class AdaScaleBudget:
    """Whether AdaScale's progress ``tau`` has reached ``train.steps``. ``tau`` grows by the gain,
    at most ``S`` a step, so it is read back from the device (a sync that stalls the queue of
    dispatched steps) only at the first step where it could have reached the budget."""

    def __init__(self, cfg: TrainConfig, replicas: int, start: int):
        self.steps, self.replicas, self.tau, self.next_read = cfg.steps, replicas, 0.0, start

    def reached(self, done: int, opt_state) -> bool:
        """Whether ``tau >= steps`` after ``done`` steps (``opt_state`` is that step's)."""
        if done < self.next_read:
            return False
        self.tau = float(adascale.find_stats(opt_state).tau)
        if self.tau >= self.steps:
            return True
        self.next_read = done + max(1, math.ceil((self.steps - self.tau) / self.replicas))
        return False


def check_resumed_replicas(cfg: TrainConfig, replicas: int, opt_state, start: int,
                            say: Callable[[str], None]) -> None:
    """A resumed AdaScale run with another ``S`` than its checkpoint: refused when ``S`` comes from
    the mesh (``train.adascale_replicas=0``, the mesh may change freely on a resume), logged when
    it was set (a changed value was accepted as a config change)."""
    saved = int(adascale.find_state(opt_state, adascale.AdaScaleWrapState).replicas)
    if saved == replicas:
        return
    if cfg.adascale_replicas == 0:
        raise ValueError(
            f"the checkpoint at step {start} was trained with AdaScale S={saved}, but "
            f"train.adascale_replicas=0 takes S={replicas} from this mesh's data axis: resume "
            f"with train.mesh_data={saved}, or set train.adascale_replicas (with "
            "--allow-config-change)")
    say(f"AdaScale S changes from {saved} (checkpoint at step {start}) to {replicas}")

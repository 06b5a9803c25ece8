"""Next-SID-token training: loss, optax recipe, sharded jitted step, and the loop with orbax
checkpoints, preemption handling and throughput metrics."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sidjax.config import TrainConfig
from sidjax.data.pipeline import PAD, SIDVocab
from sidjax.train import checkpoint
from sidjax.train.partition import make_partitioner, path_names
from sidjax.train.signals import Preempted, sigterm_flag


def token_levels(vocab: SIDVocab) -> np.ndarray:
    """Level of every token id (0 for PAD and BOS)."""
    return np.argmax(vocab.level_mask(), axis=0).astype(np.int32)


def sid_loss(logits: jax.Array, targets: jax.Array, vocab: SIDVocab) -> tuple[jax.Array, dict]:
    """Mean cross-entropy of next SID tokens, each over its own level's codes.

    Returns ``(loss, metrics)`` where metrics hold the loss and per-level token accuracy.
    """
    target_level = jnp.asarray(token_levels(vocab))[targets]
    allowed = jnp.asarray(vocab.level_mask())[target_level]  # B T V
    logits = jnp.where(allowed, logits.astype(jnp.float32), -1e9)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, targets[..., None], axis=-1)[..., 0]
    weight = (targets != PAD).astype(jnp.float32)
    loss = jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets) * weight
    metrics = {"loss": loss}
    for level in range(1, vocab.num_levels + 1):
        at = (target_level == level) * weight
        metrics[f"acc_l{level}"] = jnp.sum(correct * at) / jnp.maximum(jnp.sum(at), 1.0)
    return loss, metrics


def decay_mask(params) -> object:
    """Weight decay on matrices only: not on norms, biases or PrefixMem's memory table."""
    def keep(path, leaf):
        return leaf.ndim >= 2 and "table" not in path_names(path)

    return jax.tree_util.tree_map_with_path(keep, params)


def param_labels(params) -> object:
    """Optimizer group of every parameter: ``table`` (PrefixMem memory), ``no_decay`` (vectors:
    norms, biases, gate scales) or ``decay`` (matrices)."""
    def label(path, leaf):
        if "table" in path_names(path):
            return "table"
        return "decay" if leaf.ndim >= 2 else "no_decay"

    return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup, then cosine decay to 5% (``cosine``) or ``lr * sqrt(warmup / step)``
    (``rsqrt``)."""
    warmup = max(1, cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, warmup, max(cfg.steps, cfg.warmup_steps + 1),
            end_value=cfg.learning_rate * 0.05)
    if cfg.schedule == "rsqrt":
        def rsqrt(step):
            step = jnp.asarray(step, jnp.float32)
            return cfg.learning_rate * jnp.minimum(step / warmup, jnp.sqrt(warmup / jnp.maximum(
                step, 1.0)))
        return rsqrt
    raise ValueError(f"train.schedule must be 'cosine' or 'rsqrt', got {cfg.schedule!r}")


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW per parameter group (:func:`param_labels`): matrices with
    weight decay, vectors without, PrefixMem tables without and at ``prefixmem_lr_mult`` x LR."""
    schedule = make_schedule(cfg)

    def adam(lr, weight_decay):
        return optax.adamw(lr, b1=0.9, b2=0.98, weight_decay=weight_decay)

    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.multi_transform({
            "decay": adam(schedule, cfg.weight_decay),
            "no_decay": adam(schedule, 0.0),
            "table": adam(lambda s: cfg.prefixmem_lr_mult * schedule(s), 0.0),
        }, param_labels),
    )


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def sid_task_loss(vocab: SIDVocab) -> Callable:
    """The next-SID-token loss as a task: ``(model, batch, dropout_key) -> (loss, metrics)``.

    ``batch`` holds ``tokens/codes/levels/targets`` and, for packed rows, ``segment_ids`` and
    ``positions``.
    """
    def loss(model, batch, dropout_key):
        logits = model(batch["tokens"], batch["codes"], batch["levels"], dropout_key=dropout_key,
                       segment_ids=batch.get("segment_ids"), positions=batch.get("positions"))
        return sid_loss(logits, batch["targets"], vocab)

    return loss


def make_train_step(graphdef, tx: optax.GradientTransformation, vocab: SIDVocab | None,
                    dropout: bool, *, partitioner=None, state_shardings=(None, None),
                    grad_accum: int = 1, compute_dtype: str = "float32",
                    loss_fn: Callable | None = None) -> Callable:
    """A jitted ``(params, opt_state, batch, step, key) -> (params, opt_state, metrics)``.

    ``loss_fn(model, batch, dropout_key) -> (loss, metrics)`` is the task (default: the SID loss
    of ``vocab``, :func:`sid_task_loss`); ``dropout_key`` is None when ``dropout`` is off.

    The dropout key of a step is ``fold_in(key, step)`` (and of micro-batch ``i``,
    ``fold_in(that, i)``); params and optimizer state are donated. With ``grad_accum = k`` the
    batch is split into ``k`` micro-batches whose gradients and metrics are averaged. With
    ``compute_dtype="bfloat16"`` the forward and backward run on bf16 copies of the float32
    parameters, which stay the master weights. ``partitioner``/``state_shardings`` (from
    :mod:`sidjax.train.partition`) fix the input and output shardings; ``None`` is plain jit.
    """
    dtype = jnp.dtype(compute_dtype)
    task = loss_fn if loss_fn is not None else sid_task_loss(vocab)

    def params_loss(params, batch, key):
        model = nnx.merge(graphdef, _cast_floats(params, dtype) if dtype != jnp.float32 else params)
        return task(model, batch, key if dropout else None)

    grad_fn = jax.value_and_grad(params_loss, has_aux=True)

    def step_fn(params, opt_state, batch, step, key):
        key = jax.random.fold_in(key, step)
        if grad_accum == 1:
            (_, metrics), grads = grad_fn(params, batch, key)
        else:
            # rows b*k..b*k+k-1 form micro-batch slot b, so each device keeps its own rows
            micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(
                (x.shape[0] // grad_accum, grad_accum) + x.shape[1:]), 0, 1), batch)

            def body(total, inputs):
                i, mb = inputs
                (_, m), g = grad_fn(params, mb, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, total, (g, m)), None

            zero = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), key)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zero[1], zero[0][1]))
            (grads, metrics), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
            grads, metrics = jax.tree.map(lambda x: x / grad_accum, (grads, metrics))
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return optax.apply_updates(params, updates), opt_state, metrics

    if partitioner is None:
        return jax.jit(step_fn, donate_argnums=(0, 1))
    return partitioner.jit(step_fn, state_shardings)


def _count(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def _bytes_per_device(tree) -> int:
    """Largest number of bytes of ``tree`` held by one device."""
    per_device: dict = {}
    for x in jax.tree.leaves(tree):
        for shard in getattr(x, "addressable_shards", ()):
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0)


def state_report(params, opt_state, seq_len: int, partitioner=None) -> dict:
    """What a run holds, before step 1: parameter counts (decoder, PrefixMem tables), training
    FLOPs per token (6 x matmul parameters + 12 x layers x seq_len x attention width), bytes per
    device of params and optimizer state, the mesh and the sharding of the largest arrays."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    table = sum(x.size for p, x in leaves if "table" in path_names(p))
    embed = sum(x.size for p, x in leaves if "embedding" in path_names(p))
    matmul = sum(x.size for p, x in leaves if x.ndim >= 2) - table - embed
    q_proj = [x for p, x in leaves if path_names(p)[-2:] in (("w_q", "value"), ("w_q",))]
    attn_width = sum(x.shape[1] * x.shape[2] for x in q_proj)  # sum over layers of N * H
    largest = sorted(leaves, key=lambda px: -px[1].size)[:3]
    mesh = getattr(partitioner, "mesh", None)
    return {
        "params_total": _count(params),
        "params_decoder": _count(params) - int(table),
        "params_prefixmem_tables": int(table),
        "flops_per_token": int(6 * matmul + 12 * seq_len * attn_width),
        "param_bytes_per_device": _bytes_per_device(params),
        "opt_state_bytes_per_device": _bytes_per_device(opt_state),
        "mesh": "1 device (no sharding)" if mesh is None else str(dict(mesh.shape)),
        "largest_arrays": {"/".join(n for n in path_names(p) if n != "value"):
                           f"{tuple(x.shape)} {getattr(x, 'sharding', None)}" for p, x in largest},
    }


def init_state(model: nnx.Module, cfg: TrainConfig, partitioner=None):
    """``(graphdef, params, opt_state, tx, partitioner, state_shardings)`` of a fresh run.

    The optimizer state's shapes come from ``jax.eval_shape``; its shardings (and the
    parameters') from the logical axis rules; it is then created directly in place by a jit with
    ``out_shardings``.
    """
    partitioner = partitioner or make_partitioner(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_model)
    graphdef, params = nnx.split(model)
    tx = make_optimizer(cfg)
    shardings = partitioner.state_shardings(params, jax.eval_shape(tx.init, params))
    if shardings[0] is None:
        return graphdef, params, tx.init(params), tx, partitioner, shardings
    params = jax.device_put(params, shardings[0])
    opt_state = jax.jit(tx.init, out_shardings=shardings[1])(params)
    return graphdef, params, opt_state, tx, partitioner, shardings


def _host_params(params):
    """Parameters gathered back as plain single-device arrays (for eval and decoding)."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(jax.device_get(x))), params)


def train(model: nnx.Module, dataset, vocab: SIDVocab | None, cfg: TrainConfig, workdir: Path, *,
          config_hash: str = "", progress: Callable | None = None,
          log: Callable[[str], None] | None = None, partitioner=None,
          loss_fn: Callable | None = None) -> nnx.Module:
    """Trains ``model`` on ``dataset[step]`` batches for ``cfg.steps`` steps; resumes if possible.

    The mesh comes from ``cfg.mesh_data/mesh_fsdp/mesh_model`` (or ``partitioner``). Appends
    metrics (loss, accuracies, grad norm, learning rate, step time, tokens/s, MFU when
    ``cfg.peak_flops`` is set) to ``workdir/metrics.jsonl``; ``log`` gets a plain line per logged
    step. Checkpoints to ``workdir/checkpoints`` every ``cfg.checkpoint_every`` steps and at the
    end. A non-finite loss stops the run with an error naming the step, without saving. SIGTERM
    saves at the next step boundary and raises :class:`~sidjax.train.signals.Preempted`.
    ``loss_fn`` is the task (see :func:`make_train_step`; default: the SID loss of ``vocab``).
    Returns the trained model (its parameters on the default device).
    """
    workdir = Path(workdir)
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"train.batch_size={cfg.batch_size} is not a multiple of "
                         f"train.grad_accum={cfg.grad_accum}")
    graphdef, params, opt_state, tx, partitioner, shardings = init_state(model, cfg, partitioner)
    schedule = make_schedule(cfg)
    manager = checkpoint.manager(workdir / "checkpoints", cfg.max_checkpoints)
    start, params, opt_state = checkpoint.restore_latest(manager, params, opt_state, config_hash,
                                                         log=log)
    step_fn = make_train_step(graphdef, tx, vocab, dropout=True, partitioner=partitioner,
                              state_shardings=shardings, grad_accum=cfg.grad_accum,
                              compute_dtype=cfg.compute_dtype, loss_fn=loss_fn)
    key = jax.random.key(cfg.seed, impl="unsafe_rbg")  # cheap dropout bits on CPU
    log_path = workdir / "metrics.jsonl"
    flops_per_token = None
    window_start, window_steps = time.perf_counter(), 0
    try:
        with sigterm_flag() as stop:
            for step in range(start, cfg.steps):
                batch = partitioner.shard_batch(dataset[step])
                if flops_per_token is None:
                    tokens_per_step = int(np.prod(batch["tokens"].shape))
                    flops_per_token = state_report(
                        params, opt_state, batch["tokens"].shape[1])["flops_per_token"]
                params, opt_state, metrics = step_fn(params, opt_state, batch, step, key)
                window_steps += 1
                done = step + 1
                logged = done % cfg.log_every == 0 or done == cfg.steps
                if progress is not None:
                    progress(done, metrics if logged else None)
                preempt = stop.is_set()
                save = done % cfg.checkpoint_every == 0 or done == cfg.steps or preempt
                if not (save or logged):
                    continue
                metrics = {k: float(v) for k, v in metrics.items()}
                if not math.isfinite(metrics["loss"]) or not math.isfinite(metrics["grad_norm"]):
                    raise FloatingPointError(
                        f"loss {metrics['loss']} / gradient norm {metrics['grad_norm']} at step "
                        f"{done}; nothing saved, the latest checkpoint is the last good one. "
                        "Lower train.learning_rate")
                if logged:
                    elapsed = time.perf_counter() - window_start
                    step_time = elapsed / window_steps
                    metrics.update(step=done, learning_rate=float(schedule(step)),
                                   step_time_s=step_time, steps_per_s=1.0 / step_time,
                                   examples_per_s=cfg.batch_size / step_time,
                                   tokens_per_s=tokens_per_step / step_time)
                    if cfg.peak_flops > 0:
                        metrics["mfu"] = metrics["tokens_per_s"] * flops_per_token / cfg.peak_flops
                    if jax.process_index() == 0:
                        with log_path.open("a") as f:
                            f.write(json.dumps(metrics) + "\n")
                        if log is not None:
                            log(f"step {done}/{cfg.steps} loss {metrics['loss']:.4f} "
                                f"lr {metrics['learning_rate']:.2e} "
                                f"{metrics['tokens_per_s']:,.0f} tok/s")
                    window_start, window_steps = time.perf_counter(), 0
                if save:
                    checkpoint.save(manager, done, params, opt_state, config_hash)
                if preempt:
                    manager.wait_until_finished()
                    raise Preempted(done)
    finally:
        manager.wait_until_finished()
        manager.close()
    if partitioner.mesh is not None:
        params = _host_params(params)
    return nnx.merge(graphdef, params)

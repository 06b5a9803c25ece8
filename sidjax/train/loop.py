"""Next-SID-token training: the sharded jitted step and the loop with orbax checkpoints (last
k plus the best by validation), preemption handling, validation, early stopping and throughput
metrics. The loss is :mod:`sidjax.train.loss`, the optimizer recipe :mod:`sidjax.train.optim`, the
state/FLOPs report :mod:`sidjax.train.accounting`."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from sidjax.config import TrainConfig
from sidjax.tokens import SIDVocab
from sidjax.train import checkpoint
from sidjax.train.accounting import state_report, tied_output_params
from sidjax.train.adascale_step import (  # noqa: F401 - num_replicas is also public here
    AdaScaleBudget,
    check_resumed_replicas,
    num_replicas,
    replica_train_step,
)
from sidjax.train.batches import BatchStream
from sidjax.train.loss import (  # noqa: F401 - also public here
    sid_loss,
    sid_task_loss,
    sid_token_nll,
    token_levels,
)
from sidjax.train.observe import MetricsWriter, format_state_report
from sidjax.train.optim import make_optimizer, make_schedule
from sidjax.train.partition import make_partitioner
from sidjax.train.signals import any_process, stop_flag
from sidjax.train.validation import BestTracker, check_validation_config, is_eval_step


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def make_train_step(graphdef, tx: optax.GradientTransformation, vocab: SIDVocab | None,
                    dropout: bool, *, partitioner=None, state_shardings=(None, None),
                    grad_accum: int = 1, compute_dtype: str = "float32",
                    loss_fn: Callable | None = None, label_smoothing: float = 0.0,
                    replicas: int = 0) -> Callable:
    """A jitted ``(params, opt_state, batch, step, key) -> (params, opt_state, metrics)``.

    ``loss_fn(model, batch, dropout_key) -> (loss, metrics)`` is the task (default: the SID loss
    of ``vocab`` with ``label_smoothing``, :func:`sid_task_loss`); ``dropout_key`` is None when
    ``dropout`` is off.

    The dropout key of a step is ``fold_in(key, step)`` (and of micro-batch ``i``,
    ``fold_in(that, i)``); params and optimizer state are donated. With ``grad_accum = k`` the
    batch is split into ``k`` micro-batches whose gradients and metrics are averaged. With
    ``compute_dtype="bfloat16"`` the forward and backward run on bf16 copies of the float32
    parameters, which stay the master weights. ``partitioner``/``state_shardings`` (from
    :mod:`sidjax.train.partition`) fix the input and output shardings; ``None`` is plain jit.

    ``replicas = S > 0`` (AdaScale, ``tx`` from :func:`sidjax.train.optim.make_adascale_optimizer`):
    ``tx`` gets per-replica gradients ``[S, ...]``, replica ``r``'s over rows
    ``r*B/S..(r+1)*B/S-1`` (vmapped; dropout key ``fold_in(step key, r)``, and with
    ``grad_accum = k`` each replica's rows form ``k`` micro-batches as above). On a mesh the
    replica axis is sharded over ``data`` (contiguous rows: each device's rows stay its own).
    Metrics are replica means, plus ``adascale/gain``, ``adascale/tau`` (after the step) and
    ``learning_rate`` (the 1x schedule at ``floor(tau)`` before it).
    """
    dtype = jnp.dtype(compute_dtype)
    task = loss_fn if loss_fn is not None else sid_task_loss(vocab, label_smoothing)

    def params_loss(params, batch, key):
        model = nnx.merge(graphdef, _cast_floats(params, dtype) if dtype != jnp.float32 else params)
        return task(model, batch, key if dropout else None)

    grad_fn = jax.value_and_grad(params_loss, has_aux=True)
    if replicas:
        return replica_train_step(grad_fn, tx, replicas, grad_accum, partitioner,
                                   state_shardings)

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


def init_state(model: nnx.Module, cfg: TrainConfig, partitioner=None):
    """``(graphdef, params, opt_state, tx, partitioner, state_shardings)`` of a fresh run.

    The optimizer state's shapes come from ``jax.eval_shape``; its shardings (and the
    parameters') from the logical axis rules; it is then created directly in place by a jit with
    ``out_shardings``.
    """
    partitioner = partitioner or make_partitioner(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_model)
    graphdef, params = nnx.split(model)
    tx = make_optimizer(cfg, num_replicas(cfg, partitioner) or None)
    shardings = partitioner.state_shardings(params, jax.eval_shape(tx.init, params))
    if shardings[0] is None:
        return graphdef, params, tx.init(params), tx, partitioner, shardings
    params = jax.device_put(params, shardings[0])
    opt_state = jax.jit(tx.init, out_shardings=shardings[1])(params)
    return graphdef, params, opt_state, tx, partitioner, shardings


def _host_params(params):
    """Parameters gathered back as plain single-device arrays (for eval and decoding); arrays
    spread over several processes are all-gathered first."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        return jnp.asarray(np.asarray(jax.device_get(x)))

    return jax.tree.map(one, params)


def _input_shape(batch) -> tuple[int, ...]:
    """Shape of the batch's token inputs (``tokens``, else ``items``, else ``targets``)."""
    for key in ("tokens", "items", "targets"):
        if key in batch:
            return tuple(batch[key].shape)
    return tuple(jax.tree.leaves(batch)[0].shape)


def _check_finite(metrics: dict, done: int) -> None:
    if not math.isfinite(metrics["loss"]) or not math.isfinite(metrics["grad_norm"]):
        raise FloatingPointError(
            f"loss {metrics['loss']} / gradient norm {metrics['grad_norm']} at step {done}; "
            "nothing saved, the latest checkpoint is the last good one. Lower train.learning_rate")


def _validation_line(done: int, valid: dict, tracker: BestTracker) -> str:
    values = " ".join(f"{k.removeprefix('valid/')} {v:.4f}" for k, v in valid.items())
    if tracker.best is None:
        return f"step {done} validation: {values} (no finite {tracker.metric} yet)"
    return (f"step {done} validation: {values} (best {tracker.metric} {tracker.best:.4f} at step "
            f"{tracker.best_step})")


# train.* settings a resumed run may change freely: they decide how a run is logged,
# checkpointed, validated, fed with batches or laid out on devices, not the updates it makes.
# train.steps may change too (extending a run is legitimate), as long as it is not below the step
# already trained; like the others that shape the updates, that change is recorded.
# prefixmem_init and freeze_decoder_steps are not compared here: they are part of the
# checkpoint's identity (sidjax.run.run_hash), so a checkpoint refuses other values anyway.
RESUME_FREE_TRAIN_KEYS = frozenset({
    "log_every", "checkpoint_every", "max_checkpoints", "eval_every", "eval_users", "eval_recall",
    "best_metric", "best_mode", "patience", "tensorboard", "data_threads", "data_prefetch",
    "mesh_data", "mesh_fsdp", "mesh_model", "peak_flops"})
_RUN_HASH_TRAIN_KEYS = frozenset({"prefixmem_init", "freeze_decoder_steps"})


def train_config_changes(saved: TrainConfig, given: TrainConfig) -> dict[str, tuple]:
    """``{"train.<key>": (saved value, given value)}`` of the settings that shape a run's updates
    (all but :data:`RESUME_FREE_TRAIN_KEYS` and the run-hash ones; ``steps`` included) where
    ``given`` differs from ``saved``. Another ``train.optimizer`` raises a ``ValueError``: its
    optimizer state has another structure, so no checkpoint of the run could be restored.
    (Keys added later read back at their defaults from an older ``config.json``, so a new key
    left at its default changes nothing.)"""
    if saved.optimizer != given.optimizer:
        raise ValueError(
            f"train.optimizer: {saved.optimizer!r} in config.json, {given.optimizer!r} given; a "
            "run cannot switch optimizer (its optimizer state differs): resume with "
            f"train.optimizer={saved.optimizer} or use a new --workdir")
    changes = {}
    for field in dataclasses.fields(TrainConfig):
        key = field.name
        if key in RESUME_FREE_TRAIN_KEYS or key in _RUN_HASH_TRAIN_KEYS:
            continue
        old, new = getattr(saved, key), getattr(given, key)
        if old != new:
            changes[f"train.{key}"] = (old, new)
    return changes


def train(model: nnx.Module, dataset, vocab: SIDVocab | None, cfg: TrainConfig, workdir: Path, *,
          config_hash: str = "", progress: Callable | None = None,
          log: Callable[[str], None] | None = None, partitioner=None,
          loss_fn: Callable | None = None,
          evaluate: Callable[[object, int], dict] | None = None,
          summary: dict | None = None) -> nnx.Module:
    """Trains ``model`` for ``cfg.steps`` steps on the batches ``dataset[step]``; resumes if
    possible.

    ``dataset`` is a grain ``MapDataset`` (streamed by worker threads, its iterator state saved
    in every checkpoint; see :mod:`sidjax.train.batches`) or any object indexable by step. The
    mesh comes from ``cfg.mesh_data/mesh_fsdp/mesh_model`` (or ``partitioner``). ``loss_fn`` is
    the task (see :func:`make_train_step`; default: the SID loss of ``vocab``).

    Logging: metric rows (loss, accuracies, grad norm, learning rate, step time, tokens/s, MFU
    when ``cfg.peak_flops`` is set) go to ``workdir/metrics.jsonl`` and TensorBoard event files
    (process 0 only); ``log`` gets the state report before step 1, validation results and
    checkpoint messages, and, when there is no ``progress`` sink, a line per logged step.
    ``progress(done, metrics)`` is called once with the step training starts from (0 for a fresh
    run, the restored step on a resume; ``metrics`` None) before the first step, then after every
    step (``metrics`` on logged steps, else None).

    Resuming: a run with a checkpoint logs ``resuming <workdir> from step N (of M)``, or
    ``<workdir> already trained to step N; nothing to do`` when ``N >= cfg.steps``. Rows of
    ``metrics.jsonl`` after the restored step (logged by a session that stopped before its next
    checkpoint) are dropped first, so the rerun's rows replace them and no step appears twice
    (:class:`~sidjax.train.observe.MetricsWriter`); throughput is measured from the resumed step.
    ``summary``, when given, is filled with ``start`` (the step training started from) and
    ``end`` (the step it reached; ``end == start``: nothing was trained) once training returns.

    Validation: with ``cfg.eval_every > 0``, ``evaluate(params, step) -> {name: float}`` runs
    every ``eval_every`` steps and at the end (``params`` on one device, valid only during the
    call); its metrics join that step's row and rank the checkpoint saved there, so the manager
    keeps the last ``cfg.max_checkpoints`` steps plus the best by ``cfg.best_metric``. With
    ``cfg.patience > 0`` training stops after that many evaluations without improvement.

    Checkpoints every ``cfg.checkpoint_every`` steps, at every validation and at the end. A
    non-finite loss stops the run with an error naming the step, without saving. SIGTERM saves
    at the next step boundary and raises :class:`~sidjax.train.signals.Preempted`; so does a
    first Ctrl-C (SIGINT), raising :class:`~sidjax.train.signals.Interrupted` (a second Ctrl-C
    before that boundary aborts at once with KeyboardInterrupt). With several JAX processes a
    signal to any of them stops all at the next multiple of ``cfg.log_every`` (or the end), each
    saving the same step (:func:`~sidjax.train.signals.any_process`). The previous signal handlers
    come back after. Returns the model with the last step's parameters (on the default device).
    """
    workdir = Path(workdir)
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"train.batch_size={cfg.batch_size} is not a multiple of "
                         f"train.grad_accum={cfg.grad_accum}")
    check_validation_config(cfg)
    partitioner = partitioner or make_partitioner(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_model)
    replicas = num_replicas(cfg, partitioner)
    if replicas and cfg.batch_size % (replicas * cfg.grad_accum):
        raise ValueError(f"train.batch_size={cfg.batch_size} is not a multiple of AdaScale's "
                         f"S={replicas} (train.adascale_replicas) x train.grad_accum="
                         f"{cfg.grad_accum}")
    validate = evaluate if cfg.eval_every > 0 else None
    say = log or (lambda _msg: None)
    main_process = jax.process_index() == 0
    several_processes = jax.process_count() > 1
    graphdef, params, opt_state, tx, partitioner, shardings = init_state(model, cfg, partitioner)
    tied_output = tied_output_params(model)
    schedule = make_schedule(cfg)
    manager = checkpoint.manager(workdir / "checkpoints", cfg.max_checkpoints,
                                 cfg.best_metric if validate else None, cfg.best_mode)
    restored = checkpoint.restore_training(manager, params, opt_state, config_hash, log=log)
    start, data_state, tracker_state = 0, None, None
    if restored is not None:
        start, data_state = restored.step, restored.data_state
        params, opt_state = restored.items["params"], restored.items["opt_state"]
        tracker_state = restored.meta.get("validation")
    tracker = BestTracker.restore(cfg, tracker_state)
    if replicas and restored is not None:
        try:
            check_resumed_replicas(cfg, replicas, opt_state, start, say)
        except ValueError:
            manager.close()
            raise
    budget = AdaScaleBudget(cfg, replicas, start) if replicas else None
    step_fn = make_train_step(graphdef, tx, vocab, dropout=True, partitioner=partitioner,
                              state_shardings=shardings, grad_accum=cfg.grad_accum,
                              compute_dtype=cfg.compute_dtype, loss_fn=loss_fn,
                              label_smoothing=cfg.label_smoothing, replicas=replicas)
    key = jax.random.key(cfg.seed, impl="unsafe_rbg")  # cheap dropout bits on CPU
    writer = MetricsWriter(workdir, tensorboard=cfg.tensorboard, resume_step=start)
    end = cfg.steps
    if validate is not None and tracker.should_stop():
        say(f"early stopping already happened at step {start} ({cfg.patience} validations "
            f"without improving {tracker.metric} since step {tracker.best_step}); nothing to do")
        end = start
    elif start >= cfg.steps or (budget is not None and budget.reached(start, opt_state)):
        if main_process:
            say(f"{workdir} already trained to step {start}" + (
                f" (AdaScale progress tau {budget.tau:.1f} of {cfg.steps})" if budget else "")
                + "; nothing to do")
        end = start
    elif start > 0 and main_process:
        say(f"resuming {workdir} from step {start} (of {cfg.steps})" + (
            f", AdaScale progress tau {budget.tau:.1f}" if budget else ""))
    if writer.dropped:
        say(f"{writer.path}: dropped {writer.dropped} row(s) after step {start}, logged before "
            "the run stopped and not checkpointed; those steps are trained and logged again")
    stream = BatchStream(dataset, start, data_state, num_threads=cfg.data_threads,
                         prefetch=cfg.data_prefetch, log=log)
    flops_per_token = None
    window_start, window_steps = time.perf_counter(), 0
    try:
        with stop_flag() as stop:
            if progress is not None:  # the bar starts at the resumed step, not 0 (no false speed)
                progress(start, None)
            done = start
            for step in range(start, end):
                batch = partitioner.shard_batch(stream.next())
                if flops_per_token is None:
                    shape = _input_shape(batch)
                    tokens_per_step = int(np.prod(shape))
                    report = state_report(params, opt_state, shape[1], partitioner,
                                          tied_output=tied_output)
                    flops_per_token = report["flops_per_token"]
                    if main_process:
                        say(format_state_report(report))
                    window_start = time.perf_counter()
                params, opt_state, metrics = step_fn(params, opt_state, batch, step, key)
                window_steps += 1
                done = step + 1
                # AdaScale: the run ends when its progress tau reaches train.steps (1x steps)
                finished = done == cfg.steps or (budget is not None and budget.reached(
                    done, opt_state))
                validating = validate is not None and (is_eval_step(cfg, done) or finished)
                logged = done % cfg.log_every == 0 or finished or validating
                if progress is not None:
                    progress(done, metrics if logged else None)
                preempt = stop.is_set()
                if several_processes:  # all stop at one agreed boundary (signals.any_process)
                    agree = done % cfg.log_every == 0 or done == end or finished
                    preempt = agree and any_process(preempt)
                save = done % cfg.checkpoint_every == 0 or finished or preempt or validating
                if not (save or logged):
                    continue
                metrics = {k: float(v) for k, v in metrics.items()}
                _check_finite(metrics, done)
                if logged:
                    step_time = (time.perf_counter() - window_start) / window_steps
                    # AdaScale's step reports its own rate (the schedule at floor(tau))
                    rate = float(schedule(step)) if budget is None else metrics.pop(
                        "learning_rate")
                    metrics.update(step=done, learning_rate=rate, step_time_s=step_time,
                                   steps_per_s=1.0 / step_time,
                                   examples_per_s=cfg.batch_size / step_time,
                                   tokens_per_s=tokens_per_step / step_time)
                    if cfg.peak_flops > 0:
                        metrics["mfu"] = metrics["tokens_per_s"] * flops_per_token / cfg.peak_flops
                valid = None
                if validating:
                    valid = {k: float(v) for k, v in validate(_host_params(params), done).items()}
                    tracker.update(valid, done)
                    metrics.update(valid)
                    if main_process:
                        say(_validation_line(done, valid, tracker))
                if logged:
                    writer.write(metrics)
                    if main_process and progress is None:
                        where = f"step {done}/{cfg.steps}" if budget is None else (
                            f"step {done} tau {metrics['adascale/tau']:.1f}/{cfg.steps} gain "
                            f"{metrics['adascale/gain']:.2f}")
                        say(f"{where} loss {metrics['loss']:.4f} "
                            f"lr {metrics['learning_rate']:.2e} "
                            f"{metrics['tokens_per_s']:,.0f} tok/s")
                    window_start, window_steps = time.perf_counter(), 0
                if save:
                    checkpoint.save(manager, done, params, opt_state, config_hash,
                                    data_state=stream.state(), validation=tracker.state(),
                                    metrics=valid)
                if validating and tracker.should_stop():
                    say(f"early stopping at step {done}: {cfg.patience} validations without "
                        f"improving {tracker.metric} (best {tracker.best} at step "
                        f"{tracker.best_step})")
                    break
                if preempt:
                    manager.wait_until_finished()
                    raise stop.stopped(done)
                if finished:
                    break
        if summary is not None:
            summary.update(start=start, end=done)
    finally:
        stream.close()
        writer.close()
        manager.wait_until_finished()
        manager.close()
    if partitioner.mesh is not None:
        params = _host_params(params)
    return nnx.merge(graphdef, params)

"""Next-SID-token training: loss, optax recipe, jitted step, and the loop with orbax checkpoints."""

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
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        return leaf.ndim >= 2 and "table" not in names

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup and cosine decay, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(1, cfg.warmup_steps), max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * 0.05)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def make_train_step(graphdef, tx: optax.GradientTransformation, vocab: SIDVocab,
                    dropout: bool) -> Callable:
    """A jitted ``(params, opt_state, batch, step, key) -> (params, opt_state, metrics)``.

    The dropout key of a step is ``fold_in(key, step)``; params and optimizer state are donated.
    """
    def loss_fn(params, batch, key):
        model = nnx.merge(graphdef, params)
        logits = model(batch["tokens"], batch["codes"], batch["levels"],
                       dropout_key=key if dropout else None)
        return sid_loss(logits, batch["targets"], vocab)

    def step_fn(params, opt_state, batch, step, key):
        key = jax.random.fold_in(key, step)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jax.jit(step_fn, donate_argnums=(0, 1))


def train(model: nnx.Module, dataset, vocab: SIDVocab, cfg: TrainConfig, workdir: Path, *,
          config_hash: str = "", progress: Callable | None = None) -> nnx.Module:
    """Trains ``model`` on ``dataset[step]`` batches for ``cfg.steps`` steps; resumes if possible.

    Appends metrics to ``workdir/metrics.jsonl``, checkpoints to ``workdir/checkpoints`` every
    ``cfg.checkpoint_every`` steps and at the end. A non-finite loss stops the run with an error
    naming the step, without saving. Returns the trained model.
    """
    workdir = Path(workdir)
    graphdef, params = nnx.split(model)
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    manager = checkpoint.manager(workdir / "checkpoints", cfg.max_checkpoints)
    start, params, opt_state = checkpoint.restore_latest(manager, params, opt_state, config_hash)
    step_fn = make_train_step(graphdef, tx, vocab, dropout=True)
    key = jax.random.key(cfg.seed, impl="unsafe_rbg")  # cheap dropout bits on CPU
    log_path = workdir / "metrics.jsonl"
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start, cfg.steps):
            batch = dataset[step]
            params, opt_state, metrics = step_fn(params, opt_state, batch, step, key)
            window_steps += 1
            done = step + 1
            save = done % cfg.checkpoint_every == 0 or done == cfg.steps
            log = done % cfg.log_every == 0 or done == cfg.steps
            if progress is not None:
                progress(done, metrics if log else None)
            if not (save or log):
                continue
            metrics = {k: float(v) for k, v in metrics.items()}
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(
                    f"loss is {metrics['loss']} at step {done}; nothing saved, the latest "
                    "checkpoint is the last good one. Lower train.learning_rate")
            if log:
                elapsed = time.perf_counter() - window_start
                metrics.update(step=done, steps_per_s=window_steps / elapsed,
                               examples_per_s=window_steps * cfg.batch_size / elapsed)
                with log_path.open("a") as f:
                    f.write(json.dumps(metrics) + "\n")
                window_start, window_steps = time.perf_counter(), 0
            if save:
                checkpoint.save(manager, done, params, opt_state, config_hash)
    finally:
        manager.wait_until_finished()
        manager.close()
    return nnx.merge(graphdef, params)

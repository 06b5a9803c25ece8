"""The optimizer recipe: learning-rate schedules, parameter groups and the AdamW chain (or, with
``train.optimizer="adascale"``, AdaScale SGD over the same groups: :func:`make_adascale_optimizer`).

Groups come from the metadata each ``nnx.Param`` carries (:mod:`sidjax.parallel.axes`), not
from parameter names: ``group="table"`` marks a memory table (no weight decay, its own learning
rate multiplier), ``group="adapter"`` PrefixMem's projections and gate (trained alone during
``train.freeze_decoder_steps``). The label functions take the model's ``nnx.State``.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from sidjax.config import TrainConfig
from sidjax.parallel import axes
from sidjax.train import adascale


def decay_mask(params) -> object:
    """Weight decay on matrices only: not on norms, biases or memory tables (parameters tagged
    ``group="table"``, :mod:`sidjax.parallel.axes`), whatever their names. ``params``: the
    model's ``nnx.State`` (its Params carry the tags); a tree of bools shaped like it."""
    def keep(_path, var):
        return var.ndim >= 2 and axes.group(var) != axes.TABLE

    return axes.map_params(keep, params)


def is_prefixmem_adapter(var) -> bool:
    """Whether a parameter (an ``nnx.Param`` of the model's state) is one of PrefixMem's
    projections or gate, the ones trained while the decoder is frozen (tagged
    ``group="adapter"``; its table is not)."""
    return axes.group(var) == axes.ADAPTER


def param_labels(params, freeze: bool = False) -> object:
    """Optimizer group of every parameter of the model's ``nnx.State``, from its metadata:
    ``table`` (tagged memory tables), ``no_decay`` (vectors: norms, biases, gate scales) or
    ``decay`` (matrices). With ``freeze``, every parameter but PrefixMem's projections and gate
    (:func:`is_prefixmem_adapter`) is labelled ``frozen_<group>``."""
    def label(_path, var):
        if axes.group(var) == axes.TABLE:
            group = "table"
        else:
            group = "decay" if var.ndim >= 2 else "no_decay"
        return f"frozen_{group}" if freeze and not is_prefixmem_adapter(var) else group

    return axes.map_params(label, params)


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


def make_optimizer(cfg: TrainConfig, num_replicas: int | None = None
                   ) -> optax.GradientTransformation:
    """The optimizer of ``cfg.optimizer``: AdamW (below) or, for ``"adascale"``,
    :func:`make_adascale_optimizer` with ``num_replicas`` replicas (default:
    :func:`adascale_replicas` without a data axis).

    AdamW: global-norm clipping, then AdamW per parameter group (:func:`param_labels`): matrices with
    weight decay, vectors without, PrefixMem tables without and at ``prefixmem_lr_mult`` x LR.

    With ``freeze_decoder_steps = N > 0`` the first N updates change only PrefixMem's projections
    and gate: every other group is wrapped in ``optax.transforms.conditionally_mask``, whose
    update is exactly zero (and whose Adam state stays untouched) until its own step counter,
    kept in the optimizer state, reaches N. Their Adam moments then start fresh and their learning
    rate continues the global schedule from step N. The step stays one jitted function and the
    counter is checkpointed with the rest of the optimizer state, so resumes stay exact.
    """
    if cfg.optimizer == "adascale":
        return make_adascale_optimizer(
            cfg, adascale_replicas(cfg) if num_replicas is None else num_replicas)
    if cfg.optimizer != "adamw":
        raise ValueError(f"train.optimizer must be 'adamw' or 'adascale', got {cfg.optimizer!r}")
    schedule = make_schedule(cfg)
    freeze = cfg.freeze_decoder_steps
    if freeze < 0:
        raise ValueError(f"train.freeze_decoder_steps={freeze} must be >= 0")

    def adam(lr, weight_decay):
        return optax.adamw(lr, b1=0.9, b2=0.98, weight_decay=weight_decay)

    def table_lr(s):
        return cfg.prefixmem_lr_mult * schedule(s)

    groups = {"decay": adam(schedule, cfg.weight_decay), "no_decay": adam(schedule, 0.0),
              "table": adam(table_lr, 0.0)}
    if freeze > 0:
        def after_freeze(lr):
            return lambda s: lr(s + freeze)  # the wrapped Adam counts only unfrozen steps

        def unfrozen(step):
            return step >= freeze

        groups |= {
            f"frozen_{name}": optax.transforms.conditionally_mask(inner, unfrozen)
            for name, inner in (
                ("decay", adam(after_freeze(schedule), cfg.weight_decay)),
                ("no_decay", adam(after_freeze(schedule), 0.0)),
                ("table", adam(after_freeze(table_lr), 0.0)))}
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.multi_transform(groups, lambda params: param_labels(params, freeze > 0)),
    )


def adascale_replicas(cfg: TrainConfig, data_axis: int = 1) -> int:
    """AdaScale's ``S``: ``train.adascale_replicas``, or (0) the size ``data_axis`` of the mesh's
    data axis when it is > 1. The batch of a step holds ``S`` 1x batches of
    ``batch_size / S`` rows each."""
    if cfg.adascale_replicas > 0:
        return cfg.adascale_replicas
    if cfg.adascale_replicas == 0 and data_axis > 1:
        return data_axis
    raise ValueError(
        f"train.adascale_replicas={cfg.adascale_replicas}: 0 takes S from the mesh's data axis, "
        f"which has {data_axis} device(s) here; set train.adascale_replicas=S >= 1")


def make_adascale_optimizer(cfg: TrainConfig, num_replicas: int) -> optax.GradientTransformation:
    """AdaScale SGD (:func:`sidjax.train.adascale.with_adascale`) over the AdamW recipe's groups.

    The update takes per-replica gradients (leading axis ``num_replicas``) and is
    ``-gain * lr(floor(tau)) * d`` where ``lr`` is :func:`make_schedule` (the 1x schedule, over
    ``train.steps`` of progress ``tau``) and ``d`` is, from the replica-mean gradient: global-norm
    clipping at ``grad_clip``, then per group (:func:`param_labels`) heavy-ball momentum
    ``train.adascale_momentum`` and decoupled weight decay ``weight_decay`` on matrices only (as
    AdamW's), tables at ``prefixmem_lr_mult`` x the rate. What differs from AdamW: SGD instead of
    Adam (Adam divides by the gradient's scale, which would undo the gain, and AdaScale's
    argument is SGD's), so ``train.learning_rate`` needs an SGD value; the gain and progress
    come from gradients before clipping; ``train.freeze_decoder_steps`` is not supported.
    """
    if cfg.freeze_decoder_steps:
        raise ValueError(f"train.freeze_decoder_steps={cfg.freeze_decoder_steps}: not supported "
                         "with train.optimizer=adascale (set it to 0)")
    momentum = cfg.adascale_momentum
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"train.adascale_momentum={momentum} must be in [0, 1)")

    def direction(weight_decay: float, mult: float) -> optax.GradientTransformation:
        parts = [optax.trace(momentum)] if momentum else []
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        if mult != 1.0:
            parts.append(optax.scale(mult))
        return optax.chain(*parts) if parts else optax.identity()

    groups = {"decay": direction(cfg.weight_decay, 1.0), "no_decay": direction(0.0, 1.0),
              "table": direction(0.0, cfg.prefixmem_lr_mult)}
    inner = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                        optax.multi_transform(groups, param_labels))
    return adascale.with_adascale(inner, make_schedule(cfg), num_replicas)

"""AdaScale SGD as optax gradient transformations.

AdaScale (Johnson, Agrawal, Gu, Guestrin, "AdaScale SGD: A User-Friendly Algorithm for
Distributed Training", ICML 2020) lets a run with an ``S`` times larger batch reuse the learning
rate schedule tuned for the 1x batch. Each step it estimates, from ``S`` independent gradients
``g_1..g_S`` (each over a 1x-sized batch), the gradient variance ``sigma^2`` and the squared norm
of the true gradient ``mu^2``, and multiplies the learning rate by the *gain ratio*

    r_t = (sigma^2 + mu^2) / (sigma^2 / S + mu^2)   in [1, S],

which is close to ``S`` when gradient noise dominates (averaging ``S`` gradients is worth ``S``
small steps) and close to 1 in near-deterministic regimes. Progress is counted in *scale-invariant
iterations* ``tau_{t+1} = tau_t + r_t``; the 1x schedule ``lr(.)`` is evaluated at
``floor(tau_t)`` and training stops when ``tau`` reaches the 1x step budget.

How gradients come in
---------------------
Every transformation here takes **per-replica gradients**: a pytree like the parameters where
every leaf has an extra leading axis of size ``S`` (``g[i]`` is replica ``i``'s gradient over its
own 1x-sized share of the batch), and returns an update *without* that axis, so it must be the
first transformation of an optax chain. :func:`per_replica_grads` builds such gradients from a
loss function with ``jax.vmap`` over ``S`` shards of the batch. In a data-parallel ``jit`` the
leading axis is simply sharded over the data mesh axis (each device holds its own replica's
gradient, the memory an ordinary data-parallel step needs anyway), and the reductions below
over that axis become the all-reduces a data-parallel step does.

Estimators (paper, Algorithm 1)::

    g_bar   = mean_i g_i
    sigma^2 = 1/(S-1) * sum_i ||g_i - g_bar||^2       (unbiased for tr Cov of a 1x gradient)
    mu^2    = ||g_bar||^2 - sigma^2 / S               (unbiased for ||E g||^2)

both smoothed with bias-corrected exponential moving averages (smoothing
``theta = max(1 - S/1000, 0)`` by default, as in the paper's implementation) before forming
``r_t``, which is then clipped to ``[1, S]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]


class AdaScaleState(NamedTuple):
    """State of :func:`scale_by_adascale`.

    Attributes:
      count: number of updates applied so far (int32).
      tau: scale-invariant progress, ``sum_t r_t`` (float32); the 1x-equivalent step count.
      gain: gain ratio ``r_t`` of the latest update (1.0 before the first).
      sigma2_ema: biased EMA of the variance estimate ``sigma^2``.
      mu2_ema: biased EMA of the squared-mean-norm estimate ``mu^2``.
      ema_norm: ``1 - theta^count``, the EMA bias correction (Adam-style).
    """

    count: jax.Array
    tau: jax.Array
    gain: jax.Array
    sigma2_ema: jax.Array
    mu2_ema: jax.Array
    ema_norm: jax.Array


class AdaScaleSGDState(NamedTuple):
    """State of :func:`adascale`: the AdaScale statistics plus the momentum buffer (if any)."""

    adascale: AdaScaleState
    velocity: Any


def default_smoothing(num_replicas: int) -> float:
    """The paper implementation's EMA smoothing ``theta = max(1 - S / 1000, 0)``."""
    return max(1.0 - num_replicas / 1000.0, 0.0)


def replica_moments(grads: Any, num_replicas: int) -> tuple[jax.Array, jax.Array, Any]:
    """Unbiased one-step estimates of ``sigma^2`` and ``mu^2`` from per-replica gradients.

    Args:
      grads: pytree whose leaves have a leading replica axis of size ``num_replicas``.
      num_replicas: ``S``, at least 2.

    Returns:
      ``(sigma2, mu2, mean_grads)``: float32 scalars (``mu2`` may be negative; it is unbiased, not
      clipped) and the replica-mean gradient pytree (leading axis removed).
    """
    if num_replicas < 2:
        raise ValueError("variance estimation needs num_replicas >= 2")
    _check_replica_axis(grads, num_replicas)
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    dev = jax.tree.map(
        lambda g, m: jnp.sum(jnp.square((g - m[None]).astype(jnp.float32))), grads, mean
    )
    sq_mean = jax.tree.map(lambda m: jnp.sum(jnp.square(m.astype(jnp.float32))), mean)
    sigma2 = sum(jax.tree.leaves(dev), jnp.float32(0.0)) / (num_replicas - 1)
    mean_sq_norm = sum(jax.tree.leaves(sq_mean), jnp.float32(0.0))
    return sigma2, mean_sq_norm - sigma2 / num_replicas, mean


def gain_ratio(sigma2: jax.Array, mu2: jax.Array, num_replicas: int) -> jax.Array:
    """AdaScale gain ``r = (sigma2 + mu2) / (sigma2 / S + mu2)``, clipped to ``[1, S]``.

    A non-positive denominator (possible when the noisy ``mu2`` estimate is negative) means the
    mean gradient is indistinguishable from noise, which is the ``r = S`` limit.
    """
    sigma2 = jnp.maximum(sigma2, 0.0)
    num = sigma2 + mu2
    den = sigma2 / num_replicas + mu2
    tiny = jnp.finfo(jnp.float32).tiny
    r = jnp.where(den > tiny, num / jnp.maximum(den, tiny), float(num_replicas))
    # No signal at all (sigma2 = mu2 = 0, e.g. zero gradients): nothing to gain.
    r = jnp.where((sigma2 <= 0) & (mu2 <= 0), 1.0, r)
    return jnp.clip(r, 1.0, float(num_replicas))


def _check_replica_axis(grads: Any, num_replicas: int) -> None:
    for leaf in jax.tree.leaves(grads):
        if leaf.ndim == 0 or leaf.shape[0] != num_replicas:
            raise ValueError(
                f"every gradient leaf needs a leading replica axis of size {num_replicas}, "
                f"got shape {leaf.shape}"
            )


def _init_stats() -> AdaScaleState:
    # a fresh array per field (no shared buffer), so a jitted step may donate the state
    def zero():
        return jnp.zeros([], jnp.float32)

    return AdaScaleState(
        count=jnp.zeros([], jnp.int32),
        tau=zero(),
        gain=jnp.ones([], jnp.float32),
        sigma2_ema=zero(),
        mu2_ema=zero(),
        ema_norm=zero(),
    )


def _step_stats(
    grads: Any, state: AdaScaleState, num_replicas: int, smoothing: float
) -> tuple[Any, AdaScaleState]:
    """Mean gradient and the state after this step (``tau`` already advanced by ``gain``)."""
    if num_replicas == 1:
        _check_replica_axis(grads, 1)
        mean = jax.tree.map(lambda g: g[0], grads)
        gain = jnp.ones([], jnp.float32)
        sigma2_ema, mu2_ema, ema_norm = state.sigma2_ema, state.mu2_ema, state.ema_norm
    else:
        sigma2, mu2, mean = replica_moments(grads, num_replicas)
        sigma2_ema = smoothing * state.sigma2_ema + (1.0 - smoothing) * sigma2
        mu2_ema = smoothing * state.mu2_ema + (1.0 - smoothing) * mu2
        ema_norm = smoothing * state.ema_norm + (1.0 - smoothing)
        # The bias correction cancels in the ratio, but keeps the stored estimates meaningful.
        gain = gain_ratio(sigma2_ema / ema_norm, mu2_ema / ema_norm, num_replicas)
    new_state = AdaScaleState(
        count=state.count + 1,
        tau=state.tau + gain,
        gain=gain,
        sigma2_ema=sigma2_ema,
        mu2_ema=mu2_ema,
        ema_norm=ema_norm,
    )
    return mean, new_state


def _resolve_smoothing(num_replicas: int, smoothing: float | None) -> float:
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    theta = default_smoothing(num_replicas) if smoothing is None else float(smoothing)
    if not 0.0 <= theta < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {theta}")
    return theta


def scale_by_adascale(
    num_replicas: int, *, smoothing: float | None = None
) -> optax.GradientTransformation:
    """Reduce per-replica gradients to ``r_t * mean_i g_i`` and track progress ``tau``.

    The input ``updates`` must carry a leading replica axis of size ``num_replicas`` on every leaf
    (see the module docstring); the output has the parameters' shapes, so this must come first in
    an ``optax.chain``. The learning rate that follows it should be constant; for a schedule over
    progress use :func:`adascale`, or read ``tau`` from the state
    (``optax.tree_utils.tree_get(opt_state, "tau")``).

    Args:
      num_replicas: ``S``, the batch scale relative to the 1x batch; ``1`` gives ``r_t = 1``.
      smoothing: EMA factor ``theta`` for the ``sigma^2``/``mu^2`` estimates; default
        :func:`default_smoothing`. ``0`` uses the current step's estimates only.
    """
    theta = _resolve_smoothing(num_replicas, smoothing)

    def init_fn(params):
        del params
        return _init_stats()

    def update_fn(updates, state, params=None):
        del params
        mean, new_state = _step_stats(updates, state, num_replicas, theta)
        scaled = jax.tree.map(lambda g: (new_state.gain * g).astype(g.dtype), mean)
        return scaled, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def adascale(
    learning_rate: float | Schedule,
    num_replicas: int,
    *,
    momentum: float = 0.0,
    smoothing: float | None = None,
) -> optax.GradientTransformation:
    """AdaScale SGD: ``w <- w - r_t * lr(floor(tau_t)) * v_t`` from per-replica gradients.

    ``v_t = momentum * v_{t-1} + g_bar_t`` (heavy ball; ``v_t = g_bar_t`` for ``momentum=0``, the
    setting the paper analyses). With momentum, the paper's recipe is used: the gain only scales
    the learning rate.

    Args:
      learning_rate: constant, or a schedule of the 1x run (any optax schedule) which is called
        with the scale-invariant progress ``floor(tau_t)`` instead of the step count.
      num_replicas: ``S``; ``update`` expects gradients with a leading axis of this size.
      momentum: heavy-ball coefficient in ``[0, 1)``.
      smoothing: EMA factor for the gradient statistics; see :func:`scale_by_adascale`.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`AdaScaleSGDState`; stop
      training when ``state.adascale.tau`` reaches the 1x run's step budget.
    """
    theta = _resolve_smoothing(num_replicas, smoothing)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init_fn(params):
        velocity = None
        if momentum:
            velocity = jax.tree.map(jnp.zeros_like, params)
        return AdaScaleSGDState(adascale=_init_stats(), velocity=velocity)

    def update_fn(updates, state, params=None):
        del params
        lr = jnp.asarray(schedule(jnp.floor(state.adascale.tau)), jnp.float32)
        mean, stats = _step_stats(updates, state.adascale, num_replicas, theta)
        velocity = state.velocity
        direction = mean
        if momentum:
            velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, mean)
            direction = velocity
        step = -lr * stats.gain
        out = jax.tree.map(lambda d: (step * d).astype(d.dtype), direction)
        return out, AdaScaleSGDState(adascale=stats, velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


class AdaScaleWrapState(NamedTuple):
    """State of :func:`with_adascale`.

    Attributes:
      adascale: the AdaScale statistics (``tau``, ``gain``, ...).
      inner: the wrapped optimizer's state.
      learning_rate: ``lr(floor(tau))`` of the latest update, the 1x schedule's rate before the
        gain (float32; the effective rate was ``gain * learning_rate``).
      replicas: ``S`` (int32), kept so that a resumed run can tell that ``S`` changed.
    """

    adascale: AdaScaleState
    inner: Any
    learning_rate: jax.Array
    replicas: jax.Array


def with_adascale(
    inner: optax.GradientTransformation,
    learning_rate: float | Schedule,
    num_replicas: int,
    *,
    smoothing: float | None = None,
) -> optax.GradientTransformation:
    """AdaScale around an optimizer of descent directions: ``w <- w - r_t * lr(floor(tau_t)) * d_t``.

    The input is per-replica gradients (leading axis ``S``, see the module docstring). AdaScale's
    statistics come from them; ``inner`` then gets the replica-mean gradient ``g_bar_t`` and
    returns the direction ``d_t`` *without* learning rate or sign (e.g. clipping, heavy-ball
    momentum, decoupled weight decay, per-group multipliers), which is scaled by
    ``-r_t * lr(floor(tau_t))``. With ``inner = optax.trace(momentum)`` this is :func:`adascale`.

    Args:
      inner: a transformation of parameter-shaped gradients (gets ``params`` too).
      learning_rate: constant or a schedule of the 1x run, called with ``floor(tau_t)``.
      num_replicas: ``S``.
      smoothing: EMA factor of the gradient statistics; see :func:`scale_by_adascale`.

    Returns:
      A transformation whose state is :class:`AdaScaleWrapState`; stop training when its
      ``adascale.tau`` (:func:`find_stats`) reaches the 1x step budget.
    """
    theta = _resolve_smoothing(num_replicas, smoothing)
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init_fn(params):
        return AdaScaleWrapState(
            adascale=_init_stats(),
            inner=inner.init(params),
            learning_rate=jnp.zeros([], jnp.float32),
            replicas=jnp.asarray(num_replicas, jnp.int32),
        )

    def update_fn(updates, state, params=None):
        lr = jnp.asarray(schedule(jnp.floor(state.adascale.tau)), jnp.float32)
        mean, stats = _step_stats(updates, state.adascale, num_replicas, theta)
        direction, inner_state = inner.update(mean, state.inner, params)
        step = -lr * stats.gain
        out = jax.tree.map(lambda d: (step * d).astype(d.dtype), direction)
        return out, AdaScaleWrapState(stats, inner_state, lr, jnp.asarray(num_replicas, jnp.int32))

    return optax.GradientTransformation(init_fn, update_fn)


def find_state(opt_state: Any, kind: type = AdaScaleState) -> Any:
    """The one node of type ``kind`` (default :class:`AdaScaleState`) in an optimizer state tree
    (a chain's, a restored checkpoint's); ``ValueError`` when there is none or several."""
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
        if isinstance(x, kind)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one {kind.__name__} in the optimizer state, found {len(found)}")
    return found[0]


def find_stats(opt_state: Any) -> AdaScaleState:
    """The :class:`AdaScaleState` of an optimizer state (``.tau``, ``.gain``)."""
    return find_state(opt_state, AdaScaleState)


def split_batch(batch: Any, num_replicas: int) -> Any:
    """Reshape every batch leaf ``[B, ...]`` to ``[S, B // S, ...]`` (``B`` divisible by ``S``)."""

    def split(x):
        if x.shape[0] % num_replicas:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by {num_replicas}")
        return x.reshape(num_replicas, x.shape[0] // num_replicas, *x.shape[1:])

    return jax.tree.map(split, batch)


def per_replica_grads(
    loss_fn: Callable[..., Any],
    params: Any,
    batch: Any,
    num_replicas: int,
    *,
    has_aux: bool = False,
) -> tuple[Any, Any]:
    """Loss and gradient of each of ``num_replicas`` equal shards of ``batch``, via ``jax.vmap``.

    Args:
      loss_fn: ``loss_fn(params, shard) -> loss`` (or ``(loss, aux)`` with ``has_aux``), where
        ``shard`` is ``batch`` with its leading axis cut to ``B // S``; it must average over the
        shard so that each replica gradient is a 1x-batch gradient.
      params: parameter pytree (shared by all replicas).
      batch: pytree of arrays with a common leading batch axis ``B``.
      num_replicas: ``S``.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``(losses, grads)``: ``losses`` is ``[S]`` (or ``([S], aux with a leading S axis)``) and
      ``grads`` has a leading ``S`` axis on every leaf, ready for :func:`adascale`.
    """
    shards = split_batch(batch, num_replicas)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)
    return jax.vmap(grad_fn, in_axes=(None, 0))(params, shards)

"""Tests for sidjax.train.adascale: estimators, gain, optax plumbing, and the 8x-batch toy run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sidjax.train import adascale as ada


def test_replica_moments_match_unbiased_numpy_estimates():
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(4, 3, 2)), "b": rng.normal(1.0, 2.0, size=(4, 5))}
    sigma2, mu2, mean = ada.replica_moments(jax.tree.map(jnp.asarray, grads), 4)
    flat = np.concatenate([grads["a"].reshape(4, -1), grads["b"]], axis=1)
    want_sigma2 = flat.var(axis=0, ddof=1).sum()
    want_mu2 = np.sum(flat.mean(axis=0) ** 2) - want_sigma2 / 4
    np.testing.assert_allclose(sigma2, want_sigma2, rtol=1e-5)
    np.testing.assert_allclose(mu2, want_mu2, rtol=1e-5)
    np.testing.assert_allclose(mean["a"], grads["a"].mean(0), rtol=1e-6)


@pytest.mark.parametrize(
    "sigma2, mu2, want",
    [
        (0.0, 2.0, 1.0),  # deterministic gradients: a bigger batch buys nothing
        (3.0, 0.0, 8.0),  # pure noise: S times larger steps
        (3.0, -1.0, 8.0),  # noisy negative mu2 estimate: the r = S limit
        (0.0, 0.0, 1.0),  # zero gradients
        (4.0, 1.0, 5.0 / 1.5),
    ],
)
def test_gain_ratio(sigma2, mu2, want):
    np.testing.assert_allclose(ada.gain_ratio(jnp.float32(sigma2), jnp.float32(mu2), 8), want)


def test_identical_replicas_and_single_replica_are_plain_sgd():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    g = {"w": jnp.array([0.3, 0.1]), "b": jnp.array(-0.2)}
    for s in (1, 4):
        for momentum in (0.0, 0.9):
            opt = ada.adascale(0.1, s, momentum=momentum)
            ref = optax.sgd(0.1, momentum=momentum or None)
            state, ref_state = opt.init(params), ref.init(params)
            stacked = jax.tree.map(lambda x, s=s: jnp.stack([x] * s), g)
            for _ in range(3):
                u, state = opt.update(stacked, state, params)
                ref_u, ref_state = ref.update(g, ref_state, params)
                jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, ref_u)
            assert float(state.adascale.tau) == pytest.approx(3.0)
            assert float(state.adascale.gain) == pytest.approx(1.0)


def test_schedule_is_evaluated_at_floor_of_progress():
    # Two replicas c + a and c - a: sigma2 = 2|a|^2, mu2 = |c|^2 - |a|^2 with smoothing 0.
    c, a = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
    grads = jnp.stack([c + a, c - a])
    want_gain = (8.0 - 3.0) / (4.0 - 3.0)  # (sigma2 + mu2) / (sigma2 / 2 + mu2), clipped to 2
    want_gain = min(want_gain, 2.0)
    sched = lambda t: 1.0 / (1.0 + t)
    opt = ada.adascale(sched, 2, smoothing=0.0)
    state = opt.init(jnp.zeros(2))
    tau = 0.0
    for _ in range(3):
        u, state = jax.jit(opt.update)(grads, state)
        np.testing.assert_allclose(u, -want_gain * sched(np.floor(tau)) * c, rtol=1e-6)
        tau += want_gain
    assert float(state.adascale.tau) == pytest.approx(tau)


def test_scale_by_adascale_in_chain_exposes_tau():
    opt = optax.chain(ada.scale_by_adascale(4), optax.scale(-0.5))
    params = jnp.zeros(3)
    state = opt.init(params)
    grads = jnp.arange(12.0).reshape(4, 3)
    u, state = opt.update(grads, state, params)
    gain = optax.tree_utils.tree_get(state, "gain")
    assert 1.0 <= float(gain) <= 4.0
    np.testing.assert_allclose(u, -0.5 * gain * grads.mean(0), rtol=1e-6)
    assert float(optax.tree_utils.tree_get(state, "tau")) == pytest.approx(float(gain))
    with pytest.raises(ValueError, match="leading replica axis"):
        opt.update(jnp.zeros((3, 3)), state, params)


def test_per_replica_grads_match_per_shard_grads():
    loss = lambda w, b: jnp.mean((b["x"] @ w - b["y"]) ** 2)
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(6, 3))), "y": jnp.asarray(rng.normal(size=6))}
    w = jnp.array([0.1, 0.2, -0.3])
    losses, grads = ada.per_replica_grads(loss, w, batch, 3)
    assert losses.shape == (3,) and grads.shape == (3, 3)
    shard = {"x": batch["x"][2:4], "y": batch["y"][2:4]}
    np.testing.assert_allclose(grads[1], jax.grad(loss)(w, shard), rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        ada.per_replica_grads(loss, w, batch, 4)


# Noisy linear regression y = x.w* + noise, x ~ N(0, diag(lam)); the excess risk is exact.
DIM, NOISE, SEEDS = 8, 1.0, 16
LAM = jnp.linspace(0.1, 1.0, DIM)
W_STAR = jnp.ones(DIM)


def _excess(w):
    return 0.5 * jnp.sum(LAM * (w - W_STAR) ** 2)


def _loss(w, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2)


def _sample(key, n):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, DIM)) * jnp.sqrt(LAM)
    return x, x @ W_STAR + NOISE * jax.random.normal(ky, (n,))


def _run(opt, steps, batch_size, replicas, key):
    """Excess risk after each step and the AdaScale (tau, gain) trace, for one seed."""
    w0 = W_STAR + 3.0 * jax.random.normal(jax.random.fold_in(key, 1), (DIM,)) / np.sqrt(DIM)

    def body(carry, k):
        w, state = carry
        batch = _sample(k, batch_size)
        if replicas:
            _, g = ada.per_replica_grads(_loss, w, batch, replicas)
        else:
            g = jax.grad(_loss)(w, batch)
        u, state = opt.update(g, state, w)
        w = optax.apply_updates(w, u)
        if replicas:
            trace = (state.adascale.tau, state.adascale.gain)
        else:
            trace = (jnp.float32(0), jnp.float32(1))
        return (w, state), (_excess(w), *trace)

    return jax.lax.scan(body, (w0, opt.init(w0)), jax.random.split(key, steps))[1]


def _mean_curves(opt, steps, batch_size, replicas):
    keys = jax.random.split(jax.random.key(0), SEEDS)
    out = jax.jit(jax.vmap(lambda k: _run(opt, steps, batch_size, replicas, k)))(keys)
    return [np.asarray(x).mean(axis=0) for x in out]


def _first_step(mask):
    return int(np.argmax(mask)) + 1 if mask.any() else None


def test_adascale_8x_batch_matches_baseline_in_about_an_eighth_of_the_steps():
    steps, scale, eta, tol = 800, 8, 0.05, 0.10
    budget = int(1.5 * steps / scale)

    def schedule(t):  # step decay of the 1x run, evaluated at progress tau by AdaScale
        return eta * jnp.where(t < steps // 2, 1.0, jnp.where(t < 3 * steps // 4, 0.1, 0.01))

    base, _, _ = _mean_curves(optax.sgd(schedule), steps, 1, 0)
    target = base[-1]
    loss, tau, gain = _mean_curves(ada.adascale(schedule, scale), budget, scale, scale)
    # Control: the same 8x batch with the 1x step-indexed schedule and no gain.
    naive, _, _ = _mean_curves(optax.sgd(schedule), budget, scale, 0)

    reach = _first_step(loss <= (1 + tol) * target)
    tau_done = _first_step(tau >= steps)
    print(
        f"\nbaseline 1x batch: {steps} steps, final excess loss {target:.5f}"
        f"\nadascale {scale}x batch: reaches {(1 + tol):.2f} x that in {reach} steps "
        f"(budget {budget}, ideal {steps // scale}); tau >= {steps} after {tau_done} steps, "
        f"excess loss there {loss[tau_done - 1] if tau_done else float('nan'):.5f}; "
        f"mean gain {gain[:tau_done].mean():.2f}, first {gain[0]:.2f}, last {gain[-1]:.2f}"
        f"\nnaive {scale}x batch, same lr: excess loss {naive[-1]:.5f} after {budget} steps"
    )
    assert np.all((gain >= 1.0) & (gain <= scale))
    assert reach is not None and reach <= budget
    assert tau_done is not None and tau_done <= budget
    assert loss[tau_done - 1] <= (1 + tol) * target
    assert _first_step(naive <= (1 + tol) * target) is None


def test_with_adascale_around_momentum_is_adascale_and_records_its_state():
    """``with_adascale(optax.trace(m), lr, S)`` makes adascale()'s updates; its state keeps the
    1x rate it used, S, and fresh buffers (a jitted step may donate it)."""
    rng = np.random.default_rng(1)
    params = jnp.zeros(3)
    sched = lambda t: 0.1 / (1.0 + t)
    wrapped = ada.with_adascale(optax.trace(0.9), sched, 4)
    plain = ada.adascale(sched, 4, momentum=0.9)
    state, ref_state = wrapped.init(params), plain.init(params)
    leaves = jax.tree.leaves(state)
    assert len({id(x) for x in leaves}) == len(leaves)
    for _ in range(3):
        grads = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
        tau = float(ada.find_stats(state).tau)
        u, state = jax.jit(wrapped.update)(grads, state, params)
        ref_u, ref_state = plain.update(grads, ref_state, params)
        np.testing.assert_allclose(u, ref_u, rtol=1e-6)
        assert float(state.learning_rate) == pytest.approx(sched(np.floor(tau)))
    assert float(ada.find_stats(state).tau) == pytest.approx(float(ref_state.adascale.tau))
    assert int(ada.find_state(state, ada.AdaScaleWrapState).replicas) == 4
    with pytest.raises(ValueError, match="expected one AdaScaleState"):
        ada.find_stats({"a": jnp.zeros(1)})

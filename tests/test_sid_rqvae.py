import dataclasses

import numpy as np
import pytest

from sidjax.sid import quantizer, rqvae
from sidjax.sid.rqvae import RQVAEConfig


def _clustered(n=256, k=8, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    return (centers[np.arange(n) % k] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


CFG = RQVAEConfig(levels=2, codes=8, hidden=(32,), latent=6, steps=100, batch_size=128,
                  reset_every=25)


@pytest.fixture(scope="module")
def fitted():
    x = _clustered()
    return x, {est: rqvae.fit(x, dataclasses.replace(CFG, estimator=est, learning_rate=lr))
               for est, lr in (("ste", 1e-3), ("rotation", 3e-3))}


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_rqvae_loss_decreases_and_no_dead_codes(fitted, estimator):
    x, models = fitted
    q = models[estimator]
    first, last = q.log[0], q.log[-1]
    assert first["step"] == 1 and last["step"] == 100
    assert last["recon"] < 0.6 * first["recon"], q.log
    if estimator == "rotation":  # with STE the codebook + commitment terms grow as the latent spreads
        assert last["loss"] < 0.6 * first["loss"], q.log
    assert sum(sum(e["reset"]) for e in q.log) > 0  # resets happened
    codes = quantizer.encode(q, x)
    # after resets every code of every level is used by some item
    for lv in range(2):
        assert len(np.unique(codes[:, lv])) == 8, (lv, q.log)
    assert all(len(e["usage"]) == 2 for e in q.log)


def test_rotation_trick_forward_is_q_and_gradient_flows():
    import jax
    import jax.numpy as jnp

    z = jnp.array([[1.0, 2.0, -0.5]])
    q = jnp.array([[-0.3, 1.0, 2.0]])
    np.testing.assert_allclose(rqvae.rotate_onto(z, q), q, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda z: jnp.sum(rqvae.rotate_onto(z, q) * jnp.array([1.0, 0, 0])))(z)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_rqvae_save_load_and_errors(fitted, tmp_path):
    x, models = fitted
    q = models["rotation"]
    quantizer.save_quantizer(q, tmp_path / "q.npz")
    again = quantizer.load_quantizer(tmp_path / "q.npz")
    assert again.dim == 12 and np.array_equal(quantizer.encode(again, x), quantizer.encode(q, x))
    with pytest.raises(ValueError, match="estimator"):
        rqvae.fit(x, RQVAEConfig(estimator="gumbel"))
    with pytest.raises(ValueError, match="at least as many items"):
        rqvae.fit(x[:10], RQVAEConfig(codes=16, steps=1))

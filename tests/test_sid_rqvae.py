import dataclasses

import numpy as np
import pytest

from sidjax.sid import quantizer, rqvae
from sidjax.sid.rqvae import ESTIMATORS, RQVAEConfig


def _clustered(n=256, k=8, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    return (centers[np.arange(n) % k] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


CFG = RQVAEConfig(levels=2, codes=8, hidden=(32,), latent=6, steps=100, batch_size=128,
                  reset_every=25, learning_rate=3e-3)


@pytest.fixture(scope="module")
def fitted():
    return {(est, seed): rqvae.fit(_clustered(seed=seed),
                                   dataclasses.replace(CFG, estimator=est, seed=seed))
            for est in ESTIMATORS for seed in (0, 1)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_rqvae_loss_decreases_and_no_dead_codes(fitted, estimator, seed):
    q = fitted[estimator, seed]
    first, mid, last = q.log[0], q.log[2], q.log[-1]
    assert first["step"] == 1 and mid["step"] == 50 and last["step"] == 100
    # the total loss (reconstruction + codebook + commitment), not only the reconstruction, falls
    assert last["loss"] < mid["loss"] < 0.8 * first["loss"], q.log
    assert last["loss"] < 0.3 * first["loss"] and last["recon"] < 0.3 * first["recon"], q.log
    codes = quantizer.encode(q, _clustered(seed=seed))
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
    x = _clustered()
    q = fitted["rotation", 0]
    quantizer.save_quantizer(q, tmp_path / "q.npz")
    again = quantizer.load_quantizer(tmp_path / "q.npz")
    assert again.dim == 12 and np.array_equal(quantizer.encode(again, x), quantizer.encode(q, x))
    with pytest.raises(ValueError, match="dim 12, got dim 5"):
        quantizer.load_quantizer(tmp_path / "q.npz", dim=5)
    with pytest.raises(ValueError, match="dim 7 but the quantizer was fit on dim 12"):
        quantizer.encode(q, x[:, :7])
    arrays = dict(np.load(tmp_path / "q.npz"))
    name = next(k for k in arrays if k.startswith("param/encoder"))
    arrays[name] = arrays[name][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=name):
        quantizer.load_quantizer(tmp_path / "bad.npz")


@pytest.mark.parametrize("bad, match", [
    ({"estimator": "gumbel"}, "estimator"), ({"levels": 0}, "levels=0"), ({"codes": 1}, "out of range"),
    ({"codes": (8, 8, 8)}, "gives 3 levels"), ({"beta": -1.0}, "beta"), ({"latent": 0}, "latent=0"),
    ({"codebook_ema": 1.0}, "codebook_ema=1.0")])
def test_rqvae_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        rqvae.fit(_clustered(), RQVAEConfig(**{"levels": 2, "codes": 8, "steps": 1, **bad}))


def test_rqvae_bad_vectors():
    x = _clustered()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="first row 3"):
        rqvae.fit(x, RQVAEConfig(codes=8, steps=1))
    with pytest.raises(ValueError, match="at least as many items"):
        rqvae.fit(_clustered()[:10], RQVAEConfig(codes=16, steps=1))


def test_ema_update_matches_numpy():
    rng = np.random.default_rng(0)
    book = rng.normal(size=(5, 3)).astype(np.float32)
    res = rng.normal(size=(20, 3)).astype(np.float32)
    codes = rng.choice([0, 1, 3], size=20)  # codes 2 and 4 unused
    want = book.copy()
    for k in np.unique(codes):
        want[k] = 0.9 * book[k] + 0.1 * res[codes == k].mean(0)
    got = np.asarray(rqvae.ema_update(book, res, codes, 0.9))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(got[[2, 4]], book[[2, 4]])


def test_reset_revives_dead_codes(fitted):
    q = fitted["ste", 0]
    x = _clustered()
    cb = q.model.codebooks[1]
    saved = cb[...]
    try:
        cb[...] = saved.at[:3].set(1e3)  # three level-2 codes nobody is near
        assert len(np.unique(quantizer.encode(q, x)[:, 1])) == 5
        assert rqvae._reset_dead(q.model, x, None) == [0, 3]
        assert len(np.unique(quantizer.encode(q, x)[:, 1])) == 8
    finally:
        cb[...] = saved

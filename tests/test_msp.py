"""MSP (multi-expert semantic projection) against a loop-over-experts NumPy float64 reference."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.nn import msp
from sidjax.nn.msp import MSPConfig


def _cfg(**kw):
    base = dict(content_dim=12, d_model=8, num_experts=4, hidden=0, top_k=0,
                router_temperature=0.7, balance_weight=0.05)
    base.update(kw)
    return MSPConfig(**base)


def _inputs(seed=0, shape=(3, 5), content_dim=12):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=shape + (content_dim,)).astype(np.float32)
    mask = np.ones(shape, bool)
    mask[0, -2:] = False  # padded tail
    mask[2, -1] = False
    return vectors, mask


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _reference(params, vectors, mask, cfg):
    """Output [N, D] and balance loss, position by position and expert by expert, in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(vectors, np.float64).reshape(-1, cfg.content_dim)
    m = np.asarray(mask).reshape(-1)
    e_count = cfg.num_experts
    out = np.zeros((len(x), cfg.d_model))
    probs = np.zeros((len(x), e_count))
    for n in range(len(x)):
        if not m[n]:
            continue
        logits = x[n] @ p["router"] / cfg.router_temperature
        probs[n] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        weights = probs[n].copy()
        if cfg.top_k:
            keep = np.argsort(-probs[n], kind="stable")[:cfg.top_k]
            weights = np.zeros(e_count)
            weights[keep] = probs[n][keep] / probs[n][keep].sum()
        mixed = np.zeros(cfg.d_model)
        for e in range(e_count):
            if cfg.hidden:
                y = _gelu(x[n] @ p["w_in"][e] + p["b_in"][e]) @ p["w_out"][e] + p["b_out"][e]
            else:
                y = x[n] @ p["w_out"][e] + p["b_out"][e]
            mixed += weights[e] * y
        out[n] = mixed / np.sqrt(np.mean(mixed ** 2) + msp.NORM_EPS) * p["norm_scale"]
    f = np.zeros(e_count)
    for n in np.flatnonzero(m):
        f[np.argmax(probs[n])] += 1
    f /= m.sum()
    mean_p = probs[m].mean(axis=0)
    return out, cfg.balance_weight * e_count * np.sum(f * mean_p)


@functools.cache
def _params(hidden, seed=7):
    """Random parameters of init()'s shapes (traced, not compiled: fast), biases non-zero."""
    cfg = _cfg(hidden=hidden)
    shapes = jax.eval_shape(functools.partial(msp.init, cfg=cfg), jax.random.key(0))
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=v.shape) / np.sqrt(v.shape[-2] if v.ndim > 1 else 1) * (
        0.3 if k.startswith("b_") else 1.0) for k, v in shapes.items()}
    params["norm_scale"] = 1 + 0.3 * params["norm_scale"]
    return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


@pytest.mark.parametrize("hidden", [0, 6])
@pytest.mark.parametrize("top_k", [0, 1, 2])
def test_apply_matches_numpy_reference(hidden, top_k):
    cfg = _cfg(hidden=hidden, top_k=top_k)
    params = _params(hidden)
    vectors, mask = _inputs()
    out, aux = msp.apply(params, jnp.asarray(vectors), cfg=cfg, mask=jnp.asarray(mask))
    assert out.shape == (3, 5, cfg.d_model) and aux["router_probs"].shape == (3, 5, 4)
    expected, loss = _reference(params, vectors, mask, cfg)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, cfg.d_model), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(aux["balance_loss"]), loss, rtol=1e-5, atol=1e-7)
    weights = np.asarray(aux["weights"])[mask]
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.all((weights > 0).sum(-1) == (top_k or cfg.num_experts))


def test_flat_input_equals_batched():
    cfg = _cfg(hidden=6, top_k=2)
    params = _params(6)
    vectors, mask = _inputs(3)
    out, aux = msp.apply(params, jnp.asarray(vectors), cfg=cfg, mask=jnp.asarray(mask))
    flat, flat_aux = msp.apply(params, jnp.asarray(vectors.reshape(-1, 12)), cfg=cfg,
                               mask=jnp.asarray(mask.reshape(-1)))
    np.testing.assert_allclose(np.asarray(flat), np.asarray(out).reshape(15, -1), atol=1e-6)
    np.testing.assert_allclose(flat_aux["balance_loss"], aux["balance_loss"], rtol=1e-6)


def test_mask_zeros_padding_whatever_it_holds():
    cfg = _cfg(hidden=6, top_k=2)
    params = _params(6)
    vectors, mask = _inputs(4)
    out, aux = msp.apply(params, jnp.asarray(vectors), cfg=cfg, mask=jnp.asarray(mask))
    assert np.all(np.asarray(out)[~mask] == 0) and np.all(np.abs(np.asarray(out)[mask]) > 0)
    garbage = vectors.copy()
    garbage[~mask] = 1e30  # padding content must not reach the output or the loss
    out2, aux2 = msp.apply(params, jnp.asarray(garbage), cfg=cfg, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))
    assert float(aux2["balance_loss"]) == float(aux["balance_loss"])
    unmasked, _ = msp.apply(params, jnp.asarray(vectors), cfg=cfg)
    np.testing.assert_array_equal(np.asarray(unmasked)[mask], np.asarray(out)[mask])


def test_balance_loss_is_weight_for_uniform_router_and_larger_when_collapsed():
    cfg = _cfg(balance_weight=0.25)
    params = _params(0)
    vectors, mask = _inputs(5)
    uniform = dict(params, router=jnp.zeros_like(params["router"]))
    _, aux = msp.apply(uniform, jnp.asarray(vectors), cfg=cfg, mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(aux["balance_loss"]), 0.25, rtol=1e-6)
    # every position routed to expert 2 with probability ~1: loss ~ E * weight
    router = np.zeros((12, 4), np.float32)
    router[0, 2] = 1.0
    skewed = dict(params, router=jnp.asarray(router))
    skewed_vectors = vectors.copy()
    skewed_vectors[..., 0] = 50.0
    _, aux = msp.apply(skewed, jnp.asarray(skewed_vectors), cfg=cfg, mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(aux["balance_loss"]), 0.25 * 4, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(aux["expert_fraction"]), [0, 0, 1, 0])


def test_jit_matches_eager():
    cfg = _cfg(hidden=6, top_k=2)
    vectors, mask = (jnp.asarray(a) for a in _inputs(6))
    out, aux = jax.jit(functools.partial(msp.apply, cfg=cfg))(_params(6), vectors, mask=mask)
    eager, eager_aux = msp.apply(_params(6), vectors, cfg=cfg, mask=mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(eager), atol=1e-6)
    np.testing.assert_allclose(aux["balance_loss"], eager_aux["balance_loss"], rtol=1e-6)


@pytest.mark.parametrize("hidden, top_k", [(0, 0), (6, 1)])
def test_grad_under_jit_is_finite_for_every_param(hidden, top_k):
    """top_k=1: the router's gradient comes from the balance loss only (the mixture weight is 1)."""
    cfg = _cfg(hidden=hidden, top_k=top_k)
    params = _params(hidden)
    vectors, mask = (jnp.asarray(a) for a in _inputs(6))
    target = jnp.asarray(np.random.default_rng(8).normal(size=(3, 5, cfg.d_model)), jnp.float32)

    def loss(p):
        out, aux = msp.apply(p, vectors, cfg=cfg, mask=mask)
        return jnp.sum(out * target) + aux["balance_loss"]

    grads = jax.jit(jax.grad(loss))(params)
    assert grads.keys() == params.keys()
    for name, g in grads.items():
        assert np.all(np.isfinite(np.asarray(g))), name
        assert np.any(np.asarray(g) != 0), name


def test_init_shapes_and_values():
    cfg = _cfg(hidden=6)
    params = msp.init(jax.random.key(5), cfg)
    assert {k: v.shape for k, v in params.items()} == {
        "router": (12, 4), "w_in": (4, 12, 6), "b_in": (4, 6), "w_out": (4, 6, 8), "b_out": (4, 8),
        "norm_scale": (8,)}
    assert not np.any(np.asarray(params["b_in"])) and not np.any(np.asarray(params["b_out"]))
    np.testing.assert_array_equal(np.asarray(params["norm_scale"]), 1.0)


@pytest.mark.parametrize("field, value", [
    ("content_dim", 0), ("d_model", 0), ("num_experts", 0), ("hidden", -1), ("top_k", 5),
    ("top_k", -1), ("router_temperature", 0.0), ("router_temperature", float("inf")),
    ("balance_weight", -0.1),
])
def test_bad_config_is_one_line_naming_the_field(field, value):
    cfg = _cfg(**{field: value})
    for call in (lambda: msp.init(jax.random.key(0), cfg), lambda: msp.param_count(cfg)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert f"msp.{field}" in message and "\n" not in message


def test_bad_shapes_are_named():
    cfg = _cfg()
    params = _params(0)
    with pytest.raises(ValueError, match="content_dim is 12"):
        msp.apply(params, jnp.zeros((2, 3, 10)), cfg=cfg)
    with pytest.raises(ValueError, match="mask has shape"):
        msp.apply(params, jnp.zeros((2, 3, 12)), cfg=cfg, mask=jnp.ones((2, 4), bool))


@pytest.mark.parametrize("hidden", [0, 6])
def test_param_count_axes_and_flops(hidden):
    cfg = _cfg(hidden=hidden)
    params = jax.eval_shape(functools.partial(msp.init, cfg=cfg), jax.random.key(0))  # real shapes
    assert msp.param_count(cfg) == sum(x.size for x in jax.tree.leaves(params))
    axes = msp.param_axes(cfg)
    assert axes.keys() == params.keys()
    assert all(len(axes[k]) == v.ndim for k, v in params.items())
    assert msp.flops_per_token(cfg) == msp.flops_per_token(dataclasses.replace(cfg, top_k=1))
    wider = dataclasses.replace(cfg, num_experts=8)
    assert msp.flops_per_token(wider) > msp.flops_per_token(cfg)
    assert msp.param_count(wider) > msp.param_count(cfg)

"""Ranking head (DCAT + SIREN hard search) against a NumPy float64 reference, and the naive path."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.nn import rank

CFG = rank.RankConfig(d_model=16, codes_per_level=(3, 4, 5), num_heads=2, head_dim=8, mlp_dim=24,
                      recent_k=2, hard_search_levels=0)
SCORE = jax.jit(rank.score, static_argnames="cfg")
NAIVE = jax.jit(rank.naive_score, static_argnames="cfg")
MASK = jax.jit(rank.attention_mask, static_argnames="cfg")


def _inputs(seed=0, B=2, T=7, N=5):
    """History states with padding, and SIDs drawn from few codes so prefixes collide."""
    rng = np.random.default_rng(seed)
    hist = rng.normal(size=(B, T, CFG.d_model)).astype(np.float32)
    mask = np.ones((B, T), bool)
    mask[0, :2] = False  # left padding
    mask[1, -1] = False  # right padding
    hcodes = np.stack([rng.integers(0, k, size=(B, T)) for k in CFG.codes_per_level], -1)
    ccodes = np.stack([rng.integers(0, k, size=(B, N)) for k in CFG.codes_per_level], -1)
    ccodes[0, 0] = [2, 3, 4]
    hcodes[0, :, 0] = np.where(hcodes[0, :, 0] == 2, 1, hcodes[0, :, 0])  # no history item shares 2
    return hist, mask, hcodes.astype(np.int32), ccodes.astype(np.int32)


def _reference(params, hist, mask, hcodes, ccodes, cfg):
    """Loop-by-loop float64 scores, with the mask written out from its definition."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    offsets = np.concatenate([[0], np.cumsum(cfg.codes_per_level)[:-1]])
    B, T, _ = hist.shape
    out = np.zeros(ccodes.shape[:2])
    for b in range(B):
        real = [t for t in range(T) if mask[b, t]]
        recent = set(real[len(real) - cfg.recent_k:]) if cfg.recent_k else set()
        k = np.einsum("td,dhk->thk", hist[b].astype(np.float64), p["w_key"])
        v = np.einsum("td,dhk->thk", hist[b].astype(np.float64), p["w_value"])
        for n in range(ccodes.shape[1]):
            c = sum(p["code_embed"][offsets[j] + ccodes[b, n, j]] + p["level_embed"][j]
                    for j in range(len(offsets)))
            lv = cfg.hard_search_levels
            keep = [t for t in real if lv == 0 or t in recent
                    or list(hcodes[b, t, :lv]) == list(ccodes[b, n, :lv])]
            q = np.einsum("d,dhk->hk", c, p["w_query"])
            att = np.zeros_like(q)
            if keep:
                logit = np.einsum("hk,thk->ht", q, k[keep]) / math.sqrt(q.shape[-1])
                w = np.exp(logit - logit.max(-1, keepdims=True))
                att = np.einsum("ht,thk->hk", w / w.sum(-1, keepdims=True), v[keep])
            x = np.concatenate([c, np.einsum("hk,hkd->d", att, p["w_out"])])
            z = x @ p["mlp_in"] + p["mlp_in_bias"]
            g = 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
            out[b, n] = g @ p["mlp_out"] + p["mlp_out_bias"]
    return out


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_score_and_naive_match_numpy_reference(levels):
    cfg = dataclasses.replace(CFG, hard_search_levels=levels)
    params = rank.init(jax.random.key(0), cfg)
    hist, mask, hcodes, ccodes = _inputs()
    args = (params, jnp.asarray(hist), jnp.asarray(mask), jnp.asarray(ccodes))
    got = SCORE(*args, cfg=cfg, history_codes=jnp.asarray(hcodes))
    ref = _reference(params, hist, mask, hcodes, ccodes, cfg)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
    naive = NAIVE(*args, cfg=cfg, history_codes=jnp.asarray(hcodes))
    np.testing.assert_allclose(np.asarray(naive), np.asarray(got), rtol=1e-5, atol=1e-5)
    if levels:  # candidate (0, 0) shares no first code: it sees only the recent items
        m = MASK(jnp.asarray(mask), jnp.asarray(ccodes), cfg=cfg,
                                history_codes=jnp.asarray(hcodes))
        assert np.asarray(m)[0, 0].tolist() == [False] * 5 + [True] * 2


def test_hard_search_mask_hand_written():
    # history items (first two codes), padding at t=0; recent_k=1 keeps t=4 (the last real one)
    hcodes = jnp.asarray([[[0, 0, 0], [1, 2, 0], [1, 3, 0], [0, 2, 0], [2, 0, 0], [1, 2, 0]]])
    hmask = jnp.asarray([[False, True, True, True, True, False]])
    ccodes = jnp.asarray([[[1, 2, 4], [0, 0, 1], [2, 1, 0]]])
    one = MASK(hmask, ccodes, history_codes=hcodes,
                              cfg=dataclasses.replace(CFG, hard_search_levels=1, recent_k=1))
    two = MASK(hmask, ccodes, history_codes=hcodes,
                              cfg=dataclasses.replace(CFG, hard_search_levels=2, recent_k=1))
    F, T = False, True
    assert np.asarray(one)[0].tolist() == [[F, T, T, F, T, F], [F, F, F, T, T, F],
                                           [F, F, F, F, T, F]]
    assert np.asarray(two)[0].tolist() == [[F, T, F, F, T, F], [F, F, F, F, T, F],
                                           [F, F, F, F, T, F]]
    full = MASK(hmask, ccodes, cfg=CFG)
    assert np.asarray(full)[0].tolist() == [hmask[0].tolist()] * 3
    padded = rank.ranking_loss(jnp.asarray([[1.0, 2.0, 50.0]]), jnp.asarray([0]),
                               jnp.asarray([[True, True, False]]))
    np.testing.assert_allclose(float(padded), np.log(np.e + np.e ** 2) - 1.0, rtol=1e-6)


def test_nothing_to_attend_gives_zeros_and_jit_grad_finite():
    cfg = dataclasses.replace(CFG, hard_search_levels=1, recent_k=0)  # candidate (0, 0): no keys
    params = rank.init(jax.random.key(2), cfg)
    np_inputs = _inputs()
    hist, mask, hcodes, ccodes = (jnp.asarray(a) for a in np_inputs)
    assert not np.asarray(MASK(mask, ccodes, cfg=cfg, history_codes=hcodes))[0, 0].any()
    pos = jnp.asarray([1, 3])

    @jax.jit
    def loss(p):
        s = rank.score(p, hist, mask, ccodes, cfg=cfg, history_codes=hcodes)
        return rank.ranking_loss(s, pos), s

    (value, s), grads = jax.value_and_grad(loss, has_aux=True)(params)
    # the reference gives an empty attention the zero vector: the score of the candidate alone
    np.testing.assert_allclose(np.asarray(s), _reference(params, *np_inputs, cfg), rtol=1e-5,
                               atol=1e-5)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
    assert np.abs(np.asarray(grads["w_key"])).sum() > 0
    expected = np.mean([np.log(np.sum(np.exp(r))) - r[i] for r, i in zip(np.asarray(s), [1, 3])])
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    assert set(grads) == set(rank.param_axes(cfg))
    assert sum(int(np.size(v)) for v in params.values()) == rank.param_count(cfg)
    assert all(len(rank.param_axes(cfg)[k]) == v.ndim for k, v in params.items())
    f = rank.flops(cfg, T=50, N=200)
    assert f["naive"] > f["dcat"] > 0


@pytest.mark.parametrize("field,value", [("d_model", 0), ("codes_per_level", ()),
                                         ("recent_k", -1), ("hard_search_levels", 3),
                                         ("num_heads", 0)])
def test_config_errors_are_one_line_and_name_the_field(field, value):
    cfg = dataclasses.replace(CFG, **{field: value})
    with pytest.raises(ValueError, match=f"rank.{field}") as err:
        rank.init(jax.random.key(0), cfg)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="history_codes"):
        rank.attention_mask(jnp.ones((1, 3), bool), jnp.zeros((1, 2, 3), jnp.int32),
                            cfg=dataclasses.replace(CFG, hard_search_levels=1))

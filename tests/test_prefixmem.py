"""PrefixMem against a plain NumPy reference: which rows each position reads, and the output."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sid_layout

from sidjax.config import PrefixMemConfig
from sidjax.nn import prefixmem as pm


def _cfg(**kw):
    base = dict(enabled=True, codes_per_level=(6, 5, 4, 3), d_model=16, mem_dim=4,
                exact_threshold=40, hash_heads=2, hash_table_size=50)
    base.update(kw)
    return PrefixMemConfig(**base)


def _reference_rows(cfg, codes, levels):
    """Loop-by-loop row ids: the n-gram ending at each position, per table of the layout."""
    lay = pm.layout(cfg)
    orders = sorted(cfg.orders)
    rows = np.full((len(codes), lay.num_slots), -1)
    for t, level in enumerate(levels):
        for spec in lay.tables:
            if spec.level != level:
                continue
            ngram = [int(codes[t - spec.order + 1 + j]) for j in range(spec.order)]
            if spec.exact:
                local = 0
                for c, k in zip(ngram, cfg.codes_per_level[level - spec.order:level]):
                    local = local * k + c
            else:
                h = 0
                for c, m in zip(ngram, spec.radix):
                    h = ((h ^ (((c + 1) * m) & 0xFFFFFFFF)) * 0x9E3779B1) & 0xFFFFFFFF
                    h ^= h >> 15
                local = h % spec.size
            rows[t, orders.index(spec.order) * cfg.hash_heads + spec.head] = spec.offset + local
    return rows


def test_layout_offsets_primes_and_padding():
    cfg = _cfg()
    lay = pm.layout(cfg)
    hashed = [t for t in lay.tables if not t.exact]
    assert hashed, "the config must exercise hashed tables"
    sizes = [t.size for t in hashed]
    assert len(set(sizes)) == len(sizes) and all(pm._is_prime(s) for s in sizes)
    for a, b in zip(lay.tables, lay.tables[1:]):
        assert b.offset == a.offset + a.size
    assert lay.num_rows % cfg.pad_rows_to == 0
    assert lay.num_rows >= lay.tables[-1].offset + lay.tables[-1].size
    exact = {(t.level, t.order) for t in lay.tables if t.exact}
    assert (2, 2) in exact and (4, 4) not in exact  # 6*5 <= 40 < 6*5*4*3


@pytest.mark.parametrize("orders", [(1, 2, 3, 4), (2, 4), (1,)])
def test_lookup_rows_match_numpy_reference(orders):
    cfg = _cfg(orders=orders)
    rng = np.random.default_rng(0)
    codes, levels = sid_layout(rng, 5, cfg.codes_per_level)
    rows = np.asarray(pm.lookup_rows(cfg, jnp.asarray(codes), jnp.asarray(levels)))
    np.testing.assert_array_equal(rows, _reference_rows(cfg, codes, levels))
    assert np.all(rows[levels == 0] == -1)


def test_same_code_under_different_prefixes_reads_different_rows():
    cfg = _cfg()
    codes = np.array([0, 1, 2, 0, 3, 2, 0])
    levels = np.array([0, 1, 2, 0, 1, 2, 0])
    rows = np.asarray(pm.lookup_rows(cfg, jnp.asarray(codes), jnp.asarray(levels)))
    assert rows[2, 0] == rows[5, 0]  # unigram of code 2 at level 2
    assert rows[2, 2] != rows[5, 2]  # bigrams (1, 2) vs (3, 2)


@pytest.mark.parametrize("gate", [True, False])
def test_apply_matches_numpy_reference(gate):
    cfg = _cfg(gate=gate)
    params = pm.init(jax.random.key(1), cfg)
    rng = np.random.default_rng(2)
    codes, levels = sid_layout(rng, 3, cfg.codes_per_level)
    hidden = rng.normal(size=(len(codes), cfg.d_model)).astype(np.float32)
    out = np.asarray(pm.apply(params, jnp.asarray(codes), jnp.asarray(levels), cfg=cfg,
                              hidden=jnp.asarray(hidden)))
    p = {k: np.asarray(v) for k, v in params.items()}
    rows = _reference_rows(cfg, codes, levels)
    memory = np.where(rows[..., None] >= 0, p["table"][np.maximum(rows, 0)], 0).reshape(
        len(codes), -1)
    expected = memory @ p["w_value"]
    if gate:
        def rms(x, s):
            return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * s

        score = np.sum(rms(hidden, p["query_scale"]) * rms(memory @ p["w_key"], p["key_scale"]),
                       -1, keepdims=True)
        expected = expected / (1 + np.exp(-score / np.sqrt(cfg.d_model)))
    expected[levels == 0] = 0
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_apply_under_jit_grad_and_vmap():
    cfg = _cfg()
    params = pm.init(jax.random.key(0), cfg)
    rng = np.random.default_rng(0)
    batch = [sid_layout(rng, 2, cfg.codes_per_level) for _ in range(3)]
    codes = jnp.asarray(np.stack([b[0] for b in batch]))
    levels = jnp.asarray(np.stack([b[1] for b in batch]))
    f = jax.jit(lambda p, c, lv: pm.apply(p, c, lv, cfg=cfg))
    batched = f(params, codes, levels)
    per_row = jax.vmap(lambda c, lv: pm.apply(params, c, lv, cfg=cfg))(codes, levels)
    np.testing.assert_allclose(batched, per_row, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(pm.apply(p, codes, levels, cfg=cfg) ** 2))(params)
    touched = np.unique(np.asarray(pm.lookup_rows(cfg, codes, levels)))
    touched = touched[touched >= 0]
    row_has_grad = np.any(np.asarray(grads["table"]) != 0, axis=1)
    assert set(np.flatnonzero(row_has_grad)) == set(touched.tolist())


def test_param_count_and_flops_helpers():
    cfg = _cfg()
    params = pm.init(jax.random.key(0), cfg)
    assert pm.param_count(cfg) == sum(x.size for x in jax.tree.leaves(params))
    ungated = dataclasses.replace(cfg, gate=False)
    assert pm.flops_per_token(ungated) < pm.flops_per_token(cfg)


@pytest.mark.parametrize("bad, message", [
    (dict(codes_per_level=()), "codes_per_level is empty"),
    (dict(d_model=0), "d_model must be > 0"),
    (dict(orders=(0, 1)), "orders must be distinct integers >= 1"),
])
def test_bad_config_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        pm.layout(_cfg(**bad))


@pytest.mark.parametrize("orders, fusion", [((1, 2, 3, 4), "concat"), ((2, 4), "sum"), ((1,), "concat")])
def test_read_memory_of_precomputed_rows_is_identical(orders, fusion):
    """Keying (parameter-free rows) then lookup gives read_memory(codes, levels) bit for bit."""
    cfg = _cfg(orders=orders, fusion=fusion)
    params = pm.init(jax.random.key(3), cfg)
    rng = np.random.default_rng(4)
    batch = [sid_layout(rng, 3, cfg.codes_per_level) for _ in range(2)]
    codes = jnp.asarray(np.stack([b[0] for b in batch]))
    levels = jnp.asarray(np.stack([b[1] for b in batch]))
    rows = jax.jit(pm.memory_rows, static_argnums=0)(cfg, codes, levels)  # no params involved
    direct = np.asarray(pm.read_memory(params, codes, levels, cfg=cfg))
    np.testing.assert_array_equal(pm.read_memory(params, rows=rows, cfg=cfg), direct)
    np.testing.assert_array_equal(rows[0], _reference_rows(cfg, batch[0][0], batch[0][1]))
    with pytest.raises(TypeError, match="not both"):
        pm.read_memory(params, codes, levels, rows=rows, cfg=cfg)
    with pytest.raises(TypeError, match="precomputed rows"):
        pm.read_memory(params, cfg=cfg)


def test_step_rows_of_one_position_equal_the_window_rows():
    """step_rows from the codes before a position (windows shorter and longer than max(orders))
    equal memory_rows at that position, and reading them equals that position of the full read."""
    cfg = _cfg()
    params = pm.init(jax.random.key(5), cfg)
    rng = np.random.default_rng(6)
    codes, levels = sid_layout(rng, 3, cfg.codes_per_level)
    full_rows = np.asarray(pm.memory_rows(cfg, jnp.asarray(codes), jnp.asarray(levels)))
    full = np.asarray(pm.read_memory(params, jnp.asarray(codes), jnp.asarray(levels), cfg=cfg))
    for t in range(len(codes)):
        for width in (1, 2, max(cfg.orders), 6):
            level = levels[t]
            if width < level:  # a window must reach back over the item's earlier levels
                continue
            window = jnp.asarray(codes[max(0, t + 1 - width):t + 1])
            rows = pm.step_rows(cfg, window, jnp.asarray(level))
            np.testing.assert_array_equal(rows, full_rows[t], err_msg=f"t={t} width={width}")
            np.testing.assert_array_equal(pm.read_memory(params, rows=rows, cfg=cfg), full[t])


def test_item_memory_rows_path_is_identical():
    from sidjax.config import ModelConfig
    from sidjax.nn import itemmem as im

    cfg = ModelConfig(d_model=16, prefixmem=_cfg(enabled=False))
    spec = im.resolve(cfg, (6, 5, 4, 3))
    params = im.init(jax.random.key(7), spec)
    rng = np.random.default_rng(8)
    codes, levels = sid_layout(rng, 3, (6, 5, 4, 3))
    codes, levels = jnp.asarray(codes), jnp.asarray(levels)
    rows = im.memory_rows(spec, codes, levels)
    full = np.asarray(im.read_memory(params, codes, levels, cfg=spec))
    assert np.any(full != 0)
    np.testing.assert_array_equal(im.read_memory(params, rows=rows, cfg=spec), full)
    for t in range(4, len(codes)):
        one = im.read_memory(params, rows=im.step_rows(spec, codes[t - 3:t + 1], levels[t]),
                             cfg=spec)
        np.testing.assert_array_equal(one, full[t])

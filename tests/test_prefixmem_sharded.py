"""PrefixMem under a mesh: row-sharded table reads equal the unsharded reference (8 CPU devices)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.config import PrefixMemConfig
from sidjax.nn import prefixmem as pm
from sidjax.parallel import MeshConfig, make_mesh, shard_pytree


def _cfg(**kw):
    base = dict(enabled=True, codes_per_level=(6, 5, 4, 3), d_model=16, mem_dim=4,
                exact_threshold=40, hash_heads=2, hash_table_size=50, pad_rows_to=8)
    base.update(kw)
    return PrefixMemConfig(**base)


def _batch(cfg, batch=8, items=3, seed=0):
    rng = np.random.default_rng(seed)
    ks = cfg.codes_per_level
    codes = np.zeros((batch, 1 + items * len(ks)), np.int32)
    levels = np.zeros_like(codes)
    for b in range(batch):
        for i in range(items):
            for level, k in enumerate(ks, 1):
                t = 1 + i * len(ks) + level - 1
                codes[b, t], levels[b, t] = rng.integers(k), level
    hidden = rng.normal(size=codes.shape + (cfg.d_model,)).astype(np.float32)
    weight = rng.normal(size=codes.shape + (cfg.d_model,)).astype(np.float32)
    return jnp.asarray(codes), jnp.asarray(levels), jnp.asarray(hidden), jnp.asarray(weight)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("data, model, fusion", [(8, 1, "concat"), (2, 4, "concat"),
                                                 (1, 8, "concat"), (2, 4, "sum")])
def test_sharded_forward_and_grads_equal_unsharded(data, model, fusion):
    cfg = _cfg(fusion=fusion)
    params = pm.init(jax.random.key(0), cfg)
    codes, levels, hidden, weight = _batch(cfg)
    mesh = make_mesh(MeshConfig(data=data, model=model))

    def loss(p, h, m):
        out = pm.apply(p, codes, levels, cfg=cfg, hidden=h, mesh=m)
        return jnp.sum(out * weight), out

    ref_grad, ref_out = jax.jit(jax.grad(lambda p, h: loss(p, h, None), argnums=(0, 1),
                                         has_aux=True))(params, hidden)
    sharded = shard_pytree(params, pm.param_axes(cfg), mesh)
    if model > 1:
        assert sharded["table"].sharding.spec[0] == "model"
    grad, out = jax.jit(jax.grad(lambda p, h: loss(p, h, mesh), argnums=(0, 1),
                                 has_aux=True))(sharded, hidden)
    assert _rel(out, ref_out) < 1e-6
    assert np.abs(np.asarray(ref_out)).max() > 0
    for name in params:
        assert _rel(grad[0][name], ref_grad[0][name]) < 1e-6, name
        assert np.abs(np.asarray(ref_grad[0][name])).max() > 0, name
    assert _rel(grad[1], ref_grad[1]) < 1e-6
    if model > 1:  # the table gradient stays row-sharded on the owning shards
        assert grad[0]["table"].sharding.spec[0] == "model"


def test_sum_fusion_is_projected_row_sum():
    cfg = _cfg(fusion="sum", gate=False)
    params = pm.init(jax.random.key(3), cfg)
    codes, levels, _, _ = _batch(cfg, batch=2)
    assert params["w_value"].shape == (cfg.mem_dim, cfg.d_model)
    rows = np.asarray(pm.lookup_rows(cfg, codes, levels))
    table = np.asarray(params["table"])
    memory = np.where(rows[..., None] >= 0, table[np.maximum(rows, 0)], 0).sum(-2)
    expected = memory @ np.asarray(params["w_value"])
    out = pm.apply(params, codes, levels, cfg=cfg)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
    assert pm.param_count(cfg) == sum(x.size for x in jax.tree.leaves(params))


def test_inject_layers_sites_and_embedding_default():
    cfg = _cfg(inject_layers=(0, 2))
    params = pm.init(jax.random.key(1), cfg)
    assert params["w_value"].shape[0] == 2 and params["query_scale"].shape == (2, cfg.d_model)
    assert pm.param_count(cfg) == sum(x.size for x in jax.tree.leaves(params))
    codes, levels, hidden, _ = _batch(cfg, batch=2)
    memory = pm.read_memory(params, codes, levels, cfg=cfg)
    assert pm.inject(params, memory, hidden, levels, cfg=cfg, layer=None) is hidden
    assert pm.inject(params, memory, hidden, levels, cfg=cfg, layer=1) is hidden
    at2 = pm.inject(params, memory, hidden, levels, cfg=cfg, layer=2)
    np.testing.assert_allclose(
        np.asarray(at2 - hidden),
        np.asarray(pm.apply(params, codes, levels, cfg=cfg, hidden=hidden, site=1)), atol=1e-6)
    at0 = pm.inject(params, memory, hidden, levels, cfg=cfg, layer=0)
    assert not np.allclose(np.asarray(at0), np.asarray(at2))
    plain = _cfg()
    p0 = pm.init(jax.random.key(1), plain)
    m0 = pm.read_memory(p0, codes, levels, cfg=plain)
    np.testing.assert_allclose(
        np.asarray(pm.inject(p0, m0, hidden, levels, cfg=plain, layer=None) - hidden),
        np.asarray(pm.apply(p0, codes, levels, cfg=plain, hidden=hidden)), atol=1e-6)
    assert pm.inject(p0, m0, hidden, levels, cfg=plain, layer=0) is hidden


def test_rows_must_divide_the_row_axis():
    mesh = make_mesh(MeshConfig(data=2, model=4))
    cfg = _cfg(pad_rows_to=1)
    params = pm.init(jax.random.key(0), cfg)
    codes, levels, _, _ = _batch(cfg)
    if params["table"].shape[0] % 4:
        with pytest.raises(ValueError, match="pad_rows_to to a multiple of 4"):
            pm.apply(params, codes, levels, cfg=cfg, mesh=mesh)
    fixed = pm.for_mesh(cfg, mesh)
    assert fixed.pad_rows_to == 4 and pm.layout(fixed).num_rows % 4 == 0
    out = pm.apply(pm.init(jax.random.key(0), fixed), codes, levels, cfg=fixed, mesh=mesh)
    assert out.shape == codes.shape + (cfg.d_model,)


def test_memory_report_arithmetic():
    cfg = PrefixMemConfig(enabled=True, codes_per_level=(256,) * 4, orders=(1,), exact_threshold=0,
                          hash_heads=2, hash_table_size=50_000_000, mem_dim=64, d_model=2048,
                          pad_rows_to=64)
    rows = pm.layout(cfg).num_rows
    report = pm.memory_report(cfg, (2, 1, 32))
    assert report["row_axis"] == "model" and report["row_shards"] == 32
    assert report["table_bytes"] == rows * 64 * 4
    assert report["table_bytes_per_device"] == rows // 32 * 64 * 4
    proj = 2 * (2 * 64) * 2048 + 2 * 2048
    assert report["projection_bytes_per_device"] == proj * 4
    assert report["optimizer_bytes_per_device"] == 2 * 4 * (rows // 32 * 64 + proj)
    assert report["total_bytes_per_device"] < 16 * 2**30  # fits a v5e chip
    assert pm.memory_report(cfg, (8, 1, 8))["total_bytes_per_device"] > 16 * 2**30
    half = pm.memory_report(dataclasses.replace(cfg, param_dtype="bfloat16"), {"model": 32})
    assert half["table_bytes_per_device"] == report["table_bytes_per_device"] // 2
    # fsdp shards the projections' embed dimension.
    fsdp = pm.memory_report(cfg, (1, 2, 32))
    assert fsdp["projection_bytes_per_device"] == proj * 4 // 2

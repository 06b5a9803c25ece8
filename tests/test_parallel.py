"""Tests for sidjax.parallel: mesh building, logical axis rules, row-sharded embedding lookup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sidjax.parallel import (
    DEFAULT_RULES,
    AxisRules,
    MeshConfig,
    logical_shardings,
    logical_to_spec,
    make_mesh,
    named_sharding,
    pad_rows,
    shard_pytree,
    sharded_take,
)

D = 3


def _ids_for(rows: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random ids plus repeats and every row-block boundary (0, R-1, multiples of R/8 +- 1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, rows, size=shape).astype(np.int32)
    flat = ids.reshape(-1)
    step = rows // 8
    special = sorted({0, rows - 1, *range(0, rows, step), *range(step - 1, rows, step)})
    flat[: len(special)] = special
    flat[len(special) : len(special) + 4] = special[1]  # repeated id
    return flat.reshape(shape)


# ---------------------------------------------------------------------------------------- mesh


def test_mesh_fill_and_shapes():
    assert len(jax.devices()) == 8
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2, model=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "model": 1}
    one = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "model": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "cfg, pattern",
    [
        (MeshConfig(data=-1, model=3), r"data=-1, fsdp=1, model=3.*3.*does not divide.*8"),
        (MeshConfig(data=2, fsdp=2, model=1), r"data=2, fsdp=2, model=1.*multiply to 4.*8 devices"),
        (MeshConfig(data=-1, fsdp=-1), r"at most one mesh axis may be -1"),
        (MeshConfig(data=0, model=8), r"positive or -1.*data=0"),
    ],
)
def test_mesh_bad_sizes(cfg, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_mesh(cfg)


# --------------------------------------------------------------------------------------- rules


def test_logical_to_spec_mapping():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, model=2))
    assert logical_to_spec(("batch", "length"), mesh=mesh) == P(("data", "fsdp"), None)
    assert logical_to_spec(("table_rows", "embed"), mesh=mesh) == P("model", "fsdp")
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "model")
    assert logical_to_spec(("batch", "length", "heads", "kv")) == P(
        ("data", "fsdp"), None, "model", None
    )
    assert logical_to_spec(("batch", "length", "levels", "vocab"), mesh=mesh) == P(
        ("data", "fsdp"), None, None, "model"
    )
    assert logical_to_spec((None, "embed")) == P(None, "fsdp")
    # A mesh axis is used at most once: batch claims fsdp first, embed then stays whole.
    assert logical_to_spec(("batch", "length", "embed"), mesh=mesh) == P(
        ("data", "fsdp"), None, None
    )
    with pytest.raises(ValueError, match="'fsdp' used by dimension 0"):
        logical_to_spec(("batch", "embed"), mesh=mesh, strict=True)
    with pytest.raises(KeyError, match="unknown logical axis name 'bogus'"):
        logical_to_spec(("bogus",))
    # Axes of size 1 (or absent from the mesh) drop out.
    dp = make_mesh(MeshConfig(data=-1, fsdp=1, model=1))
    assert logical_to_spec(("batch", "embed"), mesh=dp) == P("data", None)
    assert logical_to_spec(("table_rows", "embed"), mesh=dp) == P(None, None)
    rules = DEFAULT_RULES.replace(embed="tensor", codebook=None)
    assert isinstance(rules, AxisRules)
    assert logical_to_spec(("embed", "codebook"), rules, mesh=mesh) == P(None, None)
    assert logical_to_spec(("embed",), rules) == P("tensor")


def test_rules_noop_on_one_device():
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    for names in [("batch", "length", "embed"), ("table_rows", "embed"), ("embed", "mlp")]:
        spec = logical_to_spec(names, mesh=mesh)
        assert all(e is None for e in spec)
        assert named_sharding(mesh, names).is_fully_replicated


def test_shard_pytree():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, model=2))
    tree = {"table": jnp.ones((16, 4)), "mlp": (jnp.ones((4, 8)), jnp.ones(())), "b": jnp.ones(8)}
    names = {"table": ("table_rows", "embed"), "mlp": (("embed", "mlp"), ()), "b": None}
    out = shard_pytree(tree, names, mesh)
    assert out["table"].sharding.spec == P("model", "fsdp")
    assert out["mlp"][0].sharding.spec == P("fsdp", "model")
    assert out["b"].sharding.is_fully_replicated
    assert out["table"].addressable_shards[0].data.shape == (8, 2)
    shardings = logical_shardings(names, mesh)
    assert shardings["mlp"][1].spec == P()
    with pytest.raises(ValueError, match="2 entries but the array has shape"):
        shard_pytree({"x": jnp.ones(3)}, {"x": ("batch", "embed")}, mesh)


# -------------------------------------------------------------------------------------- lookup


def test_pad_rows():
    assert pad_rows(10, 4) == 12
    assert pad_rows(12, 4) == 12
    assert pad_rows(0, 8) == 0
    assert pad_rows(5, 1) == 5
    with pytest.raises(ValueError):
        pad_rows(5, 0)


@pytest.mark.parametrize("model", [1, 2, 4, 8])
def test_sharded_take_parity(model):
    rows = 32
    mesh = make_mesh(MeshConfig(data=-1, model=model))
    rng = np.random.default_rng(model)
    table = rng.standard_normal((rows, D)).astype(np.float32)
    ids = _ids_for(rows, (8, 2, 3), seed=model)  # [B, T, S]
    weight = rng.standard_normal(ids.shape + (D,)).astype(np.float32)

    def loss(tbl, idx):
        return jnp.sum(sharded_take(tbl, idx, mesh=mesh) * weight)

    out = jax.jit(lambda t, i: sharded_take(t, i, mesh=mesh))(table, ids)
    np.testing.assert_allclose(np.asarray(out), table[ids], rtol=0, atol=0)
    if 1 < model < 8:  # the batch is split over data (8 / model devices)
        assert out.sharding.spec[0] == "data"

    grad = jax.jit(jax.grad(loss))(table, ids)
    ref = np.zeros_like(table)
    np.add.at(ref, ids.reshape(-1), weight.reshape(-1, D))
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-5, atol=1e-5)
    # Unsharded JAX gradient agrees too.
    plain = jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) * weight))(table)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(plain), rtol=1e-5, atol=1e-5)


def test_sharded_take_mixed_mesh_and_odd_batch():
    # data=2, fsdp=2, model=2: ids batch 6 is divisible by data only; 1-D and 0-D ids.
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, model=2))
    table = np.arange(16 * D, dtype=np.float32).reshape(16, D)
    ids = np.array([0, 7, 8, 15, 8, 7], dtype=np.int32)
    out = sharded_take(table, ids, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(out), table[ids])
    assert out.sharding.spec[0] == "data"
    np.testing.assert_array_equal(np.asarray(sharded_take(table, np.int32(9), mesh=mesh)), table[9])
    w = np.linspace(-1.0, 1.0, ids.size * D, dtype=np.float32).reshape(ids.size, D)
    grad = jax.grad(lambda t: jnp.sum(sharded_take(t, ids, mesh=mesh) * w))(jnp.asarray(table))
    ref = np.zeros_like(table)
    np.add.at(ref, ids, w)
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-6, atol=1e-6)


def test_sharded_take_errors_and_noop():
    mesh = make_mesh(MeshConfig(data=-1, model=4))
    with pytest.raises(ValueError, match=r"10 rows.*pad_rows\(10, 4\) = 12"):
        sharded_take(jnp.ones((10, D)), jnp.zeros(4, jnp.int32), mesh=mesh)
    with pytest.raises(TypeError):
        sharded_take(jnp.ones((12, D)), jnp.zeros(4), mesh=mesh)
    table = jnp.arange(10 * D, dtype=jnp.float32).reshape(10, D)
    ids = jnp.array([[1, 9], [9, 0]])
    np.testing.assert_array_equal(sharded_take(table, ids), np.asarray(table)[np.asarray(ids)])

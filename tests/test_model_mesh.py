"""The model on a mesh: PrefixMem's row-sharded lookup (shard_map) inside the model, and a tiny
PrefixMem model trained end to end under a (data=2, model=4) mesh of 8 CPU devices."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sidjax import config as C
from sidjax import run as E
from sidjax.parallel import MeshConfig, make_mesh
from sidjax.train.partition import make_partitioner


def _cfg(steps=30, mesh=(1, 1, 1)):
    cfg = C.tiny()
    pm = dataclasses.replace(cfg.model.prefixmem, enabled=True, orders=(1, 2),
                             hash_table_size=509, inject_layers=(1,))
    model = dataclasses.replace(cfg.model, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                head_dim=8, mlp_dim=64, dropout=0.0, prefixmem=pm)
    train = dataclasses.replace(cfg.train, batch_size=16, steps=steps, warmup_steps=5,
                                log_every=1, checkpoint_every=1000, mesh_data=mesh[0],
                                mesh_fsdp=mesh[1], mesh_model=mesh[2])
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, num_items=120, num_users=160, max_history=6),
        model=model, train=train)


@pytest.fixture(scope="module")
def prep():
    return E.prepare(_cfg(), None, log=lambda _: None)


def test_model_reads_the_sharded_table_with_shard_map(prep):
    mesh = make_mesh(MeshConfig(data=2, model=4), jax.devices()[:8])
    plain = E.build_model(prep.cfg, prep.vocab)
    sharded = E.build_model(prep.cfg, prep.vocab, mesh=mesh)
    plain_def, params = nnx.split(plain)
    sharded_def, _ = nnx.split(sharded)
    rng = np.random.default_rng(0)
    codes = prep.sids.codes[rng.integers(0, len(prep.sids.codes), size=(4, 3))]  # 4 x 3 items
    levels = np.tile(np.arange(1, codes.shape[-1] + 1), (4, 3))
    codes = codes.reshape(4, -1)
    args = (jnp.asarray(prep.vocab.level_offsets[levels - 1] + codes), jnp.asarray(codes),
            jnp.asarray(levels))

    def forward(graphdef):
        return lambda state: nnx.merge(graphdef, state)(*args)

    assert "shard_map" in str(jax.make_jaxpr(forward(sharded_def))(params))
    assert "shard_map" not in str(jax.make_jaxpr(forward(plain_def))(params))
    np.testing.assert_allclose(jax.jit(forward(sharded_def))(params),
                               jax.jit(forward(plain_def))(params), rtol=1e-6, atol=1e-6)


def _losses(workdir) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_prefixmem_trains_under_a_2x4_mesh_like_on_one_device(prep, tmp_path):
    runs = {}
    for mesh in [(1, 1, 1), (2, 1, 4)]:
        cfg = _cfg(mesh=mesh)
        workdir = tmp_path / "x".join(map(str, mesh))
        model = E.train_model(dataclasses.replace(prep, cfg=cfg), workdir, log=lambda _: None)
        runs[mesh] = _losses(workdir), model
    (ref, _), (losses, model) = runs[(1, 1, 1)], runs[(2, 1, 4)]
    assert model.mesh == make_partitioner(2, 1, 4).mesh  # the training path passed its mesh
    assert len(losses) == len(ref) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    np.testing.assert_allclose(losses, ref, rtol=1e-5)

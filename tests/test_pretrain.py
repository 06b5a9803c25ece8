"""Stand-alone PrefixMem pre-training, orbax save/load, and attaching to models of other widths."""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.config import PrefixMemConfig
from sidjax.data.split import item_counts, leave_one_out
from sidjax.data.synthetic import synthetic_catalog
from sidjax.nn import prefixmem as pm
from sidjax.nn import pretrain as pt
from sidjax.parallel import MeshConfig, make_mesh
from sidjax.sid.table import build_sid_table


@pytest.fixture(scope="module")
def catalog():
    data = synthetic_catalog(240, 200, num_top=4, num_mid_per_top=2, num_fine_per_mid=2,
                             content_dim=16, max_len=12, seed=1)
    split = leave_one_out(data.sequences)
    sids, _ = build_sid_table(data.item_vectors, data.item_ids, levels=2, codes=8, iters=5)
    cfg = PrefixMemConfig(enabled=True, codes_per_level=sids.codes_per_level, d_model=32,
                          mem_dim=8, orders=(1, 2, 3), hash_table_size=61, exact_threshold=64)
    return cfg, sids, data.item_vectors, item_counts(split.train, data.num_items), split.train


def test_prefix_means_reference():
    codes = np.array([[0, 0], [0, 1], [1, 0]])
    vectors = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    means = pt.prefix_means(codes, vectors)
    np.testing.assert_allclose(means[:, 0], [[2, 1], [2, 1], [5, 5]])
    np.testing.assert_allclose(means[:, 1], vectors)


def test_pretrain_losses_decrease_under_a_mesh(catalog):
    cfg, sids, vectors, counts, train = catalog
    mesh = make_mesh(MeshConfig(data=2, model=4))
    cfg = pm.for_mesh(cfg, mesh)
    params, history = pt.pretrain(cfg, sids.codes, vectors, counts, steps=30, lr=2e-2,
                                  batch_size=32, sequences=train, contrastive_weight=0.1,
                                  log_every=15, mesh=mesh)
    assert [h["step"] for h in history] == [15, 30]
    first, last = history[0], history[-1]
    for name in ("loss", "next_code", "align", "contrastive"):
        assert last[name] < first[name], (name, first[name], last[name])
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, pm.init(jax.random.key(0), cfg))
    # The pre-trained memory predicts next codes better than chance.
    assert last["next_code_acc"] > 1.5 / sids.codes_per_level[1]


def test_save_load_and_attach_across_widths(catalog, tmp_path):
    cfg, sids, vectors, counts, _ = catalog
    params, _ = pt.pretrain(cfg, sids.codes, vectors, counts, steps=2, batch_size=16)
    out = pt.save_pretrained(params, cfg, tmp_path / "pm")
    pt.save_pretrained(params, cfg, tmp_path / "pm")  # overwriting replaces it whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pm"]
    loaded, loaded_cfg = pt.load_pretrained(out)
    assert loaded_cfg == cfg
    for k in params:
        np.testing.assert_array_equal(np.asarray(loaded[k]), np.asarray(params[k]))

    same = pt.attach(loaded, loaded_cfg, cfg, jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(same["w_value"]), np.asarray(params["w_value"]))
    wide = dataclasses.replace(cfg, d_model=48, pad_rows_to=16, fusion="sum")
    attached = pt.attach(loaded, loaded_cfg, wide, jax.random.key(5))
    ref = pm.init(jax.random.key(0), wide)
    assert jax.tree.map(jnp.shape, attached) == jax.tree.map(jnp.shape, ref)
    used = pm.layout(cfg).tables[-1].offset + pm.layout(cfg).tables[-1].size
    np.testing.assert_array_equal(np.asarray(attached["table"][:used]),
                                  np.asarray(params["table"][:used]))
    codes = jnp.asarray(sids.codes[:4])
    levels = jnp.broadcast_to(jnp.arange(1, codes.shape[1] + 1), codes.shape)
    assert pm.apply(attached, codes, levels, cfg=wide).shape == codes.shape + (48,)
    with pytest.raises(ValueError, match="mem_dim: 8 vs 4"):
        pt.attach(loaded, loaded_cfg, dataclasses.replace(cfg, mem_dim=4), jax.random.key(0))
    (out / "config.json").write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ValueError, match="unknown PrefixMem config keys"):
        pt.load_pretrained(out)


def test_bad_inputs_are_named(catalog):
    cfg, sids, vectors, counts, _ = catalog
    with pytest.raises(ValueError, match="out of range of prefixmem.codes_per_level"):
        pt.pretrain(dataclasses.replace(cfg, codes_per_level=(2, 2, 2)), sids.codes, vectors,
                    counts, steps=1)
    with pytest.raises(ValueError, match="one row per item"):
        pt.pretrain(cfg, sids.codes, vectors[:-1], counts, steps=1)


def test_cli_parser_and_run(tmp_path):
    parser = argparse.ArgumentParser()
    pt.add_pretrain_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pretrain-mem", "--config", "tiny", "--workdir", str(tmp_path),
                              "--steps", "4", "--batch-size", "32", "--quiet",
                              "--set", "data.num_items=150", "--set", "data.num_users=120",
                              "--set", "sid.kmeans_iters=3", "--set", "sid.codes=8"])
    assert pt.run_pretrain(args) == 0
    params, cfg = pt.load_pretrained(tmp_path / "prefixmem_pretrained")
    assert cfg.enabled and cfg.d_model == 64 and params["table"].shape[1] == cfg.mem_dim
    lines = (tmp_path / "pretrain_metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 4
    bad = parser.parse_args(["pretrain-mem", "--config", "tiny", "--workdir", str(tmp_path),
                             "--set", "model.nope=1", "--quiet"])
    assert pt.run_pretrain(bad) == 2

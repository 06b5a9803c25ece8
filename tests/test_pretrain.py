"""Stand-alone PrefixMem pre-training, orbax save/load, and attaching to models of other widths."""

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.cli import pretrain as pretrain_cli
from sidjax.config import PrefixMemConfig
from sidjax.data.split import item_counts, leave_one_out
from sidjax.data.synthetic import synthetic_catalog
from sidjax.nn import prefixmem as pm
from sidjax.nn import prefixmem_io as pmio
from sidjax.parallel import MeshConfig, make_mesh
from sidjax.sid.build import build_sid_table
from sidjax.train import pretrain_mem as pt


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
    out = pmio.save_pretrained(params, cfg, tmp_path / "pm")
    pmio.save_pretrained(params, cfg, tmp_path / "pm")  # overwriting replaces it whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pm"]
    loaded, loaded_cfg = pmio.load_pretrained(out)
    assert loaded_cfg == cfg
    for k in params:
        np.testing.assert_array_equal(np.asarray(loaded[k]), np.asarray(params[k]))

    same = pmio.attach(loaded, loaded_cfg, cfg, jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(same["w_value"]), np.asarray(params["w_value"]))
    wide = dataclasses.replace(cfg, d_model=48, pad_rows_to=16, fusion="sum")
    attached = pmio.attach(loaded, loaded_cfg, wide, jax.random.key(5))
    ref = pm.init(jax.random.key(0), wide)
    assert jax.tree.map(jnp.shape, attached) == jax.tree.map(jnp.shape, ref)
    used = pm.layout(cfg).tables[-1].offset + pm.layout(cfg).tables[-1].size
    np.testing.assert_array_equal(np.asarray(attached["table"][:used]),
                                  np.asarray(params["table"][:used]))
    codes = jnp.asarray(sids.codes[:4])
    levels = jnp.broadcast_to(jnp.arange(1, codes.shape[1] + 1), codes.shape)
    assert pm.apply(attached, codes, levels, cfg=wide).shape == codes.shape + (48,)
    with pytest.raises(ValueError, match="mem_dim: 8 vs 4"):
        pmio.attach(loaded, loaded_cfg, dataclasses.replace(cfg, mem_dim=4), jax.random.key(0))
    (out / "config.json").write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ValueError, match="unknown PrefixMem config keys"):
        pmio.load_pretrained(out)


def test_bad_inputs_are_named(catalog):
    cfg, sids, vectors, counts, _ = catalog
    with pytest.raises(ValueError, match="out of range of prefixmem.codes_per_level"):
        pt.pretrain(dataclasses.replace(cfg, codes_per_level=(2, 2, 2)), sids.codes, vectors,
                    counts, steps=1)
    with pytest.raises(ValueError, match="one row per item"):
        pt.pretrain(cfg, sids.codes, vectors[:-1], counts, steps=1)


def test_cli_parser_and_run(tmp_path):
    parser = argparse.ArgumentParser()
    pretrain_cli.add_pretrain_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pretrain-mem", "--config", "tiny", "--workdir", str(tmp_path),
                              "--steps", "4", "--batch-size", "32", "--quiet",
                              "--set", "data.num_items=150", "--set", "data.num_users=120",
                              "--set", "sid.kmeans_iters=3", "--set", "sid.codes=8"])
    assert pretrain_cli.run_pretrain(args) == 0
    params, cfg = pmio.load_pretrained(tmp_path / "prefixmem_pretrained")
    assert cfg.enabled and cfg.d_model == 64 and params["table"].shape[1] == cfg.mem_dim
    lines = (tmp_path / "pretrain_metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 4
    bad = parser.parse_args(["pretrain-mem", "--config", "tiny", "--workdir", str(tmp_path),
                             "--set", "model.nope=1", "--quiet"])
    assert pretrain_cli.run_pretrain(bad) == 2


@pytest.mark.parametrize("contrastive", [False, True])
def test_pretrain_flops_match_xla_cost_analysis(contrastive):
    cfg = PrefixMemConfig(enabled=True, codes_per_level=(16, 16, 8), d_model=64, mem_dim=16)
    batch, content = 32, 24
    params, heads = pm.init(jax.random.key(0), cfg), pt.init_heads(jax.random.key(1), cfg, content)
    codes, means = jnp.zeros((batch, 3), jnp.int32), jnp.ones((batch, 3, content))
    pairs = jnp.zeros((2, batch, 3), jnp.int32)

    def loss(p, h):
        return pt.pretrain_losses(p, h, codes, means, pairs, cfg=cfg, align_weight=1.0,
                                  contrastive_weight=0.1 if contrastive else 0.0,
                                  temperature=0.1)[0]

    cost = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, heads).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = pt.pretrain_flops(cfg, steps=1, batch_size=batch, content_dim=content,
                             contrastive=contrastive)
    assert abs(ours / xla - 1) < 0.1, (ours, xla)
    assert pt.pretrain_flops(cfg, steps=7, batch_size=batch, content_dim=content,
                             contrastive=contrastive) == 7 * ours


# ------------------------------------------------------------------ attaching to a decoder


def _run_cfg(init="", freeze=0, steps=5):
    from sidjax import config as C

    cfg = C.apply_overrides(C.tiny(), [
        "data.num_items=150", "data.num_users=120", "sid.kmeans_iters=3", "sid.codes=8",
        "model.num_layers=1", "model.dropout=0.1", "model.prefixmem.enabled=true",
        f"train.steps={steps}", "train.batch_size=16", "train.log_every=1",
        "train.checkpoint_every=100", "train.warmup_steps=2", f"train.freeze_decoder_steps={freeze}"])
    return C.override(cfg, "train.prefixmem_init", str(init))


@pytest.fixture(scope="module")
def run_prep():
    from sidjax import run as E

    return E.prepare(_run_cfg(), None, log=lambda _: None)


@pytest.fixture(scope="module")
def pretrained(run_prep, tmp_path_factory):
    """``(params, path, other_path)``: PrefixMem pre-trained on ``run_prep``'s SIDs, and another
    init (the same halved) for the same SIDs."""
    from sidjax.nn.model import resolve_prefixmem

    root = tmp_path_factory.mktemp("pretrained")
    cfg = resolve_prefixmem(run_prep.cfg.model, run_prep.sids.codes_per_level)
    vectors = run_prep.data.item_vectors
    params, _ = pt.pretrain(cfg, run_prep.sids.codes, vectors, run_prep.counts, steps=3,
                            batch_size=32, lr=5e-2)
    info = {"sid_content_hash": run_prep.sids.content_hash(),
            "pretrain_flops": pt.pretrain_flops(cfg, steps=3, batch_size=32,
                                                content_dim=vectors.shape[1], contrastive=False)}
    path = pmio.save_pretrained(params, cfg, root / "first", info=info)
    other = pmio.save_pretrained({k: v * 0.5 for k, v in params.items()}, cfg, root / "second",
                               info=info)
    return params, path, other


def _leaves(model):
    from flax import nnx

    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_attach_to_a_model_and_refuse_mismatches(run_prep, pretrained, tmp_path):
    import shutil

    from sidjax import run as E

    params, path, _ = pretrained
    prep = dataclasses.replace(run_prep, cfg=_run_cfg(path))
    model = E.build_model(prep.cfg, prep.vocab)
    random_model = E.build_model(run_prep.cfg, run_prep.vocab)
    fingerprint = E.attach_prefixmem_init(model, prep, tmp_path / "run", log=lambda _: None)
    assert fingerprint == pmio.params_fingerprint(params)
    used = pm.layout(model.pm_cfg).tables[-1].offset + pm.layout(model.pm_cfg).tables[-1].size
    for k in params:  # same widths: table (rows in use) and projections are the pre-trained ones
        np.testing.assert_array_equal(np.asarray(model.prefixmem[k][...])[:used],
                                      np.asarray(params[k])[:used])
    # ... and the decoder is the one a random-init run of the same seed starts from
    np.testing.assert_array_equal(np.asarray(model.embed.embedding[...]),
                                  np.asarray(random_model.embed.embedding[...]))
    assert pmio.recorded_init(tmp_path / "run")["fingerprint"] == fingerprint
    plain = E.run_hash(prep.cfg, prep.sids)
    assert len({plain, E.run_hash(prep.cfg, prep.sids, fingerprint),
                E.run_hash(prep.cfg, prep.sids, "another")}) == 3

    wide = dataclasses.replace(prep, cfg=config_override(prep.cfg, "model.d_model", "32"))
    wide_model = E.build_model(wide.cfg, wide.vocab)
    own = {k: np.asarray(v[...]) for k, v in wide_model.prefixmem.items()}
    E.attach_prefixmem_init(wide_model, wide, tmp_path / "wide", log=lambda _: None)
    np.testing.assert_array_equal(np.asarray(wide_model.prefixmem["table"][...])[:used],
                                  np.asarray(params["table"])[:used])
    np.testing.assert_array_equal(np.asarray(wide_model.prefixmem["w_value"][...]), own["w_value"])

    cases = [(config_override(prep.cfg, "model.prefixmem.mem_dim", "8"), "mem_dim: 16 vs 8"),
             (config_override(prep.cfg, "model.prefixmem.enabled", "false"), "need a model with")]
    for cfg, message in cases:
        other = dataclasses.replace(prep, cfg=cfg)
        with pytest.raises(ValueError, match=message):
            E.attach_prefixmem_init(E.build_model(cfg, prep.vocab), other, tmp_path / "x")
    foreign = Path(shutil.copytree(path, tmp_path / "foreign"))
    (foreign / pmio.INFO_FILE).write_text(json.dumps({"sid_content_hash": "0" * 64}))
    other = dataclasses.replace(prep, cfg=_run_cfg(foreign))
    with pytest.raises(ValueError, match="pre-trained on another SID table"):
        E.attach_prefixmem_init(E.build_model(other.cfg, prep.vocab), other, tmp_path / "x")
    (foreign / pmio.INFO_FILE).write_text("{}")
    with pytest.raises(ValueError, match="no sid_content_hash recorded"):
        E.attach_prefixmem_init(E.build_model(other.cfg, prep.vocab), other, tmp_path / "x")
    missing = dataclasses.replace(prep, cfg=_run_cfg(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="not a PrefixMem checkpoint"):
        E.attach_prefixmem_init(E.build_model(missing.cfg, prep.vocab), missing, tmp_path / "x")


def config_override(cfg, key, value):
    from sidjax import config as C

    return C.override(cfg, key, value)


def test_freeze_stage_keeps_decoder_and_table_bitwise_then_trains_them(run_prep):
    from flax import nnx

    from sidjax import run as E
    from sidjax.data.pipeline import train_dataset
    from sidjax.parallel.axes import is_variable
    from sidjax.train.loop import make_train_step
    from sidjax.train.optim import is_prefixmem_adapter, make_optimizer

    cfg = config_override(run_prep.cfg, "train.freeze_decoder_steps", "2")
    graphdef, params = nnx.split(E.build_model(cfg, run_prep.vocab))
    tx = make_optimizer(cfg.train)
    step_fn = make_train_step(graphdef, tx, run_prep.vocab, dropout=True)
    data = train_dataset(run_prep.split.train, run_prep.sids.codes, run_prep.vocab,
                         max_history=cfg.data.max_history, batch_size=16, seed=0)
    opt_state, key = tx.init(params), jax.random.key(0)
    adapter = [is_prefixmem_adapter(v) for v in jax.tree.leaves(params, is_leaf=is_variable)]
    assert sum(adapter) == 4  # w_value, w_key, query_scale, key_scale

    def snapshot():
        return [np.array(x) for x in jax.tree.leaves(params)]

    start = snapshot()
    for step in range(2):
        params, opt_state, _ = step_fn(params, opt_state, data[step], step, key)
    frozen = snapshot()
    for is_adapter, a, b in zip(adapter, start, frozen):
        assert np.any(a != b) if is_adapter else np.array_equal(a, b)
    params, opt_state, _ = step_fn(params, opt_state, data[2], 2, key)
    for a, b in zip(frozen, snapshot()):  # everything (the table too) moves after the stage
        assert np.any(a != b)


def test_train_from_init_with_freeze_resumes_exactly_and_refuses_another_init(
        run_prep, pretrained, tmp_path):
    import os
    import signal

    from sidjax import cli
    from sidjax import run as E
    from sidjax.train.signals import Preempted

    _, first, second = pretrained
    assert cli.main(["train", "--config", "tiny", "--workdir", str(tmp_path / "a"), "--quiet",
                     "--prefixmem-init", str(first)] + sum(
        (["--set", f"{k}={v}"] for k, v in (
            ("data.num_items", 150), ("data.num_users", 120), ("sid.kmeans_iters", 3),
            ("sid.codes", 8), ("model.num_layers", 1), ("model.dropout", 0.1),
            ("model.prefixmem.enabled", "true"), ("train.steps", 5), ("train.batch_size", 16),
            ("train.log_every", 1), ("train.checkpoint_every", 100), ("train.warmup_steps", 2),
            ("train.freeze_decoder_steps", 3))), [])) == 0
    prep = dataclasses.replace(run_prep, cfg=_run_cfg(first, freeze=3))
    straight = E.load_model(prep, tmp_path / "a", which="latest")
    assert E.prefixmem_pretrain_flops(prep.cfg, tmp_path / "a") == pmio.read_info(first)[
        "pretrain_flops"]

    def sigterm(step, _metrics):
        if step == 2:  # inside the freeze stage; the resume crosses its end
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        E.train_model(prep, tmp_path / "b", log=lambda _: None, progress=sigterm)
    resumed = E.train_model(prep, tmp_path / "b", log=lambda _: None)
    for a, b in zip(_leaves(straight), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    other = dataclasses.replace(prep, cfg=_run_cfg(second, freeze=3))
    with pytest.raises(ValueError, match="another config or SID table"):
        E.train_model(other, tmp_path / "b", log=lambda _: None)

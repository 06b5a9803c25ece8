"""Sharded training: meshes agree with one device, state shardings follow the logical rules,
restores land on another mesh, and the optimizer recipe's groups and options behave."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from sidjax import config as C
from sidjax import run as E
from sidjax.data.pipeline import train_dataset
from sidjax.parallel.axes import TABLE, param
from sidjax.train import checkpoint
from sidjax.train.loop import init_state, make_train_step
from sidjax.train.optim import make_optimizer, make_schedule, param_labels
from sidjax.train.partition import make_partitioner, param_logical_axes


def _cfg(**train):
    cfg = C.tiny()
    pm = dataclasses.replace(cfg.model.prefixmem, enabled=True, orders=(1, 2), hash_table_size=512)
    model = dataclasses.replace(cfg.model, d_model=32, num_layers=1, num_heads=2, head_dim=16,
                                mlp_dim=64, dropout=0.0, prefixmem=pm)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, num_items=120, num_users=160, max_history=6),
        model=model, train=dataclasses.replace(cfg.train, batch_size=16, warmup_steps=1, **train))


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg()
    prep = E.prepare(cfg, None, log=lambda _: None)
    data = train_dataset(prep.split.train, prep.sids.codes, prep.vocab, max_history=6,
                         batch_size=16, seed=0)
    return cfg, prep, data


def _run(setup, mesh, steps=3, **train):
    cfg, prep, data = setup
    tcfg = dataclasses.replace(cfg.train, mesh_data=mesh[0], mesh_fsdp=mesh[1], mesh_model=mesh[2],
                               **train)
    graphdef, params, opt_state, tx, part, shardings = init_state(
        E.build_model(cfg, prep.vocab), tcfg)
    step_fn = make_train_step(graphdef, tx, prep.vocab, False, partitioner=part,
                              state_shardings=shardings, grad_accum=tcfg.grad_accum,
                              compute_dtype=tcfg.compute_dtype)
    losses = []
    for step in range(steps):
        params, opt_state, m = step_fn(params, opt_state, part.shard_batch(data[step]), step,
                                       jax.random.key(0))
        losses.append(float(m["loss"]))
    return losses, params


@pytest.fixture(scope="module")
def reference(setup):
    """Losses and parameters of 3 steps on one device."""
    return _run(setup, (1, 1, 1))


def test_meshes_give_the_single_device_losses_and_params(setup, reference):
    ref_losses, ref_params = reference
    for mesh in [(8, 1, 1), (1, 2, 4)]:
        losses, params = _run(setup, mesh)
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, err_msg=str(mesh))
        for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, err_msg=str(mesh))
    assert ref_losses[-1] != ref_losses[0]


def _per_position_loss(vocab):
    """The SID loss summed over target tokens and divided by the static number of positions:
    linear in the rows, so the mean of equal micro-batches' losses (and gradients) is exactly the
    full batch's (the default SID loss divides by each micro-batch's own token count)."""
    from sidjax.train.loop import sid_token_nll

    def loss(model, batch, dropout_key):
        logits = model(batch["tokens"], batch["codes"], batch["levels"], dropout_key=dropout_key)
        nll, _, level = sid_token_nll(logits, batch["targets"], vocab)
        value = jax.numpy.sum(nll * (level > 0)) / nll.size
        return value, {"loss": value}

    return loss


def _gradient(setup, grad_accum, mesh):
    """Gradient of one training step on batch 0, read off an SGD step of rate 1 (update = -grad),
    with ``grad_accum`` micro-batches on a ``mesh_data=mesh`` mesh; and the step's metrics."""
    from flax import nnx

    cfg, prep, data = setup
    graphdef, params = nnx.split(E.build_model(cfg, prep.vocab))
    tx = optax.sgd(1.0)
    part = make_partitioner(mesh, 1, 1)
    shardings = part.state_shardings(params, jax.eval_shape(tx.init, params))
    if shardings[0] is not None:
        params = jax.device_put(params, shardings[0])
    before = [np.asarray(x) for x in jax.tree.leaves(params)]
    step_fn = make_train_step(graphdef, tx, prep.vocab, False, partitioner=part,
                              state_shardings=shardings, grad_accum=grad_accum,
                              loss_fn=_per_position_loss(prep.vocab))
    params, _, metrics = step_fn(params, tx.init(params), part.shard_batch(data[0]), 0,
                                 jax.random.key(0))
    grads = [b - np.asarray(a) for a, b in zip(jax.tree.leaves(params), before)]
    return grads, {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("mesh", [1, 2])
def test_grad_accumulation_equals_the_full_batch_gradient(setup, mesh):
    """Micro-batch gradients are averaged over all k micro-batches: summing them (k x), or
    dropping some, fails here."""
    full, full_metrics = _gradient(setup, 1, mesh)
    scale = max(float(np.abs(g).max()) for g in full)
    assert scale > 0
    for k in (2, 4):
        accumulated, metrics = _gradient(setup, k, mesh)
        for a, b in zip(accumulated, full):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=f"k={k}")
        np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-4)


def test_bf16_compute_keeps_float32_master_weights(setup, reference):
    losses, params = _run(setup, (1, 1, 1), compute_dtype="bfloat16")
    np.testing.assert_allclose(losses, reference[0], rtol=0.03)
    assert losses != reference[0]
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}


def test_state_shardings_follow_the_rules(setup):
    cfg, prep, _ = setup
    tcfg = dataclasses.replace(cfg.train, mesh_data=1, mesh_fsdp=2, mesh_model=4)
    _, params, opt_state, *_ = init_state(E.build_model(cfg, prep.vocab), tcfg)
    spec = {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p): x.sharding.spec
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert spec["prefixmem/table/value"] == jax.P("model", None)
    assert spec["decoder/blocks/0/mlp/w_gate/value"] == jax.P("fsdp", "model")
    assert spec["decoder/final_norm/scale/value"] == jax.P(None)
    adam_mu = opt_state[1].inner_states["table"].inner_state[0].mu
    assert jax.tree.leaves(adam_mu)[0].sharding.spec == jax.P("model", None)
    axes = param_logical_axes(params)
    assert axes["prefixmem"]["table"].get_value() == ("table_rows", "mem")


def test_restore_onto_another_mesh_and_one_device(setup, tmp_path):
    cfg, prep, _ = setup
    model = E.build_model(cfg, prep.vocab)
    tcfg = dataclasses.replace(cfg.train, mesh_data=2, mesh_model=4)
    _, params, opt_state, *_ = init_state(model, tcfg)
    mngr = checkpoint.manager(tmp_path, 2)
    checkpoint.save(mngr, 5, params, opt_state, "h")
    mngr.wait_until_finished()
    for mesh in [(4, 1, 2), (1, 1, 1)]:
        target = dataclasses.replace(cfg.train, mesh_data=mesh[0], mesh_model=mesh[2])
        _, p0, o0, _, part, _ = init_state(E.build_model(dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, seed=7)), prep.vocab), target)
        step, p1, o1 = checkpoint.restore_latest(mngr, p0, o0, "h")
        assert step == 5
        for a, b, t in zip(jax.tree.leaves(params), jax.tree.leaves(p1), jax.tree.leaves(p0)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert b.sharding == t.sharding
    mngr.close()


def test_param_groups_schedules_and_bad_mesh():
    params = {"w": param(np.zeros((2, 2), np.float32), ("embed", "mlp")),
              "scale": param(np.zeros(2, np.float32), (None,)),
              "prefixmem": {"table": param(np.ones((4, 2), np.float32), ("table_rows", "mem"),
                                           group=TABLE)}}
    assert param_labels(params) == {"w": "decay", "scale": "no_decay",
                                    "prefixmem": {"table": "table"}}
    cfg = C.TrainConfig(learning_rate=0.1, warmup_steps=4, steps=100, weight_decay=0.5,
                        prefixmem_lr_mult=10.0)
    tx = make_optimizer(cfg)
    grads = jax.tree.map(lambda x: np.full(x.shape, 1e-3, np.float32), params)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
    # Adam's step is ~lr for every group; the table moves 10x and has no decay
    ratio = float(np.abs(updates["prefixmem"]["table"][...]).mean()
                  / np.abs(updates["scale"][...]).mean())
    np.testing.assert_allclose(ratio, 10.0, rtol=1e-3)
    rsqrt = make_schedule(dataclasses.replace(cfg, schedule="rsqrt"))
    np.testing.assert_allclose([rsqrt(2), rsqrt(4), rsqrt(16)], [0.05, 0.1, 0.05], rtol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        make_schedule(dataclasses.replace(cfg, schedule="linear"))
    with pytest.raises(ValueError, match="device count"):
        make_partitioner(16, 1, 1)
    assert isinstance(optax.tree.norm(grads), jax.Array)

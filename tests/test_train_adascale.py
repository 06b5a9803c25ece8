"""AdaScale in the trainer (train.optimizer=adascale): the run stops when tau reaches train.steps,
logs gain and tau, resumes exactly (and refuses an S changed by the mesh), S=1 is momentum SGD, a
data mesh gives the one-device updates, and bad settings are refused naming their key. (Each
trainer run compiles its step, a few seconds on CPU: the tests share runs where they can.)"""

import dataclasses
import json
import os
import signal

import jax
import numpy as np
import optax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from sidjax import config as C
from sidjax import run as E
from sidjax.data.pipeline import train_dataset
from sidjax.train import adascale, checkpoint
from sidjax.train.loop import init_state, make_train_step, num_replicas, train_config_changes
from sidjax.train.optim import decay_mask, make_schedule
from sidjax.train.signals import Preempted

STEPS = 10  # the 1x budget, in units of progress tau


def _cfg(**train):
    cfg = C.tiny()
    model = dataclasses.replace(cfg.model, d_model=32, num_layers=1, num_heads=2, head_dim=16,
                                mlp_dim=64, dropout=0.1)
    # S = 4 from the 4-way data mesh (train.adascale_replicas=0)
    base = dict(batch_size=16, steps=STEPS, warmup_steps=2, learning_rate=0.3, log_every=1,
                checkpoint_every=4, tensorboard=False, data_threads=0, optimizer="adascale",
                adascale_replicas=0, mesh_data=4)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, num_items=120, num_users=160, max_history=6),
        sid=dataclasses.replace(cfg.sid, codes=8, kmeans_iters=3), model=model,
        train=dataclasses.replace(cfg.train, **(base | train)))


@pytest.fixture(scope="module", autouse=True)
def _compile_once(tmp_path_factory):
    """A persistent XLA cache for this module only: the three trainer runs (straight, preempted,
    resumed) compile one identical step once, not three times."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update(keys[1], 0.0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def prep():
    return E.prepare(_cfg(), None, log=lambda _: None)


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _last_state(prep, workdir):
    """``(step, params, opt_state)`` of the newest checkpoint in ``workdir``."""
    _, params, opt_state, *_ = init_state(E.build_model(prep.cfg, prep.vocab), prep.cfg.train)
    mngr = checkpoint.manager(workdir / "checkpoints", 2, create=False)
    try:
        return checkpoint.restore_latest(mngr, params, opt_state, "")
    finally:
        mngr.close()


@pytest.fixture(scope="module")
def straight(prep, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("adascale")
    messages = []
    E.train_model(prep, workdir, log=messages.append)
    return workdir, messages


def test_the_run_logs_gain_and_tau_and_stops_when_tau_reaches_the_budget(prep, straight):
    workdir, messages = straight
    rows = _rows(workdir)
    gain = np.array([r["adascale/gain"] for r in rows])
    tau = np.array([r["adascale/tau"] for r in rows])
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert np.all((gain >= 1.0) & (gain <= 4.0)) and gain.max() > 1.0
    np.testing.assert_allclose(np.diff(tau, prepend=0.0), gain, rtol=1e-5)
    assert tau[-1] >= STEPS > tau[-2]  # stops at the first step where tau reaches train.steps
    assert len(rows) < STEPS  # fewer updates than the 1x run, each worth `gain` 1x steps
    schedule = make_schedule(prep.cfg.train)  # the 1x schedule at floor(tau) before each step
    want = [float(schedule(np.floor(t))) for t in np.concatenate([[0.0], tau[:-1]])]
    np.testing.assert_allclose([r["learning_rate"] for r in rows], want, rtol=1e-6)
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir()) == len(rows)
    assert any(f"step {len(rows)} tau {tau[-1]:.1f}/{STEPS} gain" in m for m in messages), messages
    # a rerun is finished by tau, not by the number of steps
    again = []
    E.train_model(prep, workdir, log=again.append)
    assert any(f"already trained to step {len(rows)} (AdaScale progress tau" in m
               for m in again), again


def _on_mesh(prep, data):
    return dataclasses.replace(prep, cfg=dataclasses.replace(prep.cfg, train=dataclasses.replace(
        prep.cfg.train, mesh_data=data)))


def test_a_preempted_run_resumes_exactly(prep, straight, tmp_path):
    workdir, _ = straight

    def sigterm(step, _metrics):
        if step == 3:  # after the checkpoint-free steps 1..3: saves step 3 and stops
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted) as exc:
        E.train_model(prep, tmp_path, log=lambda _: None, progress=sigterm)
    assert exc.value.step == 3
    # train.adascale_replicas=0 took S=4 from the mesh: another mesh would change S, refused
    with pytest.raises(ValueError, match="trained with AdaScale S=4, but train.adascale_replicas"
                                         "=0 takes S=2 from this mesh's data axis"):
        E.train_model(_on_mesh(prep, 2), tmp_path, log=lambda _: None)
    messages = []
    E.train_model(prep, tmp_path, log=messages.append)
    assert any("resuming" in m and "from step 3" in m and "tau" in m for m in messages), messages
    step_a, params_a, opt_a = _last_state(prep, workdir)
    step_b, params_b, opt_b = _last_state(prep, tmp_path)
    assert step_a == step_b
    for a, b in zip(jax.tree.leaves((params_a, opt_a)), jax.tree.leaves((params_b, opt_b))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(adascale.find_stats(opt_b).tau) == float(adascale.find_stats(opt_a).tau)
    assert [(r["adascale/tau"], r["loss"]) for r in _rows(tmp_path)] == [
        (r["adascale/tau"], r["loss"]) for r in _rows(workdir)]


@pytest.fixture(scope="module")
def batches(prep):
    return train_dataset(prep.split.train, prep.sids.codes, prep.vocab, max_history=6,
                         batch_size=16, seed=0)


def _run(prep, batches, tx=None, steps=3, loss_fn=None, **train):
    """Params and metrics after ``steps`` updates by ``make_train_step`` (dropout off); with
    ``tx`` the plain (non-AdaScale) step with that optimizer."""
    tcfg = dataclasses.replace(prep.cfg.train, **train | ({"optimizer": "adamw"} if tx else {}))
    graphdef, params, opt_state, own_tx, part, shardings = init_state(
        E.build_model(prep.cfg, prep.vocab), tcfg)
    if tx is not None:
        opt_state = tx.init(params)
    replicas = 0 if tx is not None else num_replicas(tcfg, part)
    step_fn = make_train_step(graphdef, tx or own_tx, prep.vocab, False, partitioner=part,
                              state_shardings=shardings if tx is None else (None, None),
                              grad_accum=tcfg.grad_accum, loss_fn=loss_fn, replicas=replicas)
    history = []
    for step in range(steps):
        params, opt_state, m = step_fn(params, opt_state, part.shard_batch(batches[step]), step,
                                       jax.random.key(0))
        history.append({k: float(v) for k, v in m.items()})
    return [np.asarray(x) for x in jax.tree.leaves(params)], history, opt_state


def _assert_close(a, b, **tol):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, **tol)


def test_one_replica_is_sgd_with_the_1x_schedule(prep, batches):
    """S=1: gain 1, tau = steps, and the updates of momentum SGD with decoupled weight decay on
    matrices, clipped gradients and the step-indexed schedule (momentum 0: plain SGD)."""
    momentum, weight_decay = 0.9, 0.01
    tcfg = dataclasses.replace(prep.cfg.train, adascale_replicas=1, adascale_momentum=momentum,
                               weight_decay=weight_decay, grad_clip=0.5, mesh_data=1)
    schedule = make_schedule(tcfg)
    ref = optax.chain(
        optax.clip_by_global_norm(0.5), optax.trace(momentum) if momentum else optax.identity(),
        optax.masked(optax.add_decayed_weights(weight_decay), decay_mask),
        optax.scale_by_schedule(lambda s: -schedule(s)))
    got, hist, _ = _run(prep, batches, adascale_replicas=1, adascale_momentum=momentum,
                        weight_decay=weight_decay, grad_clip=0.5, mesh_data=1)
    want, ref_hist, _ = _run(prep, batches, tx=ref, mesh_data=1)
    _assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert [h["adascale/gain"] for h in hist] == [1.0] * 3
    assert [h["adascale/tau"] for h in hist] == [1.0, 2.0, 3.0]
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in ref_hist],
                               rtol=1e-6)


def _linear_loss(vocab):
    """The SID loss summed over target tokens and divided by the static number of positions:
    linear in the rows, so micro-batches average to exactly their replica's gradient."""
    from sidjax.train.loop import sid_token_nll

    def loss(model, batch, dropout_key):
        logits = model(batch["tokens"], batch["codes"], batch["levels"], dropout_key=dropout_key)
        nll, _, level = sid_token_nll(logits, batch["targets"], vocab)
        value = jax.numpy.sum(nll * (level > 0)) / nll.size
        return value, {"loss": value}

    return loss


@pytest.fixture(scope="module")
def one_device(prep, batches):
    """2 steps of S=4 on one device (the linear loss)."""
    return _run(prep, batches, steps=2, loss_fn=_linear_loss(prep.vocab), adascale_replicas=4,
                mesh_data=1)


@pytest.mark.parametrize("train", [dict(adascale_replicas=0, mesh_data=4),
                                   dict(adascale_replicas=4, mesh_data=1, grad_accum=2)],
                         ids=["data-mesh", "grad-accum"])
def test_a_data_mesh_or_micro_batches_give_the_one_device_updates(prep, batches, one_device,
                                                                  train):
    """train.adascale_replicas=0 on a 4-way data mesh is S=4 with one replica per device, and k
    micro-batches per replica give the same per-replica gradients: the one-device S=4 updates."""
    ref, ref_hist, _ = one_device
    got, hist, opt_state = _run(prep, batches, steps=2, loss_fn=_linear_loss(prep.vocab), **train)
    _assert_close(got, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([h["adascale/gain"] for h in hist],
                               [h["adascale/gain"] for h in ref_hist], rtol=1e-4)
    assert int(adascale.find_state(opt_state, adascale.AdaScaleWrapState).replicas) == 4


@pytest.mark.parametrize("train, message", [
    (dict(optimizer="sgd"), "train.optimizer=sgd: must be one of 'adamw', 'adascale'"),
    (dict(mesh_data=1), "train.adascale_replicas=0: 0 takes S from train.mesh_data"),
    (dict(adascale_replicas=3), "train.adascale_replicas=3: S=3 x train.grad_accum (1) must "
                                "divide train.batch_size (16)"),
    (dict(grad_accum=8), "S=4 x train.grad_accum (8) must divide"),
    (dict(adascale_momentum=1.0), "train.adascale_momentum=1.0: must be in [0, 1)"),
    (dict(freeze_decoder_steps=2), "train.freeze_decoder_steps=2: must be 0 with "
                                   "train.optimizer=adascale"),
    (dict(adascale_replicas=-1), "train.adascale_replicas=-1: must be >= 0"),
])
def test_bad_settings_are_refused_naming_the_key(train, message):
    with pytest.raises(C.ConfigError) as exc:
        C.validate(_cfg(**train))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_adascale_defaults_are_valid_and_leave_older_runs_alone():
    C.validate(_cfg())
    C.validate(_cfg(adascale_replicas=2, mesh_data=1))
    # a config.json written before these keys existed reads back at their defaults: no change,
    # so no resume is refused (and the run hash reads no train.* key but freeze_decoder_steps)
    saved = C.to_dict(C.Config())
    for key in ("optimizer", "adascale_replicas", "adascale_momentum"):
        del saved["train"][key]
    old = C.from_dict(saved)
    assert old == C.Config() and train_config_changes(old.train, C.TrainConfig()) == {}
    with pytest.raises(ValueError, match="train.optimizer: 'adamw' in config.json, 'adascale' "
                                         "given; a run cannot switch optimizer"):
        train_config_changes(old.train, _cfg().train)
    assert train_config_changes(_cfg().train, _cfg(adascale_replicas=2).train) == {
        "train.adascale_replicas": (0, 2)}

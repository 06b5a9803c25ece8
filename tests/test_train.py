"""Training: the loss goes down, resumption is exact, and checkpoints refuse another config."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from sidjax import config as C
from sidjax import experiment as E
from sidjax.train.loop import decay_mask, sid_loss


def _cfg(steps=40, **train):
    cfg = C.tiny()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_items=150, num_users=200),
                              model=dataclasses.replace(cfg.model, num_layers=1, dropout=0.1))
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=steps, log_every=10, checkpoint_every=20, batch_size=16, **train))


@pytest.fixture(scope="module")
def prep():
    return E.prepare(_cfg(), None, log=lambda _: None)


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_loss_decreases_and_metrics_are_logged(prep, tmp_path):
    E.train_model(prep, tmp_path, log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"acc_l1", "acc_l4", "grad_norm", "examples_per_s"} <= set(rows[0])
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [20, 40]


def test_resume_reproduces_an_uninterrupted_run(prep, tmp_path):
    straight = E.train_model(prep, tmp_path / "a", log=lambda _: None)

    class Stop(Exception):
        pass

    def interrupt(step, _metrics):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        E.train_model(prep, tmp_path / "b", log=lambda _: None, progress=interrupt)
    resumed = E.train_model(prep, tmp_path / "b", log=lambda _: None)  # restarts from step 20
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    loaded = E.load_model(prep, tmp_path / "b")
    for a, b in zip(_params(resumed), _params(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_workdir_refuses_a_different_model_config(prep, tmp_path):
    E.train_model(prep, tmp_path, log=lambda _: None)
    other = dataclasses.replace(prep, cfg=C.apply_overrides(prep.cfg, ["model.d_model=32"]))
    with pytest.raises(ValueError, match="different data/SID/model config"):
        E.train_model(other, tmp_path, log=lambda _: None)


def test_sid_loss_is_restricted_to_the_target_level(prep):
    vocab = prep.vocab
    targets = np.array([[int(vocab.level_offsets[1]) + 2, 0]])
    logits = np.zeros((1, 2, vocab.size), np.float32)
    logits[0, 0, int(vocab.level_offsets[0])] = 50.0  # a level-1 token must not matter
    loss, metrics = sid_loss(logits, targets, vocab)
    np.testing.assert_allclose(loss, np.log(vocab.codes_per_level[1]), rtol=1e-5)
    assert float(metrics["acc_l2"]) in (0.0, 1.0)


def test_weight_decay_mask_skips_norms_and_the_memory_table():
    params = {"w": np.zeros((2, 2)), "scale": np.zeros(2), "prefixmem": {"table": np.zeros((4, 2))}}
    assert decay_mask(params) == {"w": True, "scale": False, "prefixmem": {"table": False}}

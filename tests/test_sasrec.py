"""SASRec item-ID baseline: item examples, full-softmax loss, ranking and SID-level views vs NumPy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sidjax import config as config_lib
from sidjax import run as E
from sidjax.config import ModelConfig
from sidjax.data.pipeline import SIDVocab, encode_item_ids, item_training_example, train_dataset
from sidjax.decode.items import rank_items
from sidjax.decode.recommend import recommend_for_histories
from sidjax.nn.sasrec import SASRec, item_loss


def test_item_examples_are_shifted_left_padded_item_tokens():
    rng = np.random.default_rng(0)
    ex = item_training_example(np.array([4, 7, 9]), max_history=5, rng=rng)
    np.testing.assert_array_equal(ex["items"], [0, 0, 0, 5, 8])
    np.testing.assert_array_equal(ex["targets"], [0, 0, 5, 8, 10])
    np.testing.assert_array_equal(encode_item_ids(np.arange(8), 3), [6, 7, 8])
    long = np.arange(30)
    for _ in range(20):
        ex = item_training_example(long, max_history=4, rng=rng)
        assert np.all(ex["items"] > 0) and np.all(np.diff(ex["targets"]) == 1)
        np.testing.assert_array_equal(ex["targets"][:-1], ex["items"][1:])


def test_item_dataset_rejects_packing():
    seqs = [np.arange(5)] * 8
    with pytest.raises(ValueError, match="pack_segments"):
        train_dataset(seqs, np.zeros((5, 2), np.int32), SIDVocab((2, 2)), max_history=4,
                      batch_size=2, seed=0, item_ids=True, pack_segments=2)


def test_item_loss_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 6)).astype(np.float32)
    targets = np.array([[0, 2, 6], [1, 0, 3]])
    loss, metrics = item_loss(jnp.asarray(logits), jnp.asarray(targets))
    nll = []
    for b, t in zip(*np.nonzero(targets)):
        row = logits[b, t]
        nll.append(np.log(np.exp(row).sum()) - row[targets[b, t] - 1])
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
    assert 0.0 <= float(metrics["acc"]) <= 1.0


def test_ranking_and_level_predictions_match_numpy():
    num_items = 30
    rng = np.random.default_rng(2)
    codes = rng.permutation(np.stack(np.unravel_index(np.arange(27), (3, 3, 3)), axis=1))
    codes = np.concatenate([codes, codes[:3]])  # 30 items; the last three share SIDs
    cfg = ModelConfig(kind="sasrec", d_model=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32,
                      dropout=0.0)
    model = SASRec(cfg, num_items, rngs=nnx.Rngs(params=0))
    histories = np.stack([encode_item_ids(rng.integers(0, num_items, size=n), 5) for n in (1, 4, 7)])
    targets = np.array([3, 17, 29])
    top, scores, level_pred = rank_items(model, histories, codes, targets, k=num_items,
                                         batch_size=2)
    probs = np.asarray(jax.nn.softmax(model(jnp.asarray(histories))[:, -1], axis=-1))
    np.testing.assert_array_equal(top, np.argsort(-probs, axis=1, kind="stable"))
    np.testing.assert_allclose(scores, np.log(np.sort(probs, axis=1)[:, ::-1]), rtol=1e-4,
                               atol=1e-5)
    for u, target in enumerate(targets):
        for level in range(codes.shape[1]):
            under = np.all(codes[:, :level] == codes[target, :level], axis=1)
            mass = np.bincount(codes[under, level], weights=probs[u, under], minlength=3)
            assert level_pred[u, level] == np.argmax(mass)


def test_sasrec_trains_and_beats_popularity(tmp_path):
    cfg = config_lib.tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kind="sasrec"),
                              train=dataclasses.replace(cfg.train, steps=150))
    prep = E.prepare(cfg, tmp_path, log=lambda _: None)
    model = E.train_model(prep, tmp_path / "sasrec", log=lambda _: None)
    result, per_user = E.evaluate_detailed(model, prep)
    popularity, _ = E.evaluate_popularity(prep)
    assert result["recall@10"] > popularity["recall@10"] + 0.1
    assert len(result["level_accuracy"]) == prep.sids.num_levels
    assert set(per_user) >= {"recall@10", "greedy_acc", "acc_L1"}
    reloaded = E.load_model(prep, tmp_path / "sasrec")
    assert E.evaluate(reloaded, prep)["recall@10"] == pytest.approx(result["recall@10"])
    history = [prep.data.item_ids[i] for i in prep.split.test.histories[0]]
    (rec,) = recommend_for_histories(reloaded, prep, [history], k=5, exclude_history=False)
    top, _, _ = rank_items(reloaded, encode_item_ids(prep.split.test.histories[0],
                                                     cfg.data.max_history)[None],
                           prep.sids.codes, prep.split.test.targets[:1], k=5)
    assert rec["items"] == [prep.data.item_ids[i] for i in top[0]]
    assert rec["scores"] == sorted(rec["scores"], reverse=True)


def test_tied_item_head_counts_in_training_flops():
    from sidjax.train.loop import state_report, tied_output_params

    cfg = ModelConfig(kind="sasrec", d_model=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32)
    model = SASRec(cfg, 50, rngs=nnx.Rngs(params=0))
    params = nnx.split(model)[1]
    assert tied_output_params(model) == 50 * 16
    plain = state_report(params, None, 10)["flops_per_token"]
    tied = state_report(params, None, 10, tied_output=tied_output_params(model))["flops_per_token"]
    assert tied - plain == 6 * 50 * 16


def test_match_compute_refuses_item_id_models():
    with pytest.raises(ValueError, match="model 'sasrec' has model.kind='sasrec'"):
        E.compute_matched_steps(config_lib.tiny(), None, {"sasrec": ("model.kind=sasrec",)})

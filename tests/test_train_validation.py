"""Validation during training: keep-best checkpoints, early stopping, the SID validation metrics,
TensorBoard files, the grain iterator state in checkpoints, and the CLI's state report."""

import dataclasses
import importlib.util
import io
import json
import math
import struct
from pathlib import Path

import grain
import jax
import numpy as np
import pytest
from flax import nnx

from sidjax import cli
from sidjax import config as C
from sidjax import run as E
from sidjax.data.pipeline import train_dataset
from sidjax.train import checkpoint, observe
from sidjax.train.batches import BatchStream
from sidjax.train.loop import train
from sidjax.train.validation import BestTracker


def _cfg(steps=20, **train_kw):
    cfg = C.tiny()
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, num_items=150, num_users=200),
        model=dataclasses.replace(cfg.model, num_layers=1, dropout=0.0),
        eval=dataclasses.replace(cfg.eval, beam_size=10))
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=steps, log_every=5, checkpoint_every=100, batch_size=16, warmup_steps=5,
        **train_kw))


@pytest.fixture(scope="module")
def prep():
    return E.prepare(_cfg(), None, log=lambda _: None)


def _rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_keep_last_k_plus_best_early_stopping_and_eval_reads_the_best(prep, tmp_path):
    """A scripted validation score peaks at step 10; patience 3 stops the run at step 25; the
    kept checkpoints are the last two (20, 25) plus the best (10), and load_model reads 10."""
    cfg = _cfg(steps=40, eval_every=5, patience=3, max_checkpoints=2,
               best_metric="valid/score", best_mode="max")
    run = dataclasses.replace(prep, cfg=cfg)
    scores = {5: 0.1, 10: 0.9, 15: 0.3, 20: 0.5, 25: 0.2, 30: 0.95}
    seen = {}

    def evaluate(params, step):
        seen[step] = _leaves(params)
        return {"valid/score": scores[step], "valid/other": 1.0}

    dataset = train_dataset(prep.split.train, prep.sids.codes, prep.vocab, max_history=12,
                            batch_size=16, seed=0)
    messages = []
    trained = train(E.build_model(cfg, prep.vocab), dataset, prep.vocab, cfg.train, tmp_path,
                    config_hash=E.run_hash(cfg, prep.sids), log=messages.append,
                    evaluate=evaluate)
    assert sorted(seen) == [5, 10, 15, 20, 25]
    assert any("early stopping at step 25" in m and "best 0.9 at step 10" in m
               for m in messages), messages
    assert _steps(tmp_path) == [10, 20, 25]
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25]
    assert [r["valid/score"] for r in rows] == [scores[s] for s in (5, 10, 15, 20, 25)]
    best, latest = E.load_model(run, tmp_path), E.load_model(run, tmp_path, which="latest")
    for got, want in zip(_leaves(nnx.state(best, nnx.Param)), seen[10]):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_leaves(nnx.state(latest, nnx.Param)), _leaves(nnx.state(trained))):
        np.testing.assert_array_equal(got, want)
    # resuming a run that stopped early trains nothing more
    messages.clear()
    train(E.build_model(cfg, prep.vocab), dataset, prep.vocab, cfg.train, tmp_path,
          config_hash=E.run_hash(cfg, prep.sids), log=messages.append, evaluate=evaluate)
    assert any("early stopping already happened at step 25" in m for m in messages)
    assert len(_rows(tmp_path)) == 5 and sorted(seen) == [5, 10, 15, 20, 25]


@pytest.mark.parametrize("mode,values,best", [("max", [0.2, 0.7, 0.1, 0.3, 0.4], 20),
                                               ("min", [0.5, 0.7, 0.1, 0.3, 0.4], 30)])
def test_manager_keeps_last_k_plus_best(tmp_path, mode, values, best):
    params, opt_state = {"w": np.zeros(3, np.float32)}, {"m": np.zeros(3, np.float32)}
    mngr = checkpoint.manager(tmp_path / "checkpoints", 2, "valid/x", mode)
    for i, value in enumerate(values, start=1):
        checkpoint.save(mngr, 10 * i, params, opt_state, "h", metrics={"valid/x": value})
        checkpoint.save(mngr, 10 * i + 5, params, opt_state, "h")  # unvalidated steps between
        mngr.wait_until_finished()
    mngr.close()
    assert _steps(tmp_path) == [best, 50, 55]
    step, _, used = checkpoint.restore_chosen(tmp_path / "checkpoints", params, "h", which="best",
                                              best_metric="valid/x", best_mode=mode)
    assert (step, used) == (best, "best")
    step, _, used = checkpoint.restore_chosen(tmp_path / "checkpoints", params, "h", which="best",
                                              best_metric="valid/unknown", best_mode=mode)
    assert (step, used) == (55, "latest")


@pytest.mark.parametrize("mode,values,stops_at", [("min", [3.0, 2.0, 2.5, 2.1], 4),
                                                  ("max", [0.1, 0.2, float("nan"), 0.1], 4),
                                                  ("max", [0.1, 0.2, 0.3, 0.4], None)])
def test_best_tracker_counts_evaluations_without_improvement(mode, values, stops_at):
    cfg = C.TrainConfig(best_metric="valid/m", best_mode=mode, patience=2)
    tracker = BestTracker.restore(cfg, None)
    stopped = None
    for i, value in enumerate(values, start=1):
        tracker.update({"valid/m": value}, i)
        if stopped is None and tracker.should_stop():
            stopped = i
    assert stopped == stops_at
    again = BestTracker.restore(cfg, json.loads(json.dumps(tracker.state())))
    assert again.state() == tracker.state()
    other = BestTracker.restore(dataclasses.replace(cfg, best_metric="valid/n"), tracker.state())
    assert other.best is None and other.evals_since_best == 0
    with pytest.raises(ValueError, match=r"train.best_metric='valid/m' is not among .*valid/x"):
        tracker.update({"valid/x": 1.0}, 9)


def _events(path: Path) -> dict[str, dict[int, float]]:
    """Scalars of a TensorBoard event file (TFRecord framing of Event protos)."""
    from tensorboardX.proto import event_pb2

    data, at, out = path.read_bytes(), 0, {}
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_sid_validation_metrics_tensorboard_and_data_state(prep, tmp_path):
    cfg = _cfg(steps=20, eval_every=10, eval_users=40, eval_recall=True)
    run = dataclasses.replace(prep, cfg=cfg)
    E.train_model(run, tmp_path, log=lambda _: None)
    rows = {r["step"]: r for r in _rows(tmp_path)}
    assert sorted(rows) == [5, 10, 15, 20]
    keys = {"valid/loss", "valid/recall@10", "valid/ndcg@10"} | {
        f"valid/acc_l{i}" for i in range(1, len(prep.vocab.codes_per_level) + 1)}
    for step in (10, 20):
        assert keys <= set(rows[step]) and all(math.isfinite(rows[step][k]) for k in keys)
        assert 0 <= rows[step]["valid/recall@10"] <= 1 and rows[step]["valid/loss"] > 0
    assert "valid/loss" not in rows[5]
    # the SID vocab is uniform at init: a trained model's validation loss is below log(K)
    assert rows[20]["valid/loss"] < np.log(max(prep.vocab.codes_per_level))
    if importlib.util.find_spec("tensorboardX") is None:  # optional: skipped silently
        assert not list(tmp_path.glob("events.out.tfevents.*"))
    else:
        (event_file,) = tmp_path.glob("events.out.tfevents.*")
        scalars = _events(event_file)
        assert sorted(scalars["loss"]) == [5, 10, 15, 20]
        assert sorted(scalars["valid/loss"]) == [10, 20]
        np.testing.assert_allclose(scalars["valid/loss"][20], rows[20]["valid/loss"], rtol=1e-6)
    state = json.loads(next((tmp_path / "checkpoints" / "20" / "data").glob("*")).read_text())
    assert state["step"] == 20 and state["start_step"] == 0


def test_batch_stream_state_resumes_the_same_batches():
    ds = grain.MapDataset.range(1000).map(lambda i: {"x": np.full(2, i)}).batch(3)
    stream = BatchStream(ds, 4, num_threads=2, prefetch=3)
    reference = [stream.next()["x"] for _ in range(5)]
    for taken in (1, 3):
        first = BatchStream(ds, 4, num_threads=2, prefetch=3)
        for _ in range(taken):
            first.next()
        state = json.loads(json.dumps(first.state()))
        resumed = BatchStream(ds, 4 + taken, state, num_threads=1)
        for want in reference[taken:]:
            np.testing.assert_array_equal(resumed.next()["x"], want)
        first.close()
        resumed.close()
    stream.close()
    messages = []
    BatchStream(ds, 6, {"step": 5, "start_step": 0, "iterator": {}}, log=messages.append).close()
    assert "not 6: starting a fresh iterator" in messages[0]
    plain = BatchStream([{"x": i} for i in range(5)], 2)
    assert plain.next() == {"x": 2} and plain.state() is None


def test_console_log_prefixes_the_process_and_writes_whole_lines(monkeypatch):
    stream = io.StringIO()
    writes = []
    stream.write = lambda text: writes.append(text)  # type: ignore[method-assign]
    monkeypatch.setattr(observe.jax, "process_count", lambda: 2)
    monkeypatch.setattr(observe.jax, "process_index", lambda: 1)
    observe.console_log(stream)("a\nb")
    assert writes == ["[process 1/2] a\n[process 1/2] b\n"]


def test_cli_train_prints_the_state_report_before_step_1(tmp_path, capsys):
    argv = ["train", "--config", "tiny", "--workdir", str(tmp_path),
            "--set", "train.steps=2", "--set", "train.log_every=1", "--set", "data.num_items=150",
            "--set", "data.num_users=200", "--set", "model.num_layers=1"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    for line in ("parameters:", "training FLOPs per token:", "per device: params", "mesh: ",
                 "largest arrays:"):
        assert line in err
    assert err.index("largest arrays:") < err.index("step 1/2 loss")

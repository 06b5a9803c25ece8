"""Training: the loss goes down, a run survives SIGKILL, SIGTERM and a damaged checkpoint with a
bitwise-exact resume, and checkpoints refuse another config."""

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from sidjax import config as C
from sidjax import run as E
from sidjax.parallel.axes import TABLE, param
from sidjax.train.loop import sid_loss
from sidjax.train.optim import decay_mask
from sidjax.train.signals import Preempted


def _cfg(steps=40, **train):
    cfg = C.tiny()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_items=150, num_users=200),
                              model=dataclasses.replace(cfg.model, num_layers=1, dropout=0.1))
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=steps, log_every=1, checkpoint_every=20, batch_size=16, **train))


@pytest.fixture(scope="module")
def prep():
    return E.prepare(_cfg(), None, log=lambda _: None)


@pytest.fixture(scope="module")
def straight(prep, tmp_path_factory):
    """Run A: 40 uninterrupted steps."""
    workdir = tmp_path_factory.mktemp("straight")
    return E.train_model(prep, workdir, log=lambda _: None), workdir


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def _losses(workdir: Path) -> dict:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_loss_decreases_and_metrics_are_logged(straight):
    _, workdir = straight
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert np.mean([r["loss"] for r in rows[-5:]]) < np.mean([r["loss"] for r in rows[:5]])
    assert {"acc_l1", "acc_l4", "grad_norm", "examples_per_s", "learning_rate", "tokens_per_s",
            "step_time_s"} <= set(rows[0])
    assert _steps(workdir) == [20, 40]


def test_sigkill_sigterm_and_damaged_checkpoint_resume_exactly(prep, straight, tmp_path):
    model_a, dir_a = straight
    # Run B, part 1: a subprocess SIGKILLs itself at a random step after the save at step 20
    kill_at = random.Random(os.getpid()).randint(21, 29)
    env = dict(os.environ, JAX_PLATFORMS="cpu")  # same XLA flags (8 host devices) as here
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), str(kill_at)], env=env,
                          cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert max(_losses(tmp_path)) == kill_at - 1  # killed before logging step kill_at
    # part 2: resume from step 20; SIGTERM at step 33 saves there and exits cleanly
    def sigterm(step, _metrics):
        if step == 33:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted) as exc:
        E.train_model(prep, tmp_path, log=lambda _: None, progress=sigterm)
    assert exc.value.step == 33 and exc.value.code == 0 and _steps(tmp_path) == [20, 33]
    # part 3: the latest checkpoint (33) is truncated; resume falls back to 20 and says so
    for f in (tmp_path / "checkpoints" / "33" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    messages = []
    resumed = E.train_model(prep, tmp_path, log=messages.append)
    out = "\n".join(messages)
    assert "checkpoints/33 is damaged and was skipped" in out and "falling back to step 20" in out
    assert "data iterator state" not in out  # resumed the saved grain iterator, not a fresh one
    for a, b in zip(_params(model_a), _params(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    losses_a, lines_b = _losses(dir_a), (tmp_path / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line)["step"] for line in lines_b]
    assert logged == list(range(1, 41))  # rows after the restored step are replaced, not repeated
    for line in lines_b:  # every logged loss of B (before and after each resume) equals A's
        row = json.loads(line)
        assert row["loss"] == losses_a[row["step"]], row["step"]
    loaded = E.load_model(prep, tmp_path)
    for a, b in zip(_params(resumed), _params(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_workdir_refuses_a_different_model_config(prep, straight):
    other = dataclasses.replace(prep, cfg=C.apply_overrides(prep.cfg, ["model.d_model=32"]))
    with pytest.raises(ValueError, match="different data/SID/model config"):
        E.train_model(other, straight[1], log=lambda _: None)


def test_sid_loss_is_restricted_to_the_target_level(prep):
    vocab = prep.vocab
    targets = np.array([[int(vocab.level_offsets[1]) + 2, 0]])
    logits = np.zeros((1, 2, vocab.size), np.float32)
    logits[0, 0, int(vocab.level_offsets[0])] = 50.0  # a level-1 token must not matter
    loss, metrics = sid_loss(logits, targets, vocab)
    np.testing.assert_allclose(loss, np.log(vocab.codes_per_level[1]), rtol=1e-5)
    assert float(metrics["acc_l2"]) in (0.0, 1.0)


def test_weight_decay_mask_skips_norms_and_the_memory_table():
    params = {"w": param(np.zeros((2, 2)), ("embed", "mlp")), "scale": param(np.zeros(2), (None,)),
              "prefixmem": {"table": param(np.zeros((4, 2)), ("table_rows", "mem"), group=TABLE)}}
    assert decay_mask(params) == {"w": True, "scale": False, "prefixmem": {"table": False}}


def _train_until_sigkill(workdir: str, kill_at: int) -> None:
    """Run B's first part (in a subprocess): train, SIGKILL this process after step ``kill_at``."""
    def kill(step, _metrics):
        if step == kill_at:
            saved = Path(workdir) / "checkpoints" / "20"
            for _ in range(600):  # the async save of step 20 must have committed
                if saved.is_dir():
                    break
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)

    prepared = E.prepare(_cfg(), None, log=lambda _: None)
    E.train_model(prepared, Path(workdir), log=lambda _: None, progress=kill)


if __name__ == "__main__":
    _train_until_sigkill(sys.argv[1], int(sys.argv[2]))
    shutil.rmtree(sys.argv[1])  # not reached: the process is killed first


@pytest.mark.parametrize("flags, expected", [([0, 0], False), ([0, 1], True), ([1, 1], True)])
def test_any_process_is_true_when_one_process_has_the_flag(flags, expected):
    from sidjax.train.signals import any_process

    assert any_process(False, gather=lambda mine: np.asarray(flags)) is expected
    assert any_process(True) is True and any_process(False) is False  # one process: the flag

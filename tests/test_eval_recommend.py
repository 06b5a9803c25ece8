"""Recommendations for new histories (cold start from history only): ids, scores and titles;
history items excluded by default (``--include-history`` allows them)."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from flax import nnx

from sidjax import cli, run
from sidjax import config as config_lib
from sidjax.config import ModelConfig
from sidjax.data.pipeline import SIDVocab, eval_arrays
from sidjax.decode.beam import recommend
from sidjax.decode.recommend import (
    SCORE_MEANING,
    format_recommendations,
    item_indices,
    recommend_for_histories,
)
from sidjax.nn.model import SIDRecommender
from sidjax.nn.sasrec import SASRec
from sidjax.sid.table import add_collision_level
from sidjax.sid.trie import build_trie


def _prep(num_items=20):
    codes = add_collision_level(np.random.default_rng(0).integers(0, 3, size=(num_items, 2)))
    vocab = SIDVocab((3, 3, int(codes[:, -1].max()) + 1))
    cfg = SimpleNamespace(data=SimpleNamespace(max_history=3),
                          eval=SimpleNamespace(beam_size=6, batch_size=8))
    data = SimpleNamespace(item_ids=[f"i{n}" for n in range(num_items)], item_text=None,
                           item_fields={"title": [f"Title {n}" for n in range(num_items)]})
    prep = SimpleNamespace(cfg=cfg, data=data, sids=SimpleNamespace(codes=codes),
                           trie=build_trie(codes), vocab=vocab, prompt=None)
    model = SIDRecommender(ModelConfig(d_model=16, num_layers=1, num_heads=2, head_dim=8,
                                       mlp_dim=32, dropout=0.0), vocab, rngs=nnx.Rngs(params=0))
    return model, prep


def test_recommend_for_histories_matches_beam_search():
    model, prep = _prep()
    histories = [["i3", "i7"], [], ["i1", "i2", "i3", "i4"]]
    out = recommend_for_histories(model, prep, histories, k=4, exclude_history=False)
    indices = [[3, 7], [], [1, 2, 3, 4]]
    arrays = eval_arrays([np.array(h, np.int64) for h in indices], prep.sids.codes, prep.vocab, 3)
    items, scores = recommend(model, prep.trie, arrays, prep.vocab, beam=6, batch_size=8)
    for row, ref_items, ref_scores in zip(out, items, scores):
        assert row["items"] == [f"i{i}" for i in ref_items[:4]]
        assert row["titles"] == [f"Title {i}" for i in ref_items[:4]]
        np.testing.assert_allclose(row["scores"], ref_scores[:4], rtol=1e-6)
    assert out[1]["history"] == [] and len(out[1]["items"]) == 4


def test_unknown_item_ids_are_named():
    assert item_indices(["b", "a"], ["a", "b"]).tolist() == [1, 0]
    model, prep = _prep()
    with pytest.raises(ValueError, match=r"history 1: unknown item id\(s\) \['nope'\]"):
        recommend_for_histories(model, prep, [["i1"], ["nope"]], k=2)
    with pytest.raises(ValueError, match="beam"):
        recommend_for_histories(model, prep, [["i1"]], k=5, beam=3)


# 8 history items of the 20: without exclusion the top 6 of this (seeded) model holds some of them
HISTORY = ["i0", "i2", "i5", "i8", "i9", "i11", "i14", "i17"]


def test_history_items_are_excluded_by_default_and_k_remain():
    model, prep = _prep()
    (included,) = recommend_for_histories(model, prep, [HISTORY], k=6, exclude_history=False)
    assert set(included["items"]) & set(HISTORY), "precondition: the model repeats the history"
    (rec,) = recommend_for_histories(model, prep, [HISTORY], k=6)
    assert rec["exclude_history"] and rec["score_kind"] == "sid"
    assert len(rec["items"]) == 6 == len(set(rec["items"]))
    assert not set(rec["items"]) & set(HISTORY)
    assert rec["scores"] == sorted(rec["scores"], reverse=True) and max(rec["scores"]) <= 0
    # the beam widened to 6 + 8 -> 16: the result is that search's list without the history
    arrays = eval_arrays([item_indices(HISTORY, prep.data.item_ids)], prep.sids.codes, prep.vocab, 3)
    items, scores = recommend(model, prep.trie, arrays, prep.vocab, beam=16, batch_size=8)
    keep = [(f"i{i}", s) for i, s in zip(items[0], scores[0]) if f"i{i}" not in HISTORY][:6]
    assert rec["items"] == [i for i, _ in keep]
    np.testing.assert_allclose(rec["scores"], [s for _, s in keep], rtol=1e-6)
    assert rec["titles"] == [f"Title {i[1:]}" for i in rec["items"]]
    assert rec["history_titles"] == [f"Title {i[1:]}" for i in HISTORY]


def test_fewer_than_k_only_when_the_catalog_runs_out():
    model, prep = _prep()
    history = [f"i{n}" for n in range(18)]  # all but i18 and i19 of the 20 items
    (rec,) = recommend_for_histories(model, prep, [history, ["i1", "i1"]], k=5)[:1]
    assert sorted(rec["items"]) == ["i18", "i19"]
    (_, repeated) = recommend_for_histories(model, prep, [history, ["i1", "i1"]], k=5)
    assert len(repeated["items"]) == 5 and "i1" not in repeated["items"]
    assert repeated["history_titles"] == ["Title 1", "Title 1"]


def test_sasrec_excludes_history_too():
    _, prep = _prep()
    model = SASRec(ModelConfig(d_model=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32,
                               dropout=0.0), 20, rngs=nnx.Rngs(params=0))
    (included,) = recommend_for_histories(model, prep, [HISTORY], k=6, exclude_history=False)
    (rec,) = recommend_for_histories(model, prep, [HISTORY], k=6)
    assert set(included["items"]) & set(HISTORY), "precondition: the model repeats the history"
    assert len(rec["items"]) == 6 and not set(rec["items"]) & set(HISTORY)
    assert rec["score_kind"] == "item" and max(rec["scores"]) <= 0
    (ranking,) = recommend_for_histories(model, prep, [HISTORY], k=20, exclude_history=False)
    assert rec["items"] == [i for i in ranking["items"] if i not in HISTORY][:6]  # exact: all items


def test_table_shows_history_titles_and_what_the_score_means():
    model, prep = _prep()
    text = format_recommendations(recommend_for_histories(model, prep, [HISTORY], k=3))
    assert "history 1 (8 items, oldest first, excluded from the list):" in text
    for item in HISTORY:
        assert re.search(rf"^  {item} +Title {item[1:]}$", text, re.M), item
    assert re.search(r"^ +1  i\d+ +-\d+\.\d{4}  Title \d+$", text, re.M)
    assert SCORE_MEANING["sid"] in text and "sum over SID levels" in text


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """``sidjax recommend`` on the small model above: the run folder's config, SIDs and checkpoint
    are replaced by it."""
    model, prep = _prep()
    monkeypatch.setattr(config_lib, "read_config", lambda path: prep.cfg)
    monkeypatch.setattr(run, "prepare", lambda cfg, workdir, log: prep)
    monkeypatch.setattr(run, "load_model", lambda prep, workdir: model)
    return tmp_path


def test_cli_recommend_excludes_history_unless_asked(fake_run, capsys):
    argv = ["recommend", "--workdir", str(fake_run), "--history", ",".join(HISTORY), "--k", "6",
            "--json", "--quiet"]
    assert cli.main(argv) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rec["items"]) == 6 and not set(rec["items"]) & set(HISTORY)
    assert rec["history_titles"] == [f"Title {i[1:]}" for i in HISTORY]
    assert cli.main(argv + ["--include-history"]) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(rec["items"]) & set(HISTORY) and not rec["exclude_history"]
    assert cli.main(argv[:-2]) == 0  # the table
    out = capsys.readouterr().out
    assert "Title 17" in out and "score: log-probability of the item's whole SID" in out
    with pytest.raises(SystemExit):
        cli.main(["recommend", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--include-history" in help_text and "sum over SID levels of the log-softmax" in help_text


def test_cli_recommend_users_writes_history_titles_and_logs_progress(fake_run, capsys):
    users = fake_run / "users.txt"
    users.write_text("\n".join(" ".join(HISTORY[n:] + ["i19"]) for n in range(6)) + "\n")
    out = fake_run / "recs.jsonl"
    assert cli.main(["recommend", "--workdir", str(fake_run), "--users", str(users), "--k", "3",
                     "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 6 and all(len(r["items"]) == 3 for r in recs)
    assert recs[0]["history_titles"][-1] == "Title 19"
    assert all(not set(r["items"]) & set(r["history"]) for r in recs)
    err = capsys.readouterr().err  # not a terminal: plain progress lines
    assert re.search(r"^recommend: 6 / 6 users \(100%\), \d+ s$", err, re.M), err

"""Recommendations for new histories (cold start from history only): ids, scores and titles."""

from types import SimpleNamespace

import numpy as np
import pytest
from flax import nnx

from sidjax.config import ModelConfig
from sidjax.data.pipeline import SIDVocab, eval_arrays
from sidjax.decode.beam import recommend
from sidjax.decode.recommend import item_indices, recommend_for_histories
from sidjax.nn.model import SIDRecommender
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
    out = recommend_for_histories(model, prep, histories, k=4)
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

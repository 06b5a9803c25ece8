"""Packed training rows: a packed row gives every token the loss it has in its own unpacked
sequence, and training on packed rows runs and learns."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from sidjax import config as C
from sidjax import run as E
from sidjax.data.pipeline import PAD, encode_items, packed_row, sequence_length
from sidjax.train.loop import sid_token_nll


def _cfg(prefixmem=False, **data):
    cfg = C.tiny()
    pm = dataclasses.replace(cfg.model.prefixmem, enabled=prefixmem)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, num_items=150, num_users=200, **data),
        model=dataclasses.replace(cfg.model, num_layers=1, dropout=0.0, prefixmem=pm),
        train=dataclasses.replace(cfg.train, steps=30, log_every=1, checkpoint_every=100,
                                  batch_size=16, warmup_steps=5))


@pytest.fixture(scope="module")
def prep():
    return E.prepare(_cfg(), None, log=lambda _: None)


def _nll(model, batch, vocab, **packing):
    """Per-token loss and target level ``[B, T]`` of ``model`` on ``batch`` (one jitted call)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, batch, packing):
        logits = nnx.merge(graphdef, state)(batch["tokens"], batch["codes"], batch["levels"],
                                            **packing)
        nll, _, level = sid_token_nll(logits, batch["targets"], vocab)
        return nll, level

    return [np.asarray(x) for x in forward(state, batch, packing)]


@pytest.mark.parametrize("prefixmem", [False, True])
def test_packed_row_gives_the_per_token_loss_of_the_unpacked_sequences(prep, prefixmem):
    model = E.build_model(_cfg(prefixmem), prep.vocab)
    windows = [np.asarray(s[-n:]) for s, n in zip(prep.split.train[:3], (4, 2, 5))]
    levels = prep.vocab.num_levels
    row = packed_row(windows, prep.sids.codes, prep.vocab, length=(4 + 2 + 5) * levels + 7)
    assert row["segment_ids"].max() == 3 and (row["segment_ids"] == 0).sum() == 7
    nll, level = _nll(model, {k: row[k][None] for k in ("tokens", "codes", "levels", "targets")},
                      prep.vocab, segment_ids=row["segment_ids"][None],
                      positions=row["positions"][None])
    assert (level > 0).sum() == (row["targets"] != PAD).sum() == (4 + 2 + 5) * levels
    packed = nll[level > 0]
    # each window alone, left-padded as in unpacked training; its targets include BOS after the
    # padding, which is not a SID token, so only SID targets (level > 0) are compared
    full = [encode_items(w, prep.sids.codes, prep.vocab, sequence_length(6, levels))
            for w in windows]
    batch = {k: np.stack([f[k][:-1] for f in full]) for k in ("tokens", "codes", "levels")}
    batch["targets"] = np.stack([f["tokens"][1:] for f in full])
    nll, level = _nll(model, batch, prep.vocab)
    unpacked = nll[level > 0]  # row-major: window by window, in order
    assert packed.shape == unpacked.shape
    np.testing.assert_allclose(packed, unpacked, rtol=2e-5, atol=2e-5)


def test_packed_training_runs_and_its_loss_decreases(prep, tmp_path):
    cfg = _cfg(pack_segments=2, pack_length=96)
    E.train_model(dataclasses.replace(prep, cfg=cfg), tmp_path, log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert np.mean([r["loss"] for r in rows[-5:]]) < np.mean([r["loss"] for r in rows[:5]]) - 0.3
    tokens_per_step = rows[-1]["tokens_per_s"] / rows[-1]["steps_per_s"]
    assert tokens_per_step == pytest.approx(16 * 96)  # packed rows of 96 positions were trained

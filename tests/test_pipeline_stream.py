"""Grain training pipeline: exact resumption, per-process sharding, packing, prepared sources."""

import json

import numpy as np
import pytest

from sidjax.data import prepare
from sidjax.data.pipeline import (
    BOS,
    PAD,
    SIDVocab,
    packed_row,
    train_dataset,
    train_iterator,
)
from sidjax.data.split import leave_one_out

VOCAB = SIDVocab((4, 4, 3))


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 30, size=rng.integers(1, 15)).astype(np.int32) for _ in range(40)]


@pytest.fixture(scope="module")
def sids():
    rng = np.random.default_rng(1)
    return np.stack([rng.integers(0, k, 30) for k in VOCAB.codes_per_level], axis=1)


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("pack_segments", [0, 3])
def test_restart_at_step_k_equals_uninterrupted_run(sequences, sids, pack_segments):
    kw = dict(max_history=5, batch_size=4, seed=7, shard_index=0, shard_count=1,
              pack_segments=pack_segments)
    ds = train_dataset(sequences, sids, VOCAB, **kw)
    uninterrupted = iter(ds.to_iter_dataset())
    reference = [next(uninterrupted) for _ in range(30)]  # 30 x 4 > 40 users: crosses epochs
    k = 17
    restarted = train_dataset(sequences, sids, VOCAB, **kw)
    it = train_iterator(restarted, start_step=k, num_threads=2, prefetch=4)
    for step in range(k, 30):
        assert _equal(next(it), reference[step]), step
    # grain's own iterator state: save after step k + 3, restore into a fresh iterator
    it = train_iterator(restarted, start_step=k)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    fresh = train_iterator(train_dataset(sequences, sids, VOCAB, **kw), start_step=k)
    fresh.set_state(state)
    for step in range(k + 3, 30):
        assert _equal(next(fresh), reference[step]), step
    assert not _equal(reference[0], reference[1])


def test_shards_read_disjoint_slices_of_the_global_batch(sequences, sids):
    kw = dict(max_history=5, seed=3)
    full = train_dataset(sequences, sids, VOCAB, batch_size=6, shard_index=0, shard_count=1, **kw)
    shards = [train_dataset(sequences, sids, VOCAB, batch_size=2, shard_index=k, shard_count=3,
                            **kw) for k in range(3)]
    for step in (0, 5, 11):
        glob = full[step]
        for k, shard in enumerate(shards):
            local = shard[step]
            for key in glob:
                np.testing.assert_array_equal(local[key], glob[key][k::3])
    # the default shard is this process: index 0 of 1
    default = train_dataset(sequences, sids, VOCAB, batch_size=6, **kw)
    assert _equal(default[4], full[4])
    with pytest.raises(ValueError, match=r"shard_index=3 must be in \[0, shard_count=3\)"):
        train_dataset(sequences, sids, VOCAB, batch_size=2, shard_index=3, shard_count=3, **kw)
    with pytest.raises(ValueError, match="lower train.batch_size"):
        train_dataset(sequences[:10], sids, VOCAB, batch_size=4, shard_index=0, shard_count=3, **kw)


def test_packed_row_layout():
    vocab = SIDVocab((4, 4))
    codes = np.array([[0, 1], [2, 3], [1, 1]])
    windows = [np.array([0, 1]), np.array([2]), np.array([1, 2, 0]), np.array([1])]
    row = packed_row(windows, codes, vocab, 11)
    off = vocab.level_offsets

    def t(item, lvl):
        return off[lvl] + codes[item, lvl]

    # segment 1: BOS a1 a2 b1 -> a1 a2 b1 b2; segment 2: BOS c1 -> c1 c2; segment 3 has room for
    # 5 positions = 2 items, its most recent ones (2, 0); the 4th window does not fit at all.
    assert row["segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 0]
    assert row["positions"].tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 0]
    assert row["tokens"].tolist() == [BOS, t(0, 0), t(0, 1), t(1, 0), BOS, t(2, 0),
                                      BOS, t(2, 0), t(2, 1), t(0, 0), PAD]
    assert row["targets"].tolist() == [t(0, 0), t(0, 1), t(1, 0), t(1, 1), t(2, 0), t(2, 1),
                                       t(2, 0), t(2, 1), t(0, 0), t(0, 1), PAD]
    assert row["levels"].tolist() == [0, 1, 2, 1, 0, 1, 0, 1, 2, 1, 0]
    assert row["codes"].tolist() == [0, 0, 1, 2, 0, 1, 0, 1, 1, 0, 0]
    assert all(v.dtype == np.int32 and v.shape == (11,) for v in row.values())


def test_packed_dataset_keys_and_shapes(sequences, sids):
    ds = train_dataset(sequences, sids, VOCAB, max_history=5, batch_size=3, seed=0,
                       shard_index=0, shard_count=1, pack_segments=4, pack_length=40)
    batch = ds[2]
    assert set(batch) == {"tokens", "codes", "levels", "targets", "segment_ids", "positions"}
    assert all(v.shape == (3, 40) and v.dtype == np.int32 for v in batch.values())
    seg = batch["segment_ids"]
    assert seg.max() >= 2
    starts = (batch["positions"] == 0) & (seg > 0)
    assert np.all(batch["tokens"][starts] == BOS)
    assert np.all((batch["targets"] == PAD) == (seg == 0))


def test_prepared_array_record_source_streams_the_same_batches(tmp_path, sequences, sids):
    lines = [" ".join(map(str, [u + 1, *(s + 1)])) for u, s in enumerate(sequences)
             if len(s) >= 3 and (np.diff(s) != 0).all()]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "sequential_data.txt").write_text("\n".join(lines) + "\n")
    prepare.prepare_dataset(tmp_path / "src", tmp_path / "p", vectors="collab", vector_dim=2)
    data = prepare.load_prepared(tmp_path / "p")
    train = leave_one_out(data.sequences).train
    kw = dict(max_history=4, batch_size=4, seed=2, shard_index=0, shard_count=1)
    from_list = train_dataset(train, sids, VOCAB, **kw)
    from_source = train_dataset(prepare.train_source(tmp_path / "p"), sids, VOCAB, **kw)
    for step in (0, 3, 9):
        assert _equal(from_list[step], from_source[step])

import numpy as np
import pytest

from sidjax.data.pipeline import (
    BOS,
    PAD,
    SIDVocab,
    encode_items,
    eval_arrays,
    train_dataset,
    training_example,
    training_length,
)
from sidjax.data.split import item_counts, leave_one_out
from sidjax.data.synthetic import synthetic_catalog


@pytest.fixture(scope="module")
def catalog():
    return synthetic_catalog(300, 400, num_top=4, seed=3)


def test_synthetic_catalog_is_deterministic_and_shaped(catalog):
    again = synthetic_catalog(300, 400, num_top=4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(catalog.sequences, again.sequences))
    assert np.array_equal(catalog.item_vectors, again.item_vectors)
    other = synthetic_catalog(300, 400, num_top=4, seed=4)
    assert not np.array_equal(catalog.item_vectors, other.item_vectors)
    lengths = [len(s) for s in catalog.sequences]
    assert min(lengths) >= 5 and max(lengths) <= 50 and np.mean(lengths) > 8
    assert catalog.num_items == 300 and catalog.num_users == 400
    assert len(catalog.item_text) == 300 and " for " in catalog.item_text[0]


def test_synthetic_vectors_cluster_by_category(catalog):
    fine = np.asarray(catalog.provenance["fine_category"])
    v = catalog.item_vectors
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    same = fine[:, None] == fine[None]
    np.fill_diagonal(same, False)
    assert d[same].mean() < 0.5 * d[~same].mean()


def test_synthetic_sequences_follow_companions(catalog):
    """The next item is far more predictable than popularity alone."""
    pairs = np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in catalog.sequences])
    counts = {}
    for a, b in pairs:
        counts.setdefault(a, {}).setdefault(b, 0)
        counts[a][b] += 1
    top_next = sum(max(c.values()) for c in counts.values()) / len(pairs)
    assert top_next > 0.3


def test_leave_one_out():
    split = leave_one_out([np.arange(5), np.arange(10, 12), np.arange(20, 23)])
    assert [list(s) for s in split.train] == [[0, 1, 2], [10, 11], [20]]
    assert list(split.test.targets) == [4, 22] and list(split.valid.targets) == [3, 21]
    assert list(split.test.histories[0]) == [0, 1, 2, 3]
    assert list(split.valid.histories[1]) == [20]
    assert list(split.test.users) == [0, 2]
    assert item_counts(split.train, 25)[10] == 1


def test_encode_items_layout():
    vocab = SIDVocab((4, 4, 3))
    sids = np.array([[0, 1, 2], [3, 3, 0]])
    out = encode_items(np.array([1, 0]), sids, vocab, length=9)
    offsets = vocab.level_offsets
    assert list(out["tokens"]) == [PAD, PAD, BOS, offsets[0] + 3, offsets[1] + 3, offsets[2] + 0,
                                   offsets[0] + 0, offsets[1] + 1, offsets[2] + 2]
    assert list(out["levels"]) == [0, 0, 0, 1, 2, 3, 1, 2, 3]
    assert list(out["codes"]) == [0, 0, 0, 3, 3, 0, 0, 1, 2]
    truncated = encode_items(np.array([1, 0, 1]), sids, vocab, length=7)
    assert list(truncated["codes"]) == [0, 0, 1, 2, 3, 3, 0]
    assert truncated["tokens"][0] == BOS


def test_training_example_targets_are_next_tokens():
    vocab = SIDVocab((4, 4, 3))
    sids = np.array([[0, 1, 2], [3, 3, 0], [1, 1, 1]])
    ex = training_example(np.array([0, 1, 2]), sids, vocab, 4, np.random.default_rng(0))
    assert ex["tokens"].shape == ex["targets"].shape == (training_length(4, 3),) == (15,)
    assert np.array_equal(ex["targets"][:-1], ex["tokens"][1:])
    assert ex["targets"][-1] == vocab.level_offsets[2] + 1


@pytest.mark.parametrize("max_history", [1, 3, 5])
def test_training_rows_hold_the_evaluation_input(max_history):
    """Regression: a training window of ``max_history`` items left each predicted SID at most
    ``max_history - 1`` items of context, while evaluation feeds ``max_history``. The row that
    predicts item t from history h must be exactly the evaluation input of h (same tokens at the
    same positions), then the target's SID tokens that decoding feeds back."""
    vocab = SIDVocab((4, 4, 3))
    sids = np.random.default_rng(1).integers(0, 3, (12, 3))
    sequence = np.arange(max_history + 1) + 2  # one window: history = all but the last item
    ex = training_example(sequence, sids, vocab, max_history, np.random.default_rng(0))
    want = eval_arrays([sequence[:-1]], sids, vocab, max_history)
    n = want["tokens"].shape[1]
    assert len(ex["tokens"]) == n + vocab.num_levels - 1
    for key in ("tokens", "codes", "levels"):
        assert np.array_equal(ex[key][:n], want[key][0]), key
    assert np.array_equal(ex["targets"][n - 1:], vocab.sid_tokens(sids[sequence[-1]]))


def test_train_dataset_is_indexed_by_step(catalog):
    split = leave_one_out(catalog.sequences)
    sids = np.random.default_rng(0).integers(0, 4, size=(catalog.num_items, 3))
    vocab = SIDVocab((4, 4, 4))
    ds = train_dataset(split.train, sids, vocab, max_history=6, batch_size=8, seed=1)
    a, b = ds[17], ds[17]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["tokens"].shape == (8, training_length(6, 3)) == (8, 21)
    assert not np.array_equal(ds[0]["tokens"], ds[1]["tokens"])
    with pytest.raises(ValueError, match="lower train.batch_size"):
        train_dataset(split.train[:3], sids, vocab, max_history=6, batch_size=8, seed=1)

"""Text + SID vocabulary: SIDVocab ids, the sentencepiece tokenizer with SID tokens, text prompt
tokens in the pipeline, and a tiny model trained on mixed text/SID sequences."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.config import ModelConfig, PrefixMemConfig, TrainConfig
from sidjax.data.pipeline import (
    SIDVocab,
    TextPrompt,
    encode_items,
    eval_arrays,
    packed_row,
    sequence_length,
    train_dataset,
    training_example,
    training_length,
)
from sidjax.decode.beam import recommend
from sidjax.nn.model import SIDRecommender
from sidjax.sid.trie import build_trie
from sidjax.tokens import TextSIDVocab, load_or_train
from sidjax.train.loop import sid_loss, token_levels, train

COLORS = ("red", "blue", "green", "black")
KINDS = ("running shoe", "winter jacket", "wool sock", "trail backpack", "rain hat", "yoga mat")
TITLES = [f"{COLORS[i % 4]} {KINDS[i // 4]} model {i}" for i in range(24)]
SID_CODES = np.stack([np.arange(24) // 4, np.arange(24) % 4], axis=1)  # kind, color


def test_default_sid_vocab_keeps_the_original_ids():
    vocab = SIDVocab((3, 4))
    assert (vocab.pad_id, vocab.bos_id, vocab.size) == (0, 1, 9)
    assert vocab.level_offsets.tolist() == [2, 5] and vocab.level_offsets.dtype == np.int32
    assert token_levels(vocab).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    shifted = SIDVocab((3, 4), text_size=10, pad_id=7, bos_id=3)
    assert shifted.level_offsets.tolist() == [10, 13] and shifted.size == 17
    assert shifted.sid_tokens([[2, 3]]).tolist() == [[12, 16]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(text_size=5, pad_id=5), r"pad_id=5 must be a text id in \[0, text_size=5\)"),
    (dict(pad_id=1), "pad_id and bos_id are both 1"),
    (dict(codes_per_level=(3, 0)), "every level needs >= 1 code"),
])
def test_bad_sid_vocab_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SIDVocab(**{"codes_per_level": (3, 4), **kwargs})


@pytest.fixture(scope="module")
def vocab():
    return TextSIDVocab.train(TITLES * 3, codes_per_level=(6, 4), vocab_size=60)


@pytest.mark.parametrize("text", [
    "red running shoe model 3 <s1_0><s2_3>",
    "<s1_5><s2_0> blue rain hat <s1_4><s2_1><s1_2><s2_2> green",
    "winter jacket",
    "<s1_1><s2_1>",
])
def test_mixed_text_and_sid_round_trip(vocab, text):
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert np.array_equal(vocab.encode(vocab.decode(ids)), ids)
    codes, levels = vocab.levels(ids)
    sid = ids >= vocab.text_size
    assert np.array_equal(levels > 0, sid)
    found = [f"<s{lv}_{c}>" for c, lv in zip(codes[sid], levels[sid])]
    assert "".join(found) == "".join(t for t in text.split() if t.startswith("<s")).replace(" ", "")


def test_sid_tokens_follow_the_text_pieces(vocab):
    assert (vocab.sids.pad_id, vocab.sids.bos_id) == (0, 1)
    assert vocab.sid_token(1, 0) == vocab.text_size
    assert vocab.sid_token(2, 3) == vocab.text_size + 6 + 3 == vocab.size - 1
    with pytest.raises(ValueError, match=r"<s3_0> is not a SID token of codes_per_level=\(6, 4\)"):
        vocab.encode("shoe <s3_0>")
    with pytest.raises(ValueError, match="contains a SID token pattern"):
        TextSIDVocab.train(["a <s1_2> b"], (4,))


def test_save_load_is_atomic_and_checked(vocab, tmp_path):
    path = vocab.save(tmp_path / "text_vocab.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_vocab.json"]
    again = TextSIDVocab.load(path)
    text = "blue wool sock <s1_2><s2_1>"
    assert np.array_equal(again.encode(text), vocab.encode(text)) and again.size == vocab.size
    log = []
    assert load_or_train(path, [], (6, 4), log=log.append).size == vocab.size  # reused, no texts
    assert "reusing" in log[0]
    with pytest.raises(ValueError, match=r"is for SID levels \(6, 4\), not \(6, 5\)"):
        load_or_train(path, TITLES, (6, 5))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="bad.json: not a sidjax text vocabulary"):
        TextSIDVocab.load(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text('{"format": "sidjax-text-sid-vocab",\n "codes')
    with pytest.raises(ValueError, match="cut.json:2: not valid JSON"):
        TextSIDVocab.load(tmp_path / "cut.json")


def test_prompt_tokens_follow_history_sids_but_not_the_predicted_item():
    vocab = SIDVocab((3, 4), text_size=10, pad_id=0, bos_id=1)
    prompt = TextPrompt(instruction=(3, 4), item_tokens=((5, 6, 9), (7,), (8, 9)),
                        max_item_tokens=2)
    codes = np.array([[0, 1], [2, 3], [1, 0]])
    length = sequence_length(3, 2, prompt)
    assert length == 1 + 2 + 3 * 4
    out = encode_items([0, 1, 2], codes, vocab, length, prompt, bare_last=True)
    s = lambda item: (vocab.level_offsets + codes[item]).tolist()  # noqa: E731
    expected = [1, 3, 4] + s(0) + [5, 6] + s(1) + [7] + s(2)
    assert out["tokens"].tolist() == [0] * (length - len(expected)) + expected
    assert out["levels"].tolist()[-len(expected):] == [0] * 3 + [1, 2, 0, 0, 1, 2, 0, 1, 2]
    assert out["codes"].tolist()[-len(expected):] == [0] * 3 + [0, 1, 0, 0, 2, 3, 0, 1, 0]
    history = encode_items([0, 1, 2], codes, vocab, 12, prompt)  # only the newest items fit
    assert history["tokens"].tolist() == [0, 0, 1, 3, 4] + s(1) + [7] + s(2) + [8, 9]
    # evaluation feeds at most max_history items even when short texts leave room for more
    short = TextPrompt(item_tokens=((5,), (6,), (7,)), max_item_tokens=3)
    two = eval_arrays([np.array([0, 1, 2])], codes, vocab, 2, short)
    assert int((two["levels"][0] == 1).sum()) == 2


def test_no_sid_is_predicted_after_its_own_item_text():
    """Regression: with an item's text before its SID, training taught the model to copy titles
    into SIDs, which it cannot do at test time (the predicted item's text is never shown)."""
    vocab = SIDVocab((3, 4), text_size=20, pad_id=0, bos_id=1)
    titles = tuple((10 + i, 15 + i) for i in range(5))  # item i's text: tokens 10+i, 15+i
    prompt = TextPrompt(instruction=(2,), item_tokens=titles, max_item_tokens=2)
    codes = np.array([[0, 1], [2, 3], [1, 0], [2, 2], [0, 3]])
    sid_of = {tuple(vocab.sid_tokens(c)): i for i, c in enumerate(codes)}
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20):
        sequence = rng.permutation(5)[:rng.integers(2, 6)]  # distinct items
        ex = training_example(sequence, codes, vocab, 3, rng, prompt)
        for j in np.flatnonzero(np.isin(ex["targets"], vocab.level_offsets[0] + np.arange(3))):
            item = sid_of[tuple(ex["targets"][j:j + 2])]  # the SID whose first token is target j
            context = set(ex["tokens"][:j + 2].tolist())  # inputs up to its last predicted token
            assert not set(titles[item]) & context, (sequence, ex["tokens"], j)
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("kwargs, message", [
    (dict(pack_segments=2), "text prompt tokens work with padded SID rows only"),
    (dict(prompt=TextPrompt(instruction=(12,))), r"prompt token ids \[12\] are not text ids"),
])
def test_bad_prompt_options_are_refused(kwargs, message):
    vocab = SIDVocab((3, 4), text_size=10)
    kwargs = {"prompt": TextPrompt(instruction=(3,)), **kwargs}
    with pytest.raises(ValueError, match=message):
        train_dataset([np.arange(3)] * 8, np.zeros((3, 2), int), vocab, max_history=3,
                      batch_size=2, seed=0, **kwargs)


def test_packed_rows_pad_with_the_vocabulary_pad_id():
    vocab = SIDVocab((3, 4), text_size=10, pad_id=7, bos_id=1)
    row = packed_row([np.array([0, 1])], np.array([[0, 1], [2, 3]]), vocab, 8)
    assert row["tokens"].tolist()[-3:] == [7, 7, 7] and row["targets"].tolist()[-3:] == [7] * 3


def test_tiny_model_trains_on_mixed_sequences_and_beam_search_returns_items(vocab, tmp_path):
    prompt = vocab.prompt("next item:", item_texts=TITLES, max_item_tokens=3)
    rng = np.random.default_rng(0)
    # users browse one kind: the next item has the same level-1 code
    sequences = [rng.integers(0, 4, rng.integers(3, 7)) + 4 * rng.integers(6) for _ in range(96)]
    dataset = train_dataset(sequences, SID_CODES, vocab.sids, max_history=4, batch_size=16,
                            seed=0, prompt=prompt)
    batch = {k: jnp.asarray(v) for k, v in dataset[500].items()}
    assert batch["tokens"].shape == (16, training_length(4, 2, prompt))
    text = (batch["tokens"] > 1) & (batch["tokens"] < vocab.text_size)
    assert bool(text.any()) and not bool((batch["levels"][text]).any())
    cfg = ModelConfig(d_model=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64, dropout=0.0,
                      prefixmem=PrefixMemConfig(enabled=True, mem_dim=8, orders=(1, 2)))
    from flax import nnx

    model = SIDRecommender(cfg, vocab.sids, rngs=nnx.Rngs(0))

    def held_out_loss(m):
        logits = m(batch["tokens"], batch["codes"], batch["levels"])
        return float(sid_loss(logits, batch["targets"], vocab.sids)[0])

    before = held_out_loss(model)
    tcfg = TrainConfig(batch_size=16, steps=40, learning_rate=1e-2, warmup_steps=5,
                       log_every=30, checkpoint_every=1000, tensorboard=False, data_threads=0)
    model = train(model, dataset, vocab.sids, tcfg, tmp_path / "run")
    assert held_out_loss(model) < 0.8 * before
    histories = [s[:-1] for s in sequences[:32]]
    arrays = eval_arrays(histories, SID_CODES, vocab.sids, 4, prompt)
    items, _ = recommend(model, build_trie(SID_CODES), arrays, vocab.sids, beam=5)
    assert items.shape == (32, 5) and ((items >= 0) & (items < 24)).all()
    assert all(len(set(row)) == 5 for row in items.tolist())
    same_kind = np.mean(items[:, 0] // 4 == np.array([s[-1] // 4 for s in sequences[:32]]))
    assert same_kind > 0.5, same_kind  # chance is 1/6


def test_a_run_with_text_prompts_trains_and_recommends(tmp_path):
    import hashlib

    from sidjax import config as C
    from sidjax import run as E
    from sidjax.decode.recommend import recommend_for_histories

    cfg = C.apply_overrides(C.tiny(), [
        "data.num_items=200", "data.num_users=300", "data.max_history=4", "train.steps=12",
        "train.warmup_steps=2", "train.batch_size=16", "train.tensorboard=false",
        "data.text_prompt=Next item:", "data.item_text_tokens=3", "data.text_vocab_size=200",
        "model.prefixmem.enabled=true"])
    logs = []
    prep = E.prepare(cfg, tmp_path, log=logs.append)
    assert (tmp_path / "text_vocab.json").is_file() and prep.vocab.text_size > 10
    assert prep.prompt.max_item_tokens == 3 and len(prep.prompt.instruction) >= 1
    model = E.train_model(prep, tmp_path / "model", log=logs.append)
    assert model.embed.embedding[...].shape[0] == prep.vocab.size
    again = E.prepare(cfg, tmp_path, log=logs.append)
    assert any("reusing text vocabulary" in line for line in logs)
    histories = [[again.data.item_ids[i] for i in s[:-1]] for s in again.data.sequences[:8]]
    recs = recommend_for_histories(model, again, histories, k=3, beam=4, batch_size=8)
    assert all(len(r["items"]) == 3 and set(r["items"]) <= set(again.data.item_ids) for r in recs)
    # runs without text prompts keep the hash they had before the text keys existed
    plain = C.tiny()
    relevant = {k: v for k, v in C.to_dict(plain).items() if k in ("data", "sid", "model")}
    for key in ("pack_segments", "pack_length", "text_prompt", "item_text_tokens",
                "text_vocab_size", "item_vectors"):
        relevant["data"].pop(key)
    for key in ("item_memory", "attention", "attention_windows", "bfts_window", "nlir"):
        relevant["model"].pop(key)  # keys added later, at their defaults
    old = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    old.update(prep.sids.content_hash().encode())
    assert E.run_hash(plain, prep.sids) == old.hexdigest()
    assert E.run_hash(cfg, prep.sids) != E.run_hash(
        C.apply_overrides(cfg, ["data.item_text_tokens=2"]), prep.sids)

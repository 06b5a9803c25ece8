"""Hugging Face import: tiny random Llama / Qwen2 / Gemma checkpoints in the exact HF layout, round
trip, logits parity with transformers, SID vocabulary extension, bad checkpoints, and training
with PrefixMem attached."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.config import PrefixMemConfig, TrainConfig
from sidjax.data.pipeline import train_dataset
from sidjax.nn import hf_import
from sidjax.train.loop import sid_loss, train

ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}
V, D, LAYERS, N, K, H, F = 40, 32, 2, 4, 2, 8, 48


def hf_config(family: str, **overrides) -> dict:
    """A tiny config.json in the style of the public checkpoints (rope_theta at the top)."""
    cfg = dict(architectures=[ARCH[family]], model_type=family, vocab_size=V, hidden_size=D,
               intermediate_size=F, num_hidden_layers=LAYERS, num_attention_heads=N,
               num_key_value_heads=K, head_dim=H, rms_norm_eps=1e-6, rope_theta=1000.0,
               max_position_embeddings=128, tie_word_embeddings=family == "gemma",
               hidden_act="gelu_pytorch_tanh" if family == "gemma" else "silu",
               bos_token_id=2 if family == "gemma" else 1, eos_token_id=1 if family == "gemma"
               else 2, pad_token_id=0 if family == "gemma" else None, torch_dtype="float32")
    return {**cfg, **overrides}


def hf_tensors(family: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under Hugging Face names and [out, in] shapes, written out by hand."""
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (N * H, D), p + "self_attn.k_proj.weight": (K * H, D),
                   p + "self_attn.v_proj.weight": (K * H, D), p + "self_attn.o_proj.weight": (D, N * H),
                   p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                   p + "mlp.down_proj.weight": (D, F), p + "input_layernorm.weight": (D,),
                   p + "post_attention_layernorm.weight": (D,)}
        if family == "qwen2":
            shapes |= {p + "self_attn.q_proj.bias": (N * H,), p + "self_attn.k_proj.bias": (K * H,),
                       p + "self_attn.v_proj.bias": (K * H,)}
    if family != "gemma":
        shapes["lm_head.weight"] = (V, D)
    out = {}
    for name, shape in shapes.items():
        norm = name.endswith("norm.weight")
        scale = 0.1 if norm else 1.0 / np.sqrt(shape[-1])
        out[name] = ((1.0 if norm and family != "gemma" else 0.0)
                     + scale * rng.standard_normal(shape)).astype(np.float32)
    return out


def write_hf(tmp_path, family, *, shards=1, config=None, tensors=None):
    return hf_import.write_checkpoint(tmp_path / f"{family}-ckpt", config or hf_config(family),
                                      hf_tensors(family) if tensors is None else tensors,
                                      shards=shards)


@pytest.mark.parametrize("family, shards", [("llama", 1), ("qwen2", 3), ("gemma", 1),
                                            ("llama", 2)])
def test_round_trip_maps_every_tensor_exactly(tmp_path, family, shards):
    tensors = hf_tensors(family)
    folder = write_hf(tmp_path, family, shards=shards, tensors=tensors)
    assert (folder / "model.safetensors.index.json").is_file() == (shards > 1)
    pre = hf_import.load_pretrained(folder)
    arch = pre.model.arch
    assert (arch.family, arch.d_model, arch.num_heads, arch.num_kv_heads, arch.head_dim,
            arch.mlp_dim, arch.rope_base, arch.tie_embeddings) == (
        family, D, N, K, H, F, 1000.0, family == "gemma")
    attn = pre.model.decoder.blocks[1].attn
    q = tensors["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.asarray(attn.w_q[...])[:, 3, 5], q[3 * H + 5])
    o = tensors["model.layers.1.self_attn.o_proj.weight"]
    np.testing.assert_array_equal(np.asarray(attn.w_o[...])[2, 1], o[:, 2 * H + 1])
    back = hf_import.export_tensors(pre.model)
    assert set(back) == set(tensors)
    extra = pre.vocab.size - V
    for name, value in tensors.items():
        got = back[name][:V] if name in ("model.embed_tokens.weight", "lm_head.weight") else back[name]
        np.testing.assert_array_equal(got, value, err_msg=name)
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert back[name].shape == (V + extra, D)


@pytest.mark.parametrize("family, pad, bos, text_size", [
    ("llama", V, 1, V + 1),        # no pad_token_id: a PAD row is added
    ("gemma", 0, 2, V),            # Gemma has its own PAD
    ("qwen2", V + 1, V, V + 2),    # no BOS (tiny Qwen2 configs): BOS and PAD added
])
def test_sid_tokens_follow_the_llm_vocabulary(tmp_path, family, pad, bos, text_size):
    config = hf_config(family, **({"bos_token_id": None} if family == "qwen2" else {}))
    folder = write_hf(tmp_path, family, config=config)
    plain = hf_import.load_pretrained(folder)
    pre = hf_import.load_pretrained(folder, (4, 4, 3), seed=1)
    vocab = pre.vocab
    assert (vocab.pad_id, vocab.bos_id, vocab.text_size, vocab.size) == (pad, bos, text_size,
                                                                          text_size + 11)
    assert list(vocab.level_offsets) == [text_size, text_size + 4, text_size + 8]
    embed = np.asarray(pre.model.embed.embedding[...])
    original = hf_tensors(family)["model.embed_tokens.weight"]
    np.testing.assert_array_equal(embed[:V], original)
    new = embed[V:]
    assert np.abs(new.mean(0) - original.mean(0)).max() < 0.1 * original.std(0).max() + 1e-6
    assert len(np.unique(new.round(6), axis=0)) == len(new)  # noise makes every new row distinct
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, V, (2, 6)))
    zeros = jnp.zeros_like(tokens)
    text_logits = np.asarray(pre.model(tokens, zeros, zeros))[..., :V]
    np.testing.assert_allclose(text_logits, np.asarray(plain.model(tokens, zeros, zeros))[..., :V],
                               atol=1e-6)


def _drop(tensors, name):
    return {k: v for k, v in tensors.items() if k != name}


@pytest.mark.parametrize("change, error, message", [
    (dict(config=hf_config("llama", architectures=["MistralForCausalLM"])), ValueError,
     r"config.json: architectures=\['MistralForCausalLM'\] is not supported; sidjax imports "
     "LlamaForCausalLM"),
    (dict(config=hf_config("llama", rope_scaling={"rope_type": "llama3", "factor": 32.0})),
     ValueError, "rope_scaling/rope_type='llama3' is not supported"),
    (dict(config=hf_config("llama", hidden_act="gelu")), ValueError, "hidden_act='gelu'"),
    (dict(config=hf_config("llama", attention_bias=True)), ValueError, "attention_bias=True"),
    (dict(tensors=_drop(hf_tensors("llama"), "model.layers.1.mlp.up_proj.weight")), KeyError,
     "model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' not found"),
    (dict(config=hf_config("llama", intermediate_size=64)), ValueError,
     r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \(48, 32\), config.json implies "
     r"\(64, 32\)"),
    (dict(config=hf_config("llama", num_hidden_layers=1)), ValueError,
     r"tensors \['model.layers.1.*are not part of a llama decoder of 1 layers"),
    (dict(tensors=_drop(hf_tensors("llama"), "lm_head.weight")), KeyError,
     "tensor 'lm_head.weight' not found"),
])
def test_bad_checkpoints_name_the_file_and_the_problem(tmp_path, change, error, message):
    folder = write_hf(tmp_path, "llama", **change)
    with pytest.raises(error, match=message):
        hf_import.load_pretrained(folder)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        hf_import.load_pretrained(tmp_path)
    folder = write_hf(tmp_path, "qwen2", shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors: shard listed in"):
        hf_import.load_pretrained(folder)


def test_gemma_legacy_gelu_and_transformers5_rope_parameters_are_read(tmp_path):
    cfg = hf_config("gemma", hidden_act="gelu", rope_parameters={"rope_theta": 500.0,
                                                                 "rope_type": "default"})
    del cfg["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = hf_import.read_hf_config(tmp_path).model
    assert (model.rope_base, model.family, model.tie_embeddings) == (500.0, "gemma", True)


def _transformers():
    try:
        import torch
        import transformers
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("transformers/torch are missing under CI: install the [hf] extra")
        pytest.skip("transformers not installed (pip install -e '.[hf]')")
    return torch, transformers


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_logits_match_transformers(tmp_path, family):
    torch, transformers = _transformers()
    folder = write_hf(tmp_path, family)
    reference, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert type(reference).__name__ == ARCH[family]
    tokens = np.random.default_rng(1).integers(3, V, (2, 9))
    with torch.no_grad():
        expected = reference.eval()(torch.tensor(tokens)).logits.numpy()
    pre = hf_import.load_pretrained(folder)
    zeros = jnp.zeros_like(jnp.asarray(tokens))
    got = np.asarray(pre.model(jnp.asarray(tokens), zeros, zeros))[..., :V]
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()


def test_a_checkpoint_saved_by_transformers_imports(tmp_path):
    torch, transformers = _transformers()
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=V, hidden_size=D, intermediate_size=F,
                                      num_hidden_layers=LAYERS, num_attention_heads=N,
                                      num_key_value_heads=K, bos_token_id=1)
    reference = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-zero biases and norms
    reference.save_pretrained(tmp_path / "qwen2")
    tokens = np.random.default_rng(2).integers(3, V, (1, 7))
    with torch.no_grad():
        expected = reference(torch.tensor(tokens)).logits.numpy()
    pre = hf_import.load_pretrained(tmp_path / "qwen2")
    zeros = jnp.zeros_like(jnp.asarray(tokens))
    got = np.asarray(pre.model(jnp.asarray(tokens), zeros, zeros))[..., :V]
    assert np.abs(got - expected).max() < 1e-4


def test_sid_extended_llm_trains_with_prefixmem(tmp_path):
    folder = write_hf(tmp_path, "llama")
    pm = PrefixMemConfig(enabled=True, mem_dim=8, orders=(1, 2, 3))
    pre = hf_import.load_pretrained(folder, (4, 4, 3), prefixmem=pm)
    vocab, model = pre.vocab, pre.model
    rng = np.random.default_rng(0)
    sid_codes = np.stack([np.arange(48) // 12, np.arange(48) // 3 % 4, np.arange(48) % 3], 1)
    # users walk the catalog in steps of one item: the next SID is predictable
    sequences = [(rng.integers(48) + np.arange(rng.integers(4, 9))) % 48 for _ in range(64)]
    dataset = train_dataset(sequences, sid_codes, vocab, max_history=4, batch_size=16, seed=0)
    batch = {k: jnp.asarray(v) for k, v in dataset[1000].items()}

    def held_out_loss(m):
        return float(sid_loss(m(batch["tokens"], batch["codes"], batch["levels"]),
                              batch["targets"], vocab)[0])

    before = held_out_loss(model)
    table_before = np.array(model.prefixmem["table"][...])
    cfg = TrainConfig(batch_size=16, steps=30, learning_rate=3e-3, warmup_steps=5, log_every=20,
                      checkpoint_every=1000, tensorboard=False, data_threads=0)
    trained = train(model, dataset, vocab, cfg, tmp_path / "run")
    after = held_out_loss(trained)
    assert after < 0.8 * before, (before, after)
    assert not np.array_equal(np.asarray(trained.prefixmem["table"][...]), table_before)

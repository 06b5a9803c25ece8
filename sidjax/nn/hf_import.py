"""Hugging Face Llama, Qwen2 and Gemma checkpoints in the sidjax decoder, with SID tokens added.

A checkpoint folder holds ``config.json`` and ``model.safetensors`` (or the shards listed in
``model.safetensors.index.json``). :func:`read_hf_config` maps ``config.json`` to a
:class:`~sidjax.config.ModelConfig`; :func:`load_pretrained` reads the tensors into a
:class:`~sidjax.nn.model.SIDRecommender` whose vocabulary is the LLM's, then (where the LLM has
none) a PAD and a BOS token, then the SID tokens. New rows of the embedding (and of an untied
output head) start at the mean of the pretrained rows plus small Gaussian noise, so PrefixMem can
be attached and the LLM trained on SID sequences; the pretrained rows are kept as they are, so
text logits do not change. :func:`export_tensors` / :func:`write_checkpoint` go the other way
(PrefixMem has no Hugging Face form and is left out).

Names and layouts (``nn.Linear`` weights are ``[out, in]``; ``i`` is the layer):

========================================================  ====================================
Hugging Face                                              sidjax
========================================================  ====================================
``model.embed_tokens.weight [V, D]``                      ``embed.embedding [V', D]``
``model.layers.i.self_attn.q_proj.weight [N*H, D]``       ``decoder.blocks.i.attn.w_q [D, N, H]``
``...k_proj / v_proj.weight [K*H, D]``                    ``attn.w_k / w_v [D, K, H]``
``...o_proj.weight [D, N*H]``                             ``attn.w_o [N, H, D]``
``...q_proj / k_proj / v_proj.bias`` (Qwen2)              ``attn.b_q / b_k / b_v`` (as is)
``model.layers.i.mlp.gate_proj / up_proj.weight [F, D]``  ``mlp.w_gate / w_up [D, F]``
``model.layers.i.mlp.down_proj.weight [D, F]``            ``mlp.w_down [F, D]``
``input_layernorm / post_attention_layernorm.weight``     ``attn_norm / mlp_norm.scale``
``model.norm.weight``                                     ``decoder.final_norm.scale``
``lm_head.weight [V, D]`` (untied only)                   ``head.kernel [D, V']``
========================================================  ====================================

Conventions (checked by the logits parity test against transformers): Hugging Face's
``rotate_half`` RoPE pairs dimension ``j`` with ``j + H/2``, as :func:`sidjax.nn.decoder.rope`;
query head ``n`` reads kv head ``n // (N / K)``; Gemma stores ``w`` of its ``(1 + w)`` RMSNorm
scale and multiplies embeddings by ``sqrt(D)``; Gemma's legacy ``hidden_act: "gelu"`` means the
tanh approximation. Not supported (a clear error): RoPE scaling (Llama 3.1+ ``rope_scaling``),
sliding-window attention, o_proj / MLP biases, other architectures.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sidjax.config import ModelConfig, PrefixMemConfig
from sidjax.nn import families
from sidjax.nn import prefixmem as prefixmem_lib
from sidjax.nn.model import SIDRecommender
from sidjax.tokens import SIDVocab

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "GemmaForCausalLM": "gemma"}
# transformers' defaults when config.json leaves tie_word_embeddings out
DEFAULT_TIE = {"llama": False, "qwen2": False, "gemma": True}
ACTIVATIONS = {"llama": ("silu",), "qwen2": ("silu",), "gemma": ("gelu_pytorch_tanh", "gelu")}
IGNORED_TENSORS = (".rotary_emb.inv_freq",)  # buffers some old checkpoints carry


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """What sidjax takes from a checkpoint's ``config.json``."""

    model: ModelConfig  # the decoder (family, sizes, RoPE base, eps, tied embeddings)
    vocab_size: int  # rows of the pretrained embedding
    bos_id: int | None
    pad_id: int | None
    raw: dict  # config.json as read


def _config_error(path: Path, key: str, value, fix: str) -> ValueError:
    return ValueError(f"{path}: {key}={value!r} is not supported; {fix}")


def _rope_theta(raw: dict, path: Path) -> float:
    """The RoPE base, from ``rope_theta`` or ``rope_parameters`` (transformers 5); refuses
    scaled RoPE, which the decoder does not model."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or None
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type")) if scaling else \
        params.get("rope_type", "default")
    if kind not in (None, "default"):
        raise _config_error(path, "rope_scaling/rope_type", kind,
                            "sidjax's RoPE has no frequency scaling; use a checkpoint with plain "
                            "RoPE (e.g. Llama 2 / 3.0, Qwen2, Gemma)")
    return float(raw.get("rope_theta", params.get("rope_theta", 10000.0)))


def read_hf_config(folder: str | Path, *, dropout: float = 0.0,
                   prefixmem: PrefixMemConfig | None = None) -> HFConfig:
    """Maps ``folder/config.json`` of a Llama, Qwen2 or Gemma causal LM to a ``ModelConfig``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file and the key that cannot be used.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; a Hugging Face checkpoint folder holds "
                                "config.json and model.safetensors")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    archs = raw.get("architectures") or []
    family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if family is None and raw.get("model_type") in DEFAULT_TIE and not archs:
        family = raw["model_type"]
    if family is None:
        raise _config_error(path, "architectures", archs or raw.get("model_type"),
                            f"sidjax imports {', '.join(ARCHITECTURES)}")
    act = raw.get("hidden_activation") or raw.get("hidden_act", ACTIVATIONS[family][0])
    if act not in ACTIVATIONS[family]:
        raise _config_error(path, "hidden_act", act, f"{family} needs {ACTIVATIONS[family][0]}")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if raw.get(key) and not (key == "attention_bias" and family == "qwen2"):
            raise _config_error(path, key, raw[key], "the sidjax decoder has no such option")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "vocab_size"):
        if not isinstance(raw.get(key), int) or raw[key] < 1:
            raise ValueError(f"{path}: expected a positive integer {key}, got {raw.get(key)!r}")
    heads = raw["num_attention_heads"]
    model = ModelConfig(
        family=family, d_model=raw["hidden_size"], num_layers=raw["num_hidden_layers"],
        num_heads=heads, num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        mlp_dim=raw["intermediate_size"], rope_base=_rope_theta(raw, path),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", DEFAULT_TIE[family])),
        dropout=dropout, prefixmem=prefixmem or PrefixMemConfig())
    families.resolve(model)

    def token_id(key):
        value = raw.get(key)
        return value if isinstance(value, int) and 0 <= value < raw["vocab_size"] else None

    return HFConfig(model, raw["vocab_size"], token_id("bos_token_id"), token_id("pad_token_id"),
                    raw)


class TensorReader:
    """The tensors of a checkpoint folder: ``model.safetensors`` or the shards of
    ``model.safetensors.index.json``, opened lazily (memory-mapped) by name."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        folder = Path(folder)
        index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{index}: expected JSON with a 'weight_map' of tensor name -> "
                                 "shard file") from None
            self.file_of = {name: folder / shard for name, shard in weight_map.items()}
            self.source = index
        elif single.is_file():
            self.file_of = None
            self.source = single
        else:
            raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors."
                                    "index.json (only safetensors checkpoints are read)")
        self._open = {}
        files = sorted(set(self.file_of.values())) if self.file_of else [single]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file}: shard listed in {self.source} not found")
            self._open[file] = safe_open(file, framework="np")
        if self.file_of is None:
            self.file_of = {name: single for name in self._open[single].keys()}

    def names(self) -> set[str]:
        """All tensor names of the checkpoint."""
        return set(self.file_of)

    def _file(self, name: str) -> Path:
        if name not in self.file_of:
            raise KeyError(f"{self.source}: tensor {name!r} not found (the config.json "
                           "architecture needs it)")
        file = self.file_of[name]
        if name not in self._open[file].keys():
            raise KeyError(f"{file}: tensor {name!r} not found (listed there by {self.source})")
        return file

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of tensor ``name`` (read from the header only)."""
        return tuple(self._open[self._file(name)].get_slice(name).get_shape())

    def get(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """Tensor ``name`` as ``dtype``; raises naming the file if missing or of another shape."""
        file = self._file(name)
        value = self._open[file].get_tensor(name)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{file}: tensor {name!r} has shape {tuple(value.shape)}, "
                             f"config.json implies {tuple(shape)}")
        return value.astype(dtype)


def _layer_names(i: int, qkv_bias: bool) -> list[str]:
    attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
    names = [f"{attn}{p}_proj.weight" for p in "qkvo"]
    names += [f"{mlp}{p}_proj.weight" for p in ("gate", "up", "down")]
    names += [f"model.layers.{i}.input_layernorm.weight",
              f"model.layers.{i}.post_attention_layernorm.weight"]
    return names + ([f"{attn}{p}_proj.bias" for p in "qkv"] if qkv_bias else [])


def decoder_tensors(cfg: ModelConfig, reader: TensorReader, dtype=np.float32) -> dict:
    """The pretrained tensors in sidjax layout: ``{flat nnx path: array}`` for the decoder plus
    ``("embed", "embedding")`` ``[V, D]`` and, untied, ``("head", "kernel")`` ``[D, V]``
    (vocabulary not yet extended). Raises on missing, misshapen or unexpected tensors."""
    arch = families.resolve(cfg)
    d, n, k, h, f = arch.d_model, arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.mlp_dim
    embed_name = "model.embed_tokens.weight"
    embed = reader.get(embed_name, (reader.shape(embed_name)[0], d), dtype)
    vocab = embed.shape[0]
    out = {("embed", "embedding"): embed}
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(arch.num_layers):
        pre, blk = f"model.layers.{i}.", ("decoder", "blocks", i)
        get = lambda name, shape, pre=pre: reader.get(pre + name, shape, dtype)  # noqa: E731
        out[blk + ("attn", "w_q")] = get("self_attn.q_proj.weight", (n * h, d)).T.reshape(d, n, h)
        out[blk + ("attn", "w_k")] = get("self_attn.k_proj.weight", (k * h, d)).T.reshape(d, k, h)
        out[blk + ("attn", "w_v")] = get("self_attn.v_proj.weight", (k * h, d)).T.reshape(d, k, h)
        out[blk + ("attn", "w_o")] = get("self_attn.o_proj.weight", (d, n * h)).T.reshape(n, h, d)
        if arch.qkv_bias:
            for p, width in (("q", n * h), ("k", k * h), ("v", k * h)):
                out[blk + ("attn", f"b_{p}")] = get(f"self_attn.{p}_proj.bias", (width,))
        out[blk + ("mlp", "w_gate")] = get("mlp.gate_proj.weight", (f, d)).T
        out[blk + ("mlp", "w_up")] = get("mlp.up_proj.weight", (f, d)).T
        out[blk + ("mlp", "w_down")] = get("mlp.down_proj.weight", (d, f)).T
        out[blk + ("attn_norm", "scale")] = get("input_layernorm.weight", (d,))
        out[blk + ("mlp_norm", "scale")] = get("post_attention_layernorm.weight", (d,))
        expected.update(_layer_names(i, arch.qkv_bias))
    out[("decoder", "final_norm", "scale")] = reader.get("model.norm.weight", (d,), dtype)
    names = reader.names()
    if arch.tie_embeddings:
        if "lm_head.weight" in names and not np.array_equal(
                reader.get("lm_head.weight", (vocab, d), dtype), embed):
            raise ValueError(f"{reader.source}: config.json ties the embeddings but lm_head.weight"
                             " differs from model.embed_tokens.weight; set tie_word_embeddings"
                             " to false")
        expected.add("lm_head.weight")
    else:
        out[("head", "kernel")] = reader.get("lm_head.weight", (vocab, d), dtype).T
        expected.add("lm_head.weight")
    unexpected = sorted(n for n in names - expected if not n.endswith(IGNORED_TENSORS))
    if unexpected:
        raise ValueError(f"{reader.source}: tensors {unexpected[:5]} are not part of a "
                         f"{arch.family} decoder of {arch.num_layers} layers as config.json "
                         "describes it")
    return out


def extend_rows(matrix: np.ndarray, new_rows: int, rng: np.random.Generator,
                noise_scale: float = 0.1) -> np.ndarray:
    """``matrix [V, D]`` with ``new_rows`` rows appended: the mean row plus Gaussian noise of
    ``noise_scale`` times each column's standard deviation."""
    mean, std = matrix.mean(axis=0), matrix.std(axis=0)
    noise = rng.standard_normal((new_rows, matrix.shape[1])) * noise_scale * std
    return np.concatenate([matrix, (mean + noise).astype(matrix.dtype)], axis=0)


@dataclasses.dataclass
class Pretrained:
    """An imported model, its token space and the config it was built from."""

    model: SIDRecommender
    vocab: SIDVocab
    config: HFConfig


def sid_vocab_for(hf: HFConfig, codes_per_level: tuple[int, ...], *,
                  pad_id: int | None = None, bos_id: int | None = None) -> SIDVocab:
    """The token space of an imported LLM: its ``vocab_size`` ids, then a new PAD and/or BOS when
    the LLM has none (``pad_token_id`` unset or equal to BOS, as in Llama 3 and Qwen2), then the
    SID tokens. ``pad_id``/``bos_id`` pick existing ids instead."""
    bos = hf.bos_id if bos_id is None else bos_id
    pad = hf.pad_id if pad_id is None else pad_id
    text_size = hf.vocab_size
    if bos is None:
        bos, text_size = text_size, text_size + 1
    if pad is None or pad == bos:
        pad, text_size = text_size, text_size + 1
    return SIDVocab(tuple(codes_per_level), text_size=text_size, pad_id=pad, bos_id=bos)


def load_pretrained(folder: str | Path, codes_per_level: tuple[int, ...] = (), *,
                    prefixmem: PrefixMemConfig | None = None, seed: int = 0,
                    noise_scale: float = 0.1, dropout: float = 0.0, pad_id: int | None = None,
                    bos_id: int | None = None, mesh=None) -> Pretrained:
    """A :class:`SIDRecommender` with the weights of a Hugging Face Llama, Qwen2 or Gemma folder,
    its vocabulary extended by :func:`sid_vocab_for` (new rows: :func:`extend_rows`, seeded by
    ``seed``), PrefixMem attached when ``prefixmem.enabled`` (randomly initialised).

    ``codes_per_level=()`` imports the LLM as it is (plus PAD/BOS rows where it has none). The
    weights are read once into float32 parameters (no random init of the decoder first).
    """
    hf = read_hf_config(folder, dropout=dropout, prefixmem=prefixmem)
    vocab = sid_vocab_for(hf, codes_per_level, pad_id=pad_id, bos_id=bos_id)
    values = decoder_tensors(hf.model, TensorReader(folder))
    if values[("embed", "embedding")].shape[0] != hf.vocab_size:
        raise ValueError(f"{Path(folder) / 'config.json'}: vocab_size={hf.vocab_size} but "
                         f"model.embed_tokens.weight has {values[('embed', 'embedding')].shape[0]}"
                         " rows")
    rng = np.random.default_rng(seed)
    extra = vocab.size - hf.vocab_size
    values[("embed", "embedding")] = extend_rows(values[("embed", "embedding")], extra, rng,
                                                 noise_scale)
    if ("head", "kernel") in values:
        values[("head", "kernel")] = extend_rows(values[("head", "kernel")].T, extra, rng,
                                                 noise_scale).T
    abstract = nnx.eval_shape(lambda: SIDRecommender(hf.model, vocab, rngs=nnx.Rngs(seed),
                                                     mesh=mesh))
    graphdef, state = nnx.split(abstract)
    if abstract.pm_cfg is not None:
        pm = prefixmem_lib.init(jax.random.key(seed), abstract.pm_cfg)
        values.update({("prefixmem", k): v for k, v in pm.items()})
    filled = []
    for path, var in nnx.to_flat_state(state):
        value = values.pop(path, None)
        if value is None or tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"internal: no imported value of shape {var.shape} for {path}")
        filled.append((path, var.replace(jnp.asarray(value, jnp.float32))))
    if values:
        raise ValueError(f"internal: imported values without a parameter: {sorted(values)[:3]}")
    return Pretrained(nnx.merge(graphdef, nnx.from_flat_state(filled)), vocab, hf)


def export_tensors(model: SIDRecommender) -> dict[str, np.ndarray]:
    """The decoder of ``model`` as Hugging Face tensors (inverse of :func:`decoder_tensors`,
    all embedding rows included; PrefixMem left out)."""
    arch = model.arch
    params = {path: np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(
        model, nnx.Param))}
    d = arch.d_model
    out = {"model.embed_tokens.weight": params[("embed", "embedding")],
           "model.norm.weight": params[("decoder", "final_norm", "scale")]}
    if not arch.tie_embeddings:
        out["lm_head.weight"] = params[("head", "kernel")].T
    for i in range(arch.num_layers):
        pre, blk = f"model.layers.{i}.", ("decoder", "blocks", i)
        p = lambda *names, blk=blk: params[blk + names]  # noqa: E731
        for name in "qkv":
            out[f"{pre}self_attn.{name}_proj.weight"] = p("attn", f"w_{name}").reshape(d, -1).T
            if arch.qkv_bias:
                out[f"{pre}self_attn.{name}_proj.bias"] = p("attn", f"b_{name}")
        out[f"{pre}self_attn.o_proj.weight"] = p("attn", "w_o").reshape(-1, d).T
        out[f"{pre}mlp.gate_proj.weight"] = p("mlp", "w_gate").T
        out[f"{pre}mlp.up_proj.weight"] = p("mlp", "w_up").T
        out[f"{pre}mlp.down_proj.weight"] = p("mlp", "w_down").T
        out[f"{pre}input_layernorm.weight"] = p("attn_norm", "scale")
        out[f"{pre}post_attention_layernorm.weight"] = p("mlp_norm", "scale")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def write_checkpoint(folder: str | Path, config: dict, tensors: dict[str, np.ndarray], *,
                     shards: int = 1) -> Path:
    """Writes a Hugging Face checkpoint folder: ``config.json`` and ``model.safetensors``, or with
    ``shards > 1`` ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.

    The folder is written under a temporary name and renamed when complete; an existing folder
    is replaced. Returns the folder.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        names = sorted(tensors)
        meta = {"format": "pt"}
        if shards <= 1:
            save_file({k: tensors[k] for k in names}, str(tmp / "model.safetensors"), meta)
        else:
            weight_map, groups = {}, np.array_split(np.arange(len(names)), shards)
            for s, group in enumerate(groups, start=1):
                file = f"model-{s:05d}-of-{shards:05d}.safetensors"
                save_file({names[j]: tensors[names[j]] for j in group}, str(tmp / file), meta)
                weight_map.update({names[j]: file for j in group})
            total = int(sum(v.nbytes for v in tensors.values()))
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder

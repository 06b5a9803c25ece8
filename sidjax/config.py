"""Frozen configuration dataclasses, named presets and command-line overrides.

A run is described by one :class:`Config`. Presets are plain functions returning a ``Config``;
``configs/*.py`` files define ``get_config()`` and may start from a preset. Overrides use dotted keys,
e.g. ``model.d_model=128`` or ``model.prefixmem.orders=1,2,3``; an unknown key or a value of the wrong
type fails at once with the list of valid keys.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where interactions come from and how histories are cut."""

    source: str = "synthetic"  # "synthetic" or a dataset folder (see sidjax.data.sources)
    num_items: int = 2000
    num_users: int = 3000
    num_top_categories: int = 8
    num_mid_per_top: int = 4
    num_fine_per_mid: int = 4
    content_dim: int = 64
    min_seq_len: int = 5
    max_seq_len: int = 50
    seed: int = 0
    max_history: int = 12  # items of history fed to the model
    pack_segments: int = 0  # training rows packed with this many users' windows (0 = off)
    pack_length: int = 0  # positions of a packed row (0 = (max_history + 1) x SID levels)
    # text prompt tokens from a sentencepiece vocabulary of the item text (sidjax.text.vocab)
    text_prompt: str = ""  # instruction after BOS ("" = none)
    item_text_tokens: int = 0  # tokens of each history item's text after its SID (0 = none)
    text_vocab_size: int = 2000  # at most this many sentencepiece pieces
    # vectors the SIDs quantise: "auto" (given vectors, else MiniLM of item text, else
    # collaborative), "text" (MiniLM of item text) or "collab" (PPMI-SVD of training interactions)
    item_vectors: str = "auto"


@dataclasses.dataclass(frozen=True)
class SIDRQVAEConfig:
    """RQ-VAE settings of a run's SIDs (``sid.method="rqvae"``); see sidjax.sid.rqvae.RQVAEConfig."""

    hidden: tuple[int, ...] = (512, 256, 128)  # encoder MLP widths (decoder mirrors them)
    latent: int = 32
    beta: float = 1.0  # commitment weight
    estimator: str = "rotation"  # "rotation" or "ste" (straight-through)
    learning_rate: float = 1e-3
    codebook_ema: float = 0.9  # codebooks follow moving averages of their residuals (0: Adam)
    steps: int = 2000
    batch_size: int = 1024
    reset_every: int = 100  # dead-code reset period (steps)


@dataclasses.dataclass(frozen=True)
class SIDConfig:
    """Semantic ID construction: a quantizer (residual k-means or RQ-VAE) whose SIDs are made unique
    by a collision level or by zero-collision reassignment (see sidjax.sid.build)."""

    levels: int = 3
    codes: int = 32  # codes per level
    kmeans_iters: int = 25
    seed: int = 0
    codes_per_level: tuple[int, ...] = ()  # one K per level (e.g. 32,32,64); () = `codes` for all
    method: str = "rqkmeans"  # "rqkmeans" (residual k-means) or "rqvae"
    reassign: bool = False  # zero-collision reassignment; extra level only where a prefix is full
    split_prefixes: bool = False  # with reassign: cap length-(L-1) prefixes at K_L items first
    balanced: bool = False  # rqkmeans: at most ceil(n / K) * (1 + slack) items per code
    slack: float = 0.0
    rqvae: SIDRQVAEConfig = SIDRQVAEConfig()


@dataclasses.dataclass(frozen=True)
class PrefixMemConfig:
    """PrefixMem: prefix n-gram memory tables keyed by SID prefixes (see sidjax.nn.prefixmem)."""

    enabled: bool = False
    orders: tuple[int, ...] = (1, 2, 3, 4)  # n-gram orders looked up at each level (n <= level)
    mem_dim: int = 32  # width of one memory row
    exact_threshold: int = 65536  # key spaces above this size are hashed
    hash_heads: int = 2
    hash_table_size: int = 8192  # approximate rows per hash head (rounded to a prime)
    gate: bool = True
    pad_rows_to: int = 8  # flattened table rows are padded to a multiple of this (mesh axis size)
    codes_per_level: tuple[int, ...] = ()  # filled from the SID table when the model is built
    d_model: int = 0  # 0: taken from model.d_model
    fusion: str = "concat"  # "concat": project the concatenated rows; "sum": project their sum
    inject_layers: tuple[int, ...] = ()  # () = add at the input embeddings; else before these blocks
    param_dtype: str = "float32"  # dtype of the memory table (projections stay float32)


@dataclasses.dataclass(frozen=True)
class ItemMemConfig:
    """Item memory: the parameter-matched control of PrefixMem (see sidjax.nn.itemmem).

    One hashed table keyed by the full SID of each completed history item, added at the item's
    last SID token only (never at a prefix). Its row width, gate, parameter dtype and projection
    come from ``model.prefixmem`` (which stays disabled), so that at the defaults it has exactly
    PrefixMem's parameter count and projection/gate shapes. Exclusive with ``model.prefixmem``.
    """

    enabled: bool = False
    rows: int = 0  # table rows; 0 = the rows PrefixMem's tables would have for this model
    heads: int = 0  # hash heads (rows concatenated); 0 = PrefixMem's slot count (orders x heads)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer over SID tokens (or, with ``kind="sasrec"``, over item ids)."""

    kind: str = "sid"  # "sid": SID tokens (+ PrefixMem); "sasrec": item-ID baseline, full softmax
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 32
    mlp_dim: int = 384
    dropout: float = 0.1
    rope_base: float = 10000.0
    prefixmem: PrefixMemConfig = PrefixMemConfig()
    item_memory: ItemMemConfig = ItemMemConfig()  # PrefixMem's parameter-matched control
    # Decoder family (sidjax.nn.families): llama | qwen2 | gemma; `--set model.family=` also takes
    # a size preset (llama-3.2-1b, qwen2-0.5b, gemma-2b, <family>-tiny) and expands it.
    family: str = "llama"
    num_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = num_heads
    norm_eps: float = 1e-6
    # None = the family's choice (see sidjax.nn.families)
    qkv_bias: bool | None = None
    activation: str | None = None  # "swiglu" or "geglu" (tanh-approximate GELU)
    norm_plus_one: bool | None = None  # RMSNorm scale 1 + w (Gemma)
    embed_scale: bool | None = None  # embeddings times sqrt(d_model) (Gemma)
    tie_embeddings: bool | None = None  # output head = embedding matrix (Gemma)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, logging and checkpointing."""

    batch_size: int = 64
    steps: int = 500
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_every: int = 200
    max_checkpoints: int = 2
    seed: int = 0
    # mesh axis sizes (one may be -1: all remaining devices); 1,1,1 = one device, no sharding
    mesh_data: int = 1
    mesh_fsdp: int = 1
    mesh_model: int = 1
    schedule: str = "cosine"  # "cosine" (warmup + cosine decay) or "rsqrt" (warmup + 1/sqrt(step))
    prefixmem_lr_mult: float = 1.0  # learning-rate multiplier of the PrefixMem tables (no decay)
    # a `sidjax pretrain-mem` checkpoint folder attached to PrefixMem at step 0 ("" = random init)
    prefixmem_init: str = ""
    # first N steps train only PrefixMem's projections and gate (decoder and table frozen)
    freeze_decoder_steps: int = 0
    grad_accum: int = 1  # micro-batches per step (batch_size must be a multiple)
    label_smoothing: float = 0.0  # share of each target spread over its level's codes (SASRec: items)
    compute_dtype: str = "float32"  # "bfloat16": bf16 forward/backward, float32 master weights
    peak_flops: float = 0.0  # FLOP/s of the whole mesh for the logged MFU (0: not logged)
    # validation during training (sidjax.train.validation): every eval_every steps and at the end
    eval_every: int = 0  # 0 = no validation
    eval_users: int = 2000  # fixed random subset of the validation split (0 = all users)
    eval_recall: bool = False  # also Recall@K / NDCG@K by beam search (slower)
    best_metric: str = "valid/loss"  # the checkpoint kept as best, beside the last max_checkpoints
    best_mode: str = "min"  # "min" (losses) or "max" (recall, NDCG, accuracy)
    patience: int = 0  # early stop after this many evaluations without improvement (0 = off)
    data_threads: int = 1  # grain worker threads preparing batches (0 = in the training thread)
    data_prefetch: int = 4  # batches prepared ahead
    tensorboard: bool = True  # event files beside metrics.jsonl (needs tensorboardX)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Decoding and metrics."""

    beam_size: int = 20
    top_k: tuple[int, ...] = (5, 10)
    batch_size: int = 256
    split: str = "test"
    checkpoint: str = "best"  # "best" (by train.best_metric, when validated) or "latest"


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "demo"
    data: DataConfig = DataConfig()
    sid: SIDConfig = SIDConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def demo() -> Config:
    """The `sidjax demo` preset: about 2,000 items and 3,000 synthetic users, minutes on 2 cores."""
    return Config(name="demo")


def tiny() -> Config:
    """A preset small enough for end-to-end tests (well under a minute per model on CPU)."""
    return Config(
        name="tiny",
        data=DataConfig(num_items=400, num_users=800, num_top_categories=4, max_history=12),
        sid=SIDConfig(levels=3, codes=16, kmeans_iters=15),
        model=ModelConfig(d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=192,
                          dropout=0.0, prefixmem=PrefixMemConfig(mem_dim=16)),
        train=TrainConfig(batch_size=32, steps=300, learning_rate=3e-3, warmup_steps=30,
                          log_every=100, checkpoint_every=150),
        eval=EvalConfig(beam_size=10, batch_size=256),
    )


PRESETS = {"demo": demo, "tiny": tiny}


# ---------------------------------------------------------------------------------------------
# Loading, overriding, serialising


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message says how to fix it."""


def load_config(spec: str) -> Config:
    """Returns the config named by ``spec``: a preset name or a path to a ``configs/*.py`` file.

    A config file must define ``get_config() -> sidjax.config.Config``.
    """
    if spec in PRESETS:
        return PRESETS[spec]()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"config {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file")
    module_spec = importlib.util.spec_from_file_location(f"sidjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(); add `def get_config(): return ...`")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, not Config")
    return cfg


def valid_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """All dotted keys that :func:`override` accepts, e.g. ``model.d_model``."""
    cfg = Config() if cfg is None else cfg
    keys = []
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            keys += valid_keys(value, f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(annotation)
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse_value(p.strip(), item_type, key) for p in parts)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _parse_value(text, args[0], key)
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a bool (true/false), got {text!r}")
    try:
        return annotation(text)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {text!r}") from err


def override(cfg: Any, key: str, text: str, *, _full_key: str | None = None) -> Any:
    """Returns ``cfg`` with the dotted ``key`` set from the string ``text`` (parsed by field type)."""
    full_key = _full_key or key
    head, _, rest = key.partition(".")
    fields = {f.name for f in dataclasses.fields(cfg)}
    if head not in fields or (rest == "") == dataclasses.is_dataclass(getattr(cfg, head)):
        raise ConfigError(
            f"unknown config key {full_key!r}; valid keys: {', '.join(valid_keys())}")
    if rest:
        value = override(getattr(cfg, head), rest, text, _full_key=full_key)
    else:
        value = _parse_value(text, typing.get_type_hints(type(cfg))[head], full_key)
    return dataclasses.replace(cfg, **{head: value})


def apply_overrides(cfg: Config, assignments: list[str]) -> Config:
    """Applies ``key=value`` strings in order (from ``--set``).

    ``model.family=NAME`` applies a family or size preset (:func:`sidjax.nn.families.apply_preset`).
    """
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value, e.g. train.steps=100")
        if key.strip() == "model.family":
            from sidjax.nn.families import apply_preset

            cfg = dataclasses.replace(cfg, model=apply_preset(cfg.model, text.strip()))
            continue
        cfg = override(cfg, key.strip(), text.strip())
    return cfg


# ---------------------------------------------------------------------------------------------
# Validation


def _problems(cfg: Config) -> list[str]:
    """``"<dotted key>=<value>: <rule>"`` for every value of ``cfg`` that cannot work."""
    out: list[str] = []

    def get(key: str) -> Any:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def need(key: str, ok: bool, rule: str) -> None:
        if not ok:
            value = get(key)
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            out.append(f"{key}={shown}: {rule}")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def at_least(minimum: int, *keys: str) -> None:
        for key in keys:
            need(key, number(get(key)) and get(key) >= minimum, f"must be >= {minimum}")

    def positive(*keys: str) -> None:
        for key in keys:
            need(key, number(get(key)) and get(key) > 0, "must be > 0")

    def one_of(key: str, choices: tuple) -> None:
        need(key, get(key) in choices, f"must be one of {', '.join(map(repr, choices))}")

    def all_at_least(minimum: int, key: str, nonempty: bool = False) -> None:
        if nonempty and not get(key):
            out.append(f"{key}=(): must hold at least one value")
        else:
            need(key, all(number(v) and v >= minimum for v in get(key)),
                 f"every value must be >= {minimum}")

    d, s, m, t, e = cfg.data, cfg.sid, cfg.model, cfg.train, cfg.eval
    # data
    at_least(1, "data.num_items", "data.num_users", "data.num_top_categories",
             "data.num_mid_per_top", "data.num_fine_per_mid", "data.content_dim",
             "data.min_seq_len", "data.max_history", "data.text_vocab_size")
    at_least(0, "data.pack_segments", "data.pack_length", "data.item_text_tokens")
    need("data.max_seq_len", d.max_seq_len >= d.min_seq_len,
         f"must be >= data.min_seq_len ({d.min_seq_len})")
    one_of("data.item_vectors", ("auto", "text", "collab"))
    # sid
    at_least(1, "sid.levels", "sid.kmeans_iters")
    at_least(2, "sid.codes")
    all_at_least(2, "sid.codes_per_level")
    need("sid.codes_per_level", not s.codes_per_level or len(s.codes_per_level) == s.levels,
         f"must give one K per level (sid.levels={s.levels}) or be empty")
    one_of("sid.rqvae.estimator", ("rotation", "ste"))
    one_of("sid.method", ("rqkmeans", "rqvae"))
    at_least(0, "sid.slack", "sid.rqvae.beta")
    at_least(1, "sid.rqvae.reset_every")
    at_least(1, "sid.rqvae.latent", "sid.rqvae.steps", "sid.rqvae.batch_size")
    all_at_least(1, "sid.rqvae.hidden")
    positive("sid.rqvae.learning_rate")
    need("sid.rqvae.codebook_ema", 0 <= s.rqvae.codebook_ema < 1, "must be in [0, 1)")
    # model
    one_of("model.kind", ("sid", "sasrec"))
    at_least(1, "model.d_model", "model.num_layers", "model.num_heads", "model.head_dim",
             "model.mlp_dim")
    at_least(0, "model.num_kv_heads")
    need("model.dropout", 0 <= m.dropout < 1, "must be in [0, 1)")
    positive("model.rope_base", "model.norm_eps")
    at_least(1, "model.prefixmem.mem_dim", "model.prefixmem.hash_heads",
             "model.prefixmem.hash_table_size", "model.prefixmem.pad_rows_to")
    at_least(0, "model.prefixmem.exact_threshold", "model.prefixmem.d_model",
             "model.item_memory.rows", "model.item_memory.heads")
    all_at_least(1, "model.prefixmem.orders", nonempty=m.prefixmem.enabled)
    all_at_least(0, "model.prefixmem.inject_layers")
    one_of("model.prefixmem.fusion", ("concat", "sum"))
    need("model.item_memory.enabled", not (m.prefixmem.enabled and m.item_memory.enabled),
         "the item memory is PrefixMem's parameter-matched control: set "
         "model.prefixmem.enabled=false with it")
    # train
    at_least(1, "train.batch_size", "train.steps", "train.log_every", "train.checkpoint_every",
             "train.max_checkpoints", "train.grad_accum")
    positive("train.learning_rate", "train.grad_clip")
    at_least(0, "train.warmup_steps", "train.weight_decay", "train.prefixmem_lr_mult",
             "train.freeze_decoder_steps", "train.peak_flops", "train.eval_every",
             "train.eval_users", "train.patience", "train.data_threads", "train.data_prefetch")
    if t.grad_accum >= 1 and t.batch_size >= 1:
        need("train.grad_accum", t.batch_size % t.grad_accum == 0,
             f"must divide train.batch_size ({t.batch_size})")
    need("train.label_smoothing", 0 <= t.label_smoothing < 1, "must be in [0, 1)")
    one_of("train.schedule", ("cosine", "rsqrt"))
    one_of("train.compute_dtype", ("float32", "bfloat16"))
    one_of("train.best_mode", ("min", "max"))
    # eval
    all_at_least(1, "eval.top_k", nonempty=True)
    at_least(1, "eval.beam_size", "eval.batch_size")
    one_of("eval.split", ("valid", "test"))
    one_of("eval.checkpoint", ("best", "latest"))
    if e.top_k and min(e.top_k) >= 1 and e.beam_size >= 1:
        out += [beam_problem(cfg)] if beam_problem(cfg) else []
    return out


def beam_problem(cfg: Config) -> str | None:
    """Why the beam of a SID model cannot give ``eval.top_k``, or None: a beam of width w yields
    w items, so Recall@K with K > w would silently be Recall@w."""
    k = max(cfg.eval.top_k)
    if cfg.model.kind == "sid" and cfg.eval.beam_size < k:
        return (f"eval.beam_size={cfg.eval.beam_size} is below the largest eval.top_k ({k}): beam "
                f"search returns beam_size items, so Recall@{k} would be "
                f"Recall@{cfg.eval.beam_size}; set eval.beam_size >= {k}")
    return None


def validate(cfg: Config) -> Config:
    """Checks the ranges of counts, rates, sizes and choices of ``cfg``; returns ``cfg``.

    Called by the CLI right after ``--set`` overrides, before any work. Raises
    :class:`ConfigError` naming every bad value at once by its dotted key, e.g.
    ``train.steps=-5: must be >= 1; train.batch_size=0: must be >= 1``.
    """
    problems = _problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems) + " (fix the config file or override with "
                          "--set KEY=VALUE)")
    return cfg




def to_dict(cfg: Config) -> dict:
    """A JSON-ready nested dict."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict, cls: type = Config) -> Any:
    """Inverse of :func:`to_dict`; unknown keys fail with the valid list."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} for {cls.__name__}; valid: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(value, hint)
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def save_config(cfg: Config, path: Path) -> None:
    """Writes ``cfg`` as JSON atomically."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    tmp.replace(path)


def read_config(path: Path) -> Config:
    """Reads a config written by :func:`save_config`."""
    try:
        return from_dict(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err

"""The run configuration: frozen dataclasses, one per part of a run (:class:`Config` holds
them all), and the error every bad setting raises."""

from __future__ import annotations

import dataclasses


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message says how to fix it."""


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
    # Attention span per layer (sidjax.nn.decoder): "full" (causal over the whole row) or "bfts"
    # (TokenFormer's Bottom-Full-Top-Sliding: full attention in the lower layers, sliding windows
    # in the upper ones; a window w lets token t attend to tokens t-w+1..t of its sequence, and a
    # sliding layer's KV cache keeps only its last w entries).
    attention: str = "full"
    # bfts: one window per layer in tokens (0 = full); () = the default rule of
    # sidjax.nn.families.layer_windows: the lower ceil(num_layers / 2) layers full, the U upper
    # layers windows shrinking linearly to the top, ceil(bfts_window * (U - j) / U) at upper layer j
    attention_windows: tuple[int, ...] = ()
    bfts_window: int = 64  # bfts without attention_windows: the lowest sliding layer's window
    # TokenFormer's Non-Linear Interaction Representation: each block's attention output is
    # multiplied by sigmoid(W_nlir h) of the block's normalised input h (per head, before W_o)
    nlir: bool = False


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
    # "adamw" or "adascale": AdaScale SGD (sidjax.train.adascale) over S replicas of the batch;
    # steps and the schedule then count progress tau (1x steps), not updates
    optimizer: str = "adamw"
    # AdaScale's S: batch_size holds S 1x batches; 0 = the mesh's data axis size (must be > 1)
    adascale_replicas: int = 0
    adascale_momentum: float = 0.9  # heavy-ball momentum of AdaScale SGD (0 = plain SGD)


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

"""Range checks of a whole config, naming every bad value by its dotted key."""

from __future__ import annotations

from typing import Any

from sidjax.config.schema import Config, ConfigError


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
    one_of("model.attention", ("full", "bfts"))
    all_at_least(0, "model.attention_windows")
    at_least(1, "model.bfts_window")
    need("model.attention_windows", not m.attention_windows or len(m.attention_windows)
         == m.num_layers, f"must give one window per layer (model.num_layers={m.num_layers}) or "
         "be empty")
    need("model.attention_windows", not m.attention_windows or m.attention == "bfts",
         "windows apply with model.attention=bfts only: set it, or leave the windows empty")
    need("model.attention", m.attention == "full" or m.kind == "sid",
         "the SASRec baseline (model.kind=sasrec) has full attention only")
    need("model.nlir", not m.nlir or m.kind == "sid",
         "the SASRec baseline (model.kind=sasrec) has no NLIR: set model.kind=sid")
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
    one_of("train.optimizer", ("adamw", "adascale"))
    at_least(0, "train.adascale_replicas")
    need("train.adascale_momentum", number(t.adascale_momentum) and 0 <= t.adascale_momentum < 1,
         "must be in [0, 1)")
    if t.optimizer == "adascale":
        need("train.adascale_replicas", t.adascale_replicas != 0 or t.mesh_data != 1,
             "0 takes S from train.mesh_data, which is 1: set train.adascale_replicas=S >= 1")
        replicas = t.adascale_replicas or (t.mesh_data if t.mesh_data > 1 else 0)
        if replicas >= 1 and t.grad_accum >= 1 and t.batch_size >= 1:
            need("train.adascale_replicas", t.batch_size % (replicas * t.grad_accum) == 0,
                 f"S={replicas} x train.grad_accum ({t.grad_accum}) must divide train.batch_size "
                 f"({t.batch_size})")
        need("train.freeze_decoder_steps", t.freeze_decoder_steps == 0,
             "must be 0 with train.optimizer=adascale")
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


def check_beam(cfg: Config) -> None:
    """Raises unless the beam of a SID model returns at least ``max(eval.top_k)`` items
    (:func:`beam_problem`)."""
    problem = beam_problem(cfg)
    if problem:
        raise ValueError(problem)

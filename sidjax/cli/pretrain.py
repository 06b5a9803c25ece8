"""``sidjax pretrain-mem``: pre-train PrefixMem alone (:mod:`sidjax.train.pretrain_mem`) on a
run's data and SIDs, and save it (:mod:`sidjax.nn.prefixmem_io`) for ``sidjax train
--prefixmem-init``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sidjax.cli.args import add_config_args, at_least, config_from_args, positive_float
from sidjax.console import (
    USER_ERRORS,
    is_user_error,
    report_error,
)
from sidjax.files import write_text
from sidjax.nn import prefixmem as pm
from sidjax.nn.prefixmem_io import save_pretrained
from sidjax.train.pretrain_mem import pretrain, pretrain_flops


def add_pretrain_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``pretrain-mem`` command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "pretrain-mem", help="pre-train PrefixMem alone (next code, content, co-engagement)")
    add_config_args(p, None)
    p.add_argument("--workdir", required=True,
                   help="run folder; writes prefixmem_pretrained/ and pretrain_metrics.jsonl")
    p.add_argument("--steps", type=at_least(1), default=500, help="Adam steps (default 500)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate (default 3e-3)")
    p.add_argument("--batch-size", type=at_least(1), default=256,
                   help="items per step (default 256)")
    p.add_argument("--contrastive-weight", type=at_least(0.0, float), default=0.1,
                   help="weight of the co-engagement contrastive loss (default 0.1; 0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p


def run_pretrain(args) -> int:
    """Runs ``sidjax pretrain-mem``: data and SIDs via ``run.prepare``, then pre-training.

    Returns the exit code: 0, or 2 after an error of ordinary use (a bad config key or value, a
    missing file; printed as one line by :func:`sidjax.cli.report_error`).
    """
    from sidjax import run

    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        cfg = config_from_args(args)
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        prep = run.prepare(cfg, workdir, log)
        pm_cfg = dataclasses.replace(pm.resolve_prefixmem(cfg.model, prep.sids.codes_per_level),
                                     enabled=True)
        vectors = run.item_vectors(prep.data, prep.split, log, cfg.data.item_vectors)
        log(f"pre-training PrefixMem ({pm.param_count(pm_cfg):,} params) for {args.steps} steps")

        def progress(done, entry):
            if entry is not None:
                log(f"step {done}: " + " ".join(f"{k}={v:.4f}" for k, v in entry.items()
                                                if k != "step"))

        params, history = pretrain(
            pm_cfg, prep.sids.codes, vectors, prep.counts, steps=args.steps, lr=args.lr,
            seed=args.seed, batch_size=args.batch_size, sequences=prep.split.train,
            contrastive_weight=args.contrastive_weight, log_every=max(1, args.steps // 10),
            progress=progress)
        flops = pretrain_flops(pm_cfg, steps=args.steps, batch_size=args.batch_size,
                               content_dim=vectors.shape[1],
                               contrastive="contrastive" in history[-1])
        out = save_pretrained(params, pm_cfg, workdir / "prefixmem_pretrained", info={
            "sid_content_hash": prep.sids.content_hash(), "pretrain_flops": flops,
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed, "contrastive_weight": args.contrastive_weight,
            "final": history[-1]})
        metrics_path = workdir / "pretrain_metrics.jsonl"
        write_text(metrics_path, "".join(json.dumps(h) + "\n" for h in history))
    except USER_ERRORS as err:
        if not is_user_error(err):
            raise
        return report_error(err, "pretrain-mem")
    first, last = history[0], history[-1]
    print(f"pre-trained PrefixMem for {args.steps} steps ({flops:.3g} FLOPs): loss "
          f"{first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f}; checkpoint {out}; "
          f"use it with `sidjax train --prefixmem-init {out}`")
    return 0

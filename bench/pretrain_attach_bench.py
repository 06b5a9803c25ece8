"""Does a pre-trained PrefixMem help? Random init vs `sidjax pretrain-mem` init, same seed.

    python bench/pretrain_attach_bench.py --workdir runs/pab-synthetic            # demo catalog
    python bench/pretrain_attach_bench.py --data /work/prepared/scientific --workdir runs/pab-sci
    python bench/pretrain_attach_bench.py --workdir runs/pab-synthetic --tag lr01 \\
        --pretrained-set train.prefixmem_lr_mult=0.1                              # a variant

On one config (default: the demo preset, ``--set`` overrides both runs) it builds the SIDs once,
pre-trains PrefixMem alone (``sidjax.train.pretrain_mem.pretrain``: next code, content alignment and
co-engagement losses) and saves it, then trains two PrefixMem models from the same seed for the
same steps with validation every ``--eval-every`` steps: ``random`` (the usual init) and
``pretrained`` (``train.prefixmem_init``; ``--pretrained-set`` adds overrides to that run only,
e.g. ``train.freeze_decoder_steps=50``; ``--pretrain-tag`` keeps pre-training variants apart,
e.g. ``--contrastive-weight 0``). It prints both validation curves, the steps each run
needs to reach the random run's final validation level accuracies and loss, and the compute:
training FLOPs per step and the pre-training FLOPs (also as a number of training steps).
Everything lives in ``--workdir``; rerunning reuses the SIDs, the pre-trained checkpoint and the
finished runs (a run resumes from its checkpoints), so only new variants train.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from flax import nnx

from sidjax import config as config_lib
from sidjax import run as E
from sidjax.eval.compute import tokens_per_step, training_compute
from sidjax.eval.plots import read_metrics
from sidjax.nn import prefixmem_io as pmio
from sidjax.nn.model import resolve_prefixmem
from sidjax.train import pretrain_mem as pt


def steps_to_reach(records: list[dict], metric: str, target: float, mode: str) -> int | None:
    """First validated step whose ``metric`` is at least as good as ``target`` (None: never)."""
    for r in records:
        value = r.get(metric)
        if value is not None and (value >= target if mode == "max" else value <= target):
            return int(r["step"])
    return None


def validation_rows(workdir: Path) -> list[dict]:
    """The validated rows of a run's ``metrics.jsonl`` (in step order)."""
    return [r for r in read_metrics(workdir / "metrics.jsonl") if "valid/loss" in r]


def pretrain_once(prep: E.Prepared, out: Path, args, log) -> tuple[Path, dict]:
    """Pre-trains PrefixMem for ``prep`` into ``out`` (reused when it is there for these SIDs)."""
    if (out / "config.json").is_file() and pmio.read_info(out).get("sid_content_hash") == \
            prep.sids.content_hash():
        log(f"reusing the pre-trained PrefixMem {out}")
        return out, pmio.read_info(out)
    model_cfg = dataclasses.replace(prep.cfg.model, prefixmem=dataclasses.replace(
        prep.cfg.model.prefixmem, enabled=True))
    pm_cfg = resolve_prefixmem(model_cfg, prep.sids.codes_per_level)
    vectors = E.item_vectors(prep.data, prep.split, log)
    t0 = time.perf_counter()
    params, history = pt.pretrain(
        pm_cfg, prep.sids.codes, vectors, prep.counts, steps=args.pretrain_steps,
        lr=args.pretrain_lr, batch_size=args.pretrain_batch, sequences=prep.split.train,
        contrastive_weight=args.contrastive_weight, align_weight=args.align_weight,
        log_every=max(1, args.pretrain_steps // 5))
    seconds = time.perf_counter() - t0
    flops = pt.pretrain_flops(pm_cfg, steps=args.pretrain_steps, batch_size=args.pretrain_batch,
                              content_dim=vectors.shape[1],
                              contrastive="contrastive" in history[-1])
    info = {"sid_content_hash": prep.sids.content_hash(), "pretrain_flops": flops,
            "steps": args.pretrain_steps, "batch_size": args.pretrain_batch,
            "lr": args.pretrain_lr, "contrastive_weight": args.contrastive_weight,
            "align_weight": args.align_weight, "seconds": seconds, "history": history}
    pmio.save_pretrained(params, pm_cfg, out, info=info)
    for h in history:
        log("pre-training step {step}: ".format(**h) + " ".join(
            f"{k} {v:.4f}" for k, v in h.items() if k != "step"))
    return out, pmio.read_info(out)


def curves_table(runs: dict[str, list[dict]], metrics: list[str]) -> str:
    """A Markdown table: one row per validated step, one column per (run, metric)."""
    steps = sorted({r["step"] for rows in runs.values() for r in rows})
    head = [f"{name} {m.removeprefix('valid/')}" for m in metrics for name in runs]
    lines = ["| step | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for step in steps:
        by_run = {name: next((r for r in rows if r["step"] == step), {})
                  for name, rows in runs.items()}
        cells = [f"{by_run[name][m]:.4f}" if m in by_run[name] else "–"
                 for m in metrics for name in runs]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints curves, steps to reach, compute; writes ``summary.json``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--data", default="synthetic", help="data.source (synthetic or a folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of both runs (repeatable)")
    p.add_argument("--pretrained-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of the pre-trained run only (repeatable)")
    p.add_argument("--tag", default="", help="suffix of the pre-trained run's folder (variants)")
    p.add_argument("--pretrain-tag", default="",
                   help="suffix of the pre-trained checkpoint folder (pre-training variants)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-users", type=int, default=2000)
    p.add_argument("--pretrain-steps", type=int, default=500)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--pretrain-batch", type=int, default=256)
    p.add_argument("--contrastive-weight", type=float, default=0.1)
    p.add_argument("--align-weight", type=float, default=1.0)
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config_lib.apply_overrides(config_lib.load_config(args.config), [
        f"data.source={args.data}", *args.set, "model.prefixmem.enabled=true",
        f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
        f"train.eval_users={args.eval_users}"])
    prep = E.prepare(cfg, workdir, log)
    pretrained, info = pretrain_once(prep, workdir / "prefixmem_pretrained{}".format(
        f"-{args.pretrain_tag}" if args.pretrain_tag else ""), args, log)
    variants = {
        "random": cfg,
        "pretrained" + (f"-{args.tag}" if args.tag else ""): config_lib.apply_overrides(
            cfg, [f"train.prefixmem_init={pretrained}", *args.pretrained_set]),
    }
    runs, computes, seconds = {}, {}, {}
    for name, run_cfg in variants.items():
        t0 = time.perf_counter()
        model = E.train_model(dataclasses.replace(prep, cfg=run_cfg), workdir / name, log=log)
        seconds[name] = time.perf_counter() - t0
        runs[name] = validation_rows(workdir / name)
        records = read_metrics(workdir / name / "metrics.jsonl")
        computes[name] = training_compute(
            nnx.split(model)[1], model.pm_cfg, tokens=tokens_per_step(records),
            batch_size=run_cfg.train.batch_size, steps=run_cfg.train.steps)
    levels = len(prep.sids.codes_per_level)
    metrics = ["valid/loss"] + [f"valid/acc_l{lv}" for lv in range(1, levels + 1)]
    print(f"# {prep.data.name}: {prep.data.num_users} users, {prep.data.num_items} items, SIDs "
          f"{prep.sids.codes_per_level}; {args.steps} steps of batch {cfg.train.batch_size}, "
          f"validation on {args.eval_users or 'all'} users every {args.eval_every} steps\n")
    print(curves_table(runs, metrics) + "\n")
    (base, base_rows), (pre, pre_rows) = runs.items()
    reach = {}
    print(f"| target: {base}'s final value | {base} steps | {pre} steps |\n|---|---|---|")
    for m in metrics:
        mode = "min" if m == "valid/loss" else "max"
        target = base_rows[-1][m]
        reach[m] = {"target": target, base: steps_to_reach(base_rows, m, target, mode),
                    pre: steps_to_reach(pre_rows, m, target, mode)}
        print(f"| {m.removeprefix('valid/')} = {target:.4f} | {reach[m][base]} | "
              f"{reach[m][pre] if reach[m][pre] is not None else 'not reached'} |")
    per_step = computes[base].flops_per_step
    flops = info["pretrain_flops"]
    print(f"\ntraining: {per_step:.3g} FLOPs per step ({computes[base].flops_per_token:,} per "
          f"token x {computes[base].tokens_per_step:,} tokens), {args.steps} steps = "
          f"{computes[base].train_flops:.3g} FLOPs per run")
    print(f"pre-training: {info['steps']} steps of {info['batch_size']} items = {flops:.3g} FLOPs "
          f"= {flops / per_step:.1f} training steps ({100 * flops / computes[base].train_flops:.1f}"
          f"% of a run); final {json.dumps(info['history'][-1])}")
    print("wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + (
          f", pre-training {info['seconds']:.0f}" if "seconds" in info else "") + " (noisy)")
    summary = {"runs": runs, "reach": reach, "pretrain": info, "seconds": seconds,
               "compute": {k: c.to_dict() for k, c in computes.items()}}
    tmp = workdir / f".summary{args.tag}.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    tmp.replace(workdir / f"summary{('-' + args.tag) if args.tag else ''}.json")
    best = {name: {m: float(np.max([r[m] for r in rows])) for m in metrics[1:]}
            for name, rows in runs.items()}
    print("best validation accuracy per level: " + json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())

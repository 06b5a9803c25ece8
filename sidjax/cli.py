"""The `sidjax` command line: thin wrappers over sidjax.experiment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sidjax import config as config_lib

DESCRIPTION = """Generative recommendation with Semantic IDs and PrefixMem.

commands:
  demo      build SIDs on the embedded synthetic catalog, train the plain SID baseline and the
            PrefixMem model for the same steps, evaluate both against popularity, print a table
            and write a run folder (report.md, results.json, config, SIDs, checkpoints)
  compare   the same comparison for any config (--config PRESET|FILE)
  train     train one model (PrefixMem on or off by model.prefixmem.enabled) in --workdir;
            resumes from the latest checkpoint there
  eval      evaluate the latest checkpoint of --workdir; writes eval.json and prints a table
  prepare   read a dataset (MovieLens, Amazon P5, LC-Rec JSON, CSV/TSV table), split it and write
            a prepared folder (item table, content vectors, ArrayRecord sequences) usable as
            data.source
  pretrain-mem  pre-train PrefixMem alone (next code, content alignment, co-engagement)
  recommend top-k items (with scores and titles) for given histories, from a trained --workdir
  sids      build Semantic IDs for a dataset (residual k-means or RQ-VAE) and inspect them
"""


def _progress_factory(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    def factory(description: str, total: int):
        bar = tqdm(total=total, desc=description, unit="step" if "train" in description else "user",
                   dynamic_ncols=True, mininterval=1.0)

        def update(done: int, metrics) -> None:
            if "train" in description:
                bar.update(done - bar.n)
                if metrics:
                    bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
                if done >= total:
                    bar.close()
            else:
                bar.update(done)
                if bar.n >= total:
                    bar.close()

        return update

    return factory


def _config(args) -> config_lib.Config:
    return config_lib.apply_overrides(config_lib.load_config(args.config), args.set or [])


def _add_config_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--config", default=default, required=default is None,
                   help="a preset name (demo, tiny) or a configs/*.py file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.d_model=128 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `sidjax` command."""
    parser = argparse.ArgumentParser(prog="sidjax", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, default_config, workdir in (("demo", "demo", "runs/demo"),
                                          ("compare", None, None)):
        p = sub.add_parser(name, help=f"{name}: baseline vs PrefixMem vs popularity")
        _add_config_args(p, default_config)
        p.add_argument("--workdir", default=workdir, required=workdir is None)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("train", help="train one model in --workdir (resumes)")
    _add_config_args(p, None)
    p.add_argument("--workdir", required=True)
    p.add_argument("--quiet", action="store_true")
    from sidjax.data.prepare import add_prepare_parser

    add_prepare_parser(sub)
    from sidjax.nn.pretrain import add_pretrain_parser

    add_pretrain_parser(sub)
    from sidjax.sid.commands import add_sids_parser

    add_sids_parser(sub)
    p = sub.add_parser("recommend", help="recommend items for histories with a trained model")
    p.add_argument("--workdir", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--history", help="comma-separated item ids, oldest first")
    group.add_argument("--users", help="a text file with one history per line (ids separated by "
                                        "commas or spaces)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", help="write JSON lines here (atomically) instead of stdout")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("eval", help="evaluate the latest checkpoint in --workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--quiet", action="store_true")
    return parser


def _read_histories(args) -> list[list[str]]:
    if args.history is not None:
        return [[i.strip() for i in args.history.split(",") if i.strip()]]
    path = Path(args.users)
    if not path.is_file():
        raise FileNotFoundError(f"--users file {path} not found")
    return [line.replace(",", " ").split() for line in path.read_text().splitlines()]


def _recommend(args, experiment, log) -> int:
    from sidjax.decode.recommend import recommend_for_histories

    workdir = Path(args.workdir)
    cfg = config_lib.read_config(workdir / "config.json")
    prep = experiment.prepare(cfg, workdir, log)
    model = experiment.load_model(prep, workdir)
    recs = recommend_for_histories(model, prep, _read_histories(args), args.k)
    lines = "".join(json.dumps(r) + "\n" for r in recs)
    if args.out:
        tmp = Path(f"{args.out}.tmp")
        tmp.write_text(lines)
        tmp.replace(args.out)
        print(f"wrote {len(recs)} recommendation lists to {args.out}")
    else:
        print(lines, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sidjax` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        from sidjax.data.prepare import run_prepare

        return run_prepare(args)
    if args.command == "pretrain-mem":
        from sidjax.nn.pretrain import run_pretrain

        return run_pretrain(args)
    if args.command == "sids":
        from sidjax.sid.commands import run_sids

        return run_sids(args)
    from sidjax import experiment
    from sidjax.train.signals import Preempted

    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    progress = _progress_factory(args.quiet)
    try:
        if args.command in ("demo", "compare"):
            cfg = _config(args)
            results = experiment.run_compare(cfg, Path(args.workdir), log=log,
                                             progress_factory=progress)
            print(experiment.results_table(results, cfg.eval.top_k))
            print(f"\nrun folder: {args.workdir} (report.md, results.json)")
        elif args.command == "train":
            from sidjax.train.distributed import maybe_initialize

            maybe_initialize()
            cfg = _config(args)
            prep = experiment.prepare(cfg, Path(args.workdir), log)
            bar = progress(f"train {cfg.name}", cfg.train.steps) if progress else None
            experiment.train_model(prep, Path(args.workdir), log=log, progress=bar)
            print(f"trained {cfg.train.steps} steps; checkpoints in {args.workdir}/checkpoints")
        elif args.command == "recommend":
            return _recommend(args, experiment, log)
        elif args.command == "eval":
            workdir = Path(args.workdir)
            cfg = config_lib.read_config(workdir / "config.json")
            prep = experiment.prepare(cfg, workdir, log)
            model = experiment.load_model(prep, workdir)
            result = experiment.evaluate(model, prep, args.split)
            experiment._write_json(workdir / "eval.json", result)
            print(experiment.results_table({cfg.name: result}, cfg.eval.top_k))
            print(json.dumps({k: v for k, v in result.items() if k != "level_accuracy"}))
    except Preempted as stop:
        print(f"sidjax {args.command}: {stop}; run the same command again to resume",
              file=sys.stderr)
        return 0
    except (config_lib.ConfigError, ValueError, FileNotFoundError) as err:
        print(f"sidjax {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

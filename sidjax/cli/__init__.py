"""The `sidjax` command line: thin wrappers over :mod:`sidjax.run`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from sidjax import __version__
from sidjax import config as config_lib
from sidjax.cli.args import _Parser, add_config_args, at_least, config_from_args, positive_float  # noqa: F401
from sidjax.console import (  # noqa: F401 - re-exported: tests and callers use sidjax.cli.*
    MINILM_PACKAGE,
    PROGRESS_EVERY_S,
    PROGRESS_PARTS,
    TEXT_INSTALL,
    USER_ERRORS,
    _line_progress,
    _progress_factory,
    console_log,
    describe_error,
    is_user_error,
    report_error,
)
from sidjax.files import write_json, write_text

DESCRIPTION = "Generative recommendation with Semantic IDs and PrefixMem."


ERROR_STYLE = """errors:
  every command reports bad input as one line on stderr and exits 2:
    sidjax <command>: error: <file>:<line>: <what> (<how to fix>)
  SIDJAX_DEBUG=1 shows the traceback instead. Ctrl-C during training saves a checkpoint at the
  next step and exits 130 (rerun the same command to resume); a second Ctrl-C aborts at once.
"""

def _compare_models(args) -> dict[str, tuple[str, ...]]:
    """``--models`` / ``--model-set`` as ``{name: overrides}`` for ``run.run_compare``."""
    from sidjax.run import BUILTIN_COMPARE_MODELS

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    extra: dict[str, list[str]] = {}
    for item in args.model_set or []:
        name, sep, assignment = item.partition(":")
        if not sep or "=" not in assignment:
            raise config_lib.ConfigError(f"--model-set {item!r} is not NAME:KEY=VALUE, e.g. "
                                         "sasrec:model.kind=sasrec")
        if name.strip() not in names:
            raise config_lib.ConfigError(f"--model-set {item!r}: model {name.strip()!r} is not in "
                                         f"--models {','.join(names)}")
        extra.setdefault(name.strip(), []).append(assignment.strip())
    models = {}
    for name in names:
        if name not in BUILTIN_COMPARE_MODELS and name not in extra:
            raise config_lib.ConfigError(
                f"model {name!r} is not built in ({', '.join(BUILTIN_COMPARE_MODELS)}); give its "
                f"config with --model-set {name}:KEY=VALUE, e.g. {name}:model.kind=sasrec")
        models[name] = tuple(BUILTIN_COMPARE_MODELS.get(name, ())) + tuple(extra.get(name, ()))
    return models


def _tqdm_write(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `sidjax` command."""
    parser = _Parser(prog="sidjax", description=DESCRIPTION, epilog=ERROR_STYLE,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sidjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
    helps = {"demo": "the synthetic catalog end to end: SIDs, the plain SID baseline and PrefixMem "
                     "trained for the same steps, both against popularity; a table and a run "
                     "folder (report.md, results.json, config, SIDs, checkpoints)",
             "compare": "the same comparison for any config (--config PRESET|FILE), with seeds, "
                        "model lists and matched compute"}
    for name, default_config, workdir in (("demo", "demo", "runs/demo"),
                                          ("compare", None, None)):
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        add_config_args(p, default_config)
        p.add_argument("--workdir", default=workdir, required=workdir is None)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--seeds", type=at_least(1), default=1, metavar="N",
                       help="train every model with N seeds (train.seed, +1, ...) and report "
                            "mean and spread (default 1)")
        p.add_argument("--models", default="baseline,prefixmem",
                       help="comma-separated models to train; the first is the reference "
                            "(built in: baseline, prefixmem, and itemmem: the plain model "
                            "plus an item memory of PrefixMem's parameter count, the control "
                            "of 'more parameters'; others need --model-set)")
        p.add_argument("--model-set", action="append", metavar="NAME:KEY=VALUE",
                       help="a config override of one model, e.g. sasrec:model.kind=sasrec "
                            "(repeatable)")
        p.add_argument("--match-compute", action="store_true",
                       help="train each model for the steps that give it the training FLOPs of "
                            "the costliest one at train.steps (SID models only)")
    p = sub.add_parser("train", help="train one model (PrefixMem on or off by "
                       "model.prefixmem.enabled) in --workdir; resumes from its latest checkpoint")
    add_config_args(p, None)
    p.add_argument("--workdir", required=True)
    p.add_argument("--prefixmem-init", metavar="PATH",
                   help="start PrefixMem from a `sidjax pretrain-mem` checkpoint "
                        "(W/prefixmem_pretrained); same as --set train.prefixmem_init=PATH")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although train.* settings that shape the updates (learning "
                        "rate, batch size, seed, ...) differ from the run's config.json; the "
                        "change is recorded in config_changes.jsonl (train.steps and logging, "
                        "checkpoint, validation and data-feeding settings need no flag)")
    from sidjax.cli.prepare import add_prepare_parser

    add_prepare_parser(sub)
    from sidjax.cli.pretrain import add_pretrain_parser

    add_pretrain_parser(sub)
    from sidjax.cli.sids import add_sids_parser

    add_sids_parser(sub)
    p = sub.add_parser(
        "recommend", help="recommend items for histories with a trained model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Top-k items for each history, with scores and titles, printed as a table (the "
                    "history's items and titles, then rank, item, score, title).",
        epilog="score: for a SID model, the log-probability of the item's whole SID, the sum over\n"
               "SID levels of the log-softmax (over that level's codes) of its code given the\n"
               "history and its earlier codes, as ranked by the trie-constrained beam search; for\n"
               "SASRec (model.kind=sasrec), the log-softmax of the item's logit over all items.\n"
               "Both are <= 0, higher is better. --users shows progress (a bar in a terminal,\n"
               "else a line at every tenth); --quiet hides it.")
    p.add_argument("--workdir", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--history", help="comma-separated item ids, oldest first")
    group.add_argument("--users", help="a text file with one history per line (ids separated by "
                                        "commas or spaces)")
    p.add_argument("--k", type=at_least(1), default=10, help="items per history (default 10)")
    seen = p.add_mutually_exclusive_group()
    seen.add_argument("--exclude-history", dest="exclude_history", action="store_true",
                      default=True,
                      help="never recommend an item of the history (the default): the beam is "
                           "widened so that k items remain; fewer only when the catalog has "
                           "fewer than k items outside the history")
    seen.add_argument("--include-history", dest="exclude_history", action="store_false",
                      help="allow items of the history (as `sidjax eval` ranks: the standard "
                           "protocol never excludes)")
    p.add_argument("--out", help="write JSON lines here (atomically) instead of the table")
    p.add_argument("--json", action="store_true",
                   help="print JSON lines instead of the table (keys: history, history_titles, "
                        "items, scores, titles, score_kind, exclude_history)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p = sub.add_parser("eval", help="evaluate the best (or latest) checkpoint in --workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--checkpoint", choices=("best", "latest"),
                   help="which checkpoint (default: eval.checkpoint of the run, 'best': the best "
                        "validated one, else the latest)")
    p.add_argument("--beam-size", type=int,
                   help="beam width of the trie-constrained search (default: eval.beam_size of "
                        "the run); results other than the run's own test setting go to "
                        "eval_<split>_beam<N>.json, not eval.json")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (a bar in a terminal, else a line at every tenth of the "
                        "users or 30 s) and no log lines")
    return parser


def _read_histories(args) -> list[list[str]]:
    if args.history is not None:
        return [[i.strip() for i in args.history.split(",") if i.strip()]]
    path = Path(args.users)
    if not path.is_file():
        raise FileNotFoundError(f"--users file {path} not found")
    return [line.replace(",", " ").split() for line in path.read_text().splitlines()]


def _recommend(args, run, log, progress=None) -> int:
    from sidjax.decode.recommend import format_recommendations, recommend_for_histories

    workdir = Path(args.workdir)
    cfg = config_lib.read_config(workdir / "config.json")
    prep = run.prepare(cfg, workdir, log)
    model = run.load_model(prep, workdir)
    histories = _read_histories(args)
    bar = progress("recommend", len(histories)) \
        if progress and args.users is not None else None
    recs = recommend_for_histories(model, prep, histories, args.k,
                                   exclude_history=args.exclude_history,
                                   progress=(lambda n: bar(n, None)) if bar else None)
    short = [n for n, r in enumerate(recs, 1) if len(r["items"]) < args.k]
    if short:
        log(f"{len(short)} histor{'y' if len(short) == 1 else 'ies'} (e.g. number {short[0]}) got "
            f"fewer than --k {args.k} items: the catalog of {len(prep.data.item_ids)} items has "
            "no more outside the history")
    lines = "".join(json.dumps(r) + "\n" for r in recs)
    if args.out:
        write_text(args.out, lines)
        print(f"wrote {len(recs)} recommendation lists to {args.out}")
    elif args.json:
        print(lines, end="")
    else:
        print(format_recommendations(recs))
    return 0


def _command_name(args) -> str:
    """``prepare``, ``train``, ... or ``sids build`` / ``sids inspect``."""
    sub = getattr(args, "sids_command", None)
    return f"{args.command} {sub}" if args.command == "sids" and sub else args.command


def _run(args) -> int:
    """Runs the parsed command; returns its exit code. Errors propagate to :func:`main`."""
    if args.command == "prepare":
        from sidjax.cli.prepare import run_prepare

        return run_prepare(args)
    if args.command == "pretrain-mem":
        from sidjax.cli.pretrain import run_pretrain

        return run_pretrain(args)
    if args.command == "sids":
        from sidjax.cli.sids import run_sids

        return run_sids(args)
    from sidjax import run

    interactive = sys.stderr.isatty()  # progress bars with ETA; plain log lines otherwise
    log = (lambda _msg: None) if args.quiet else console_log(
        write=_tqdm_write if interactive else None)
    progress = _progress_factory(args.quiet, interactive)
    if args.command in ("demo", "compare"):
        cfg = config_from_args(args)
        models = _compare_models(args)
        for overrides in models.values():  # every model's own config, before any work
            config_lib.validate(config_lib.apply_overrides(cfg, list(overrides)))
        results = run.run_compare(cfg, Path(args.workdir), log=log,
                                         progress_factory=progress, models=models,
                                         seeds=args.seeds, match_compute=args.match_compute)
        print(run.results_table(results, cfg.eval.top_k))
        print(f"\nrun folder: {args.workdir} (report.md, results.json)")
    elif args.command == "train":
        from sidjax.train.distributed import maybe_initialize

        maybe_initialize()
        cfg = config_from_args(args)
        if args.prefixmem_init:
            cfg = config_lib.override(cfg, "train.prefixmem_init",
                                      str(Path(args.prefixmem_init).absolute()))
        prep = run.prepare(cfg, Path(args.workdir), log, progress)
        import jax

        bar = progress(f"train {cfg.name}", cfg.train.steps) \
            if progress and jax.process_index() == 0 else None
        summary: dict = {}
        run.train_model(prep, Path(args.workdir), log=log, progress=bar,
                               allow_config_change=args.allow_config_change, summary=summary)
        start, end = summary["start"], summary["end"]
        if end == start:
            print(f"{args.workdir} already trained to step {end}; nothing to do")
        else:
            print(f"trained {end - start} steps" + (f" (steps {start + 1}-{end} of "
                                                    f"{cfg.train.steps}, resumed from step "
                                                    f"{start})" if start else "")
                  + f"; checkpoints in {args.workdir}/checkpoints")
    elif args.command == "recommend":
        return _recommend(args, run, log, progress)
    elif args.command == "eval":
        workdir = Path(args.workdir)
        cfg = config_lib.read_config(workdir / "config.json")
        beam = cfg.eval.beam_size if args.beam_size is None else args.beam_size
        if beam < 1:
            raise ValueError(f"--beam-size must be >= 1, got {beam}")
        out = workdir / ("eval.json" if (args.split, beam) == ("test", cfg.eval.beam_size)
                         else f"eval_{args.split}_beam{beam}.json")
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, beam_size=beam))
        run.check_beam(cfg)
        prep = run.prepare(cfg, workdir, log)
        model = run.load_model(prep, workdir, which=args.checkpoint, log=log)
        bar = progress("eval", len(prep.split.eval_set(args.split))) if progress else None
        result = run.evaluate(model, prep, args.split,
                                     progress=(lambda n: bar(n, None)) if bar else None)
        write_json(out, result)
        log(f"wrote {out}")
        popularity = run.evaluate_popularity(prep, args.split)[0]
        print(run.results_table({cfg.name: result, "popularity": popularity},
                                       cfg.eval.top_k))
        print("(popularity: the most popular items; its acc L<l> is the prefix-frequency "
              "prior, the most frequent level-l code under the target's true prefix)")
        print(json.dumps({k: v for k, v in result.items() if k != "level_accuracy"}))
    return 0


TRAINING_COMMANDS = ("demo", "compare", "train")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sidjax` console script; returns the exit status.

    Every command shares one error style: an error of ordinary use (:func:`is_user_error`) prints
    ``sidjax <cmd>: error: <message>`` as one line and returns 2 (``SIDJAX_DEBUG=1`` re-raises
    it). Ctrl-C during training saves a checkpoint at the next step boundary and returns 130
    with one line; elsewhere it prints one line and returns 130. SIGTERM during training saves
    and returns 0. Usage errors exit 2 through ``SystemExit`` (argparse).
    """
    from sidjax.train.signals import Interrupted, Preempted

    args = build_parser().parse_args(argv)
    command = _command_name(args)
    try:
        return _run(args)
    except Interrupted as stop:
        print(f"sidjax {command}: {stop}; run the same command again to resume", file=sys.stderr)
        return 130
    except Preempted as stop:
        print(f"sidjax {command}: {stop}; run the same command again to resume",
              file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        if os.environ.get("SIDJAX_DEBUG") == "1":
            raise
        extra = "; rerun the same command to resume from the latest checkpoint, if any" \
            if args.command in TRAINING_COMMANDS else ""
        print(f"sidjax {command}: interrupted (Ctrl-C){extra}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if not is_user_error(err):
            raise
        return report_error(err, command)

"""Argument parsing shared by the `sidjax` commands: the one-line-error parser, value types and
the ``--config`` / ``--set`` pair."""

from __future__ import annotations

import argparse

from sidjax import config as config_lib


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``sidjax <cmd>: error: ...``, exit 2)."""

    def error(self, message: str):
        """Prints ``<prog>: error: <message> (see `<prog> --help`)`` and exits 2."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def at_least(minimum: float, kind: type = int):
    """An argparse ``type`` parsing ``kind`` and refusing values below ``minimum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a float > 0 (rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected float, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_config_args(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--config`` (required unless ``default``) and repeatable ``--set KEY=VALUE``."""
    p.add_argument("--config", default=default, required=default is None,
                   help="a preset name (demo, tiny) or a configs/*.py file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.d_model=128 (repeatable)")


def config_from_args(args: argparse.Namespace) -> config_lib.Config:
    """The ``--config`` preset or file with the ``--set`` overrides, validated
    (:func:`sidjax.config.validate`) before any work."""
    return config_lib.validate(
        config_lib.apply_overrides(config_lib.load_config(args.config), args.set or []))

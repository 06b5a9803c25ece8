"""Loading a config (a preset or ``configs/*.py``), ``--set`` overrides by dotted key, and
the JSON kept in run folders."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any

from sidjax.config.presets import PRESETS, apply_preset
from sidjax.config.schema import Config, ConfigError
from sidjax.files import write_json


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

    ``model.family=NAME`` applies a family or size preset (:func:`sidjax.config.presets.apply_preset`).
    """
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value, e.g. train.steps=100")
        if key.strip() == "model.family":
            cfg = dataclasses.replace(cfg, model=apply_preset(cfg.model, text.strip()))
            continue
        cfg = override(cfg, key.strip(), text.strip())
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
    write_json(path, to_dict(cfg))


def read_config(path: Path) -> Config:
    """Reads a config written by :func:`save_config`."""
    try:
        return from_dict(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err

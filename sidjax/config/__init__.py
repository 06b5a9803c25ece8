"""Frozen configuration dataclasses, named presets and command-line overrides.

A run is described by one :class:`Config`. Presets are plain functions returning a ``Config``;
``configs/*.py`` files define ``get_config()`` and may start from a preset. Overrides use dotted keys,
e.g. ``model.d_model=128`` or ``model.prefixmem.orders=1,2,3``; an unknown key or a value of the wrong
type fails at once with the list of valid keys.

Rooms: :mod:`~sidjax.config.schema` (the dataclasses), :mod:`~sidjax.config.presets` (run presets,
decoder families and sizes), :mod:`~sidjax.config.overrides` (loading, ``--set``, JSON) and
:mod:`~sidjax.config.validation` (range checks).
"""

from sidjax.config.overrides import (
    apply_overrides,
    from_dict,
    load_config,
    override,
    read_config,
    save_config,
    to_dict,
    valid_keys,
)
from sidjax.config.presets import (
    FAMILIES,
    PRESETS,
    SIZE_PRESETS,
    apply_preset,
    demo,
    resolve,
    tiny,
)
from sidjax.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ItemMemConfig,
    ModelConfig,
    PrefixMemConfig,
    SIDConfig,
    SIDRQVAEConfig,
    TrainConfig,
)
from sidjax.config.validation import beam_problem, check_beam, validate

__all__ = [
    "FAMILIES", "PRESETS", "SIZE_PRESETS", "Config", "ConfigError", "DataConfig", "EvalConfig",
    "ItemMemConfig", "ModelConfig", "PrefixMemConfig", "SIDConfig", "SIDRQVAEConfig",
    "TrainConfig", "apply_overrides", "apply_preset", "beam_problem", "check_beam", "demo", "from_dict",
    "load_config", "override", "read_config", "resolve", "save_config", "tiny", "to_dict",
    "valid_keys", "validate",
]

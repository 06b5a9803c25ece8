"""sidjax: generative recommendation with Semantic IDs and PrefixMem, in JAX/Flax.

The package is a row of rooms, each importing only the ones before it::

    config, files, console -> tokens, text -> data -> sid -> nn, parallel -> train -> decode
    -> eval -> run -> cli

``import sidjax`` is cheap: a room is imported on first use (``sidjax.nn.prefixmem``,
``sidjax.run.prepare``, ...). The reusable building blocks are named in :mod:`sidjax.nn`; the
workflow (prepare, train, evaluate, compare) in :mod:`sidjax.run`.
"""

import importlib

__version__ = "0.1.0"

ROOMS = ("config", "files", "console", "tokens", "text", "data", "sid", "nn", "parallel", "train",
         "decode", "eval", "run", "cli")
__all__ = [*ROOMS, "__version__"]


def __getattr__(name: str):
    if name in ROOMS:
        return importlib.import_module(f"sidjax.{name}")
    raise AttributeError(f"module 'sidjax' has no attribute {name!r}")

"""One interface over the SID quantizers: ``fit(vectors, cfg)``, ``encode(q, vectors)``, save / load.

The config type picks the method: :class:`~sidjax.sid.rqkmeans.RQKMeansConfig` (residual k-means) or
:class:`~sidjax.sid.rqvae.RQVAEConfig` (RQ-VAE). Quantizers are saved as one ``.npz`` (written to a
temporary file, then renamed) holding the method, the config as JSON and the arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from sidjax.sid import rqkmeans


def _module(obj):
    from sidjax.sid import rqvae

    if isinstance(obj, (rqkmeans.RQKMeansConfig, rqkmeans.RQKMeans)):
        return rqkmeans
    if isinstance(obj, (rqvae.RQVAEConfig, rqvae.RQVAE)):
        return rqvae
    raise TypeError(f"unknown quantizer or config type {type(obj).__name__}; use RQKMeansConfig or "
                    "RQVAEConfig")


def fit(vectors, cfg):
    """Fits the quantizer that ``cfg`` describes on ``vectors`` ``[N, D]``."""
    return _module(cfg).fit(vectors, cfg)


def fit_with_codes(vectors, cfg):
    """Fits and returns ``(quantizer, codes [N, L])`` of the fit items."""
    return _module(cfg).fit_with_codes(vectors, cfg)


def encode(quantizer, vectors) -> np.ndarray:
    """Codes ``[N, L]`` (int32) of ``vectors``."""
    return _module(quantizer).encode(quantizer, vectors)


def method_name(quantizer) -> str:
    """``"rqkmeans"`` or ``"rqvae"``."""
    return _module(quantizer).__name__.rsplit(".", 1)[-1]


def save_quantizer(quantizer, path) -> None:
    """Writes ``quantizer`` to ``path`` (``.npz``) atomically."""
    path = Path(path)
    arrays = _module(quantizer).to_arrays(quantizer)
    meta = {"method": method_name(quantizer), "config": dataclasses.asdict(quantizer.config)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __meta__=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_quantizer(path, dim: int | None = None):
    """Reads a quantizer written by :func:`save_quantizer`; with ``dim``, checks the input dimension."""
    from sidjax.sid import rqvae

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantizer file {path} not found; build SIDs with `sidjax sids build`")
    with np.load(path) as f:
        if "__meta__" not in f.files:
            raise ValueError(f"{path}: not a sidjax quantizer (no __meta__ entry)")
        meta = json.loads(str(f["__meta__"]))
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
    modules = {"rqkmeans": rqkmeans, "rqvae": rqvae}
    if meta.get("method") not in modules:
        raise ValueError(f"{path}: unknown method {meta.get('method')!r}; expected one of "
                         f"{sorted(modules)}")
    q = modules[meta["method"]].from_arrays(meta["config"], arrays)
    if dim is not None and q.dim != dim:
        raise ValueError(f"{path}: quantizer expects vectors of dim {q.dim}, got dim {dim}; use the "
                         "vectors it was built from or rebuild the SIDs")
    return q

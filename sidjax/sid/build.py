"""The one SID builder behind training runs (``run.prepare``) and ``sidjax sids build``.

:func:`build` fits a quantizer (residual k-means or RQ-VAE), makes the SIDs unique (zero-collision
reassignment, or an extra level numbering the items that share a SID) and computes the diagnostics.
:func:`build_from_settings` does the same from a run's :class:`~sidjax.config.SIDConfig`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np

from sidjax.sid import rqkmeans, rqvae
from sidjax.sid.diagnostics import sid_diagnostics
from sidjax.sid.reassign import reassign_collisions, split_full_prefixes
from sidjax.sid.table import SIDTable, add_collision_level, check_item_ids, collision_rate

METHODS = {"rqkmeans": (rqkmeans, rqkmeans.RQKMeansConfig), "rqvae": (rqvae, rqvae.RQVAEConfig)}


@dataclasses.dataclass(frozen=True)
class SIDBuild:
    """Result of :func:`build`.

    Attributes:
      table: the unique SIDs.
      quantizer: the fitted :class:`~sidjax.sid.rqkmeans.RQKMeans` or :class:`~sidjax.sid.rqvae.RQVAE`.
      method: ``"rqkmeans"`` or ``"rqvae"``.
      diagnostics: JSON-ready stats (see :func:`~sidjax.sid.diagnostics.sid_diagnostics`).
      vectors_sha256: digest of the input vectors (:func:`vectors_sha256`).
      fit_seconds: wall time of fitting the quantizer.
    """

    table: SIDTable
    quantizer: object
    method: str
    diagnostics: dict
    vectors_sha256: str
    fit_seconds: float

    @property
    def extra_level(self) -> bool:
        """Whether a collision level was appended to the quantizer's levels."""
        return self.table.num_levels > self.quantizer.config.levels


def vectors_sha256(vectors: np.ndarray) -> str:
    """sha256 of the float32 vectors (C order) and their shape."""
    x = np.ascontiguousarray(vectors, np.float32)
    h = hashlib.sha256(repr(x.shape).encode())
    h.update(x.tobytes())
    return h.hexdigest()


def quantizer_config(method: str, *, levels: int, codes: int | tuple[int, ...], seed: int = 0,
                     **options):
    """The :class:`~sidjax.sid.rqkmeans.RQKMeansConfig` or :class:`~sidjax.sid.rqvae.RQVAEConfig` of
    ``method``, checked; ``options`` are its other fields."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {sorted(METHODS)}")
    config_cls = METHODS[method][1]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"{method}: unknown settings {unknown}; valid: {sorted(names)}")
    cfg = config_cls(levels=levels, codes=codes, seed=seed, **options)
    cfg.codes_per_level()  # raises on L, K or estimator out of range
    return cfg


def build(vectors, item_ids, cfg, *, reassign: bool = True, split_prefixes: bool = False,
          progress=None) -> SIDBuild:
    """Fits the quantizer ``cfg`` describes on ``vectors`` ``[N, D]`` and makes unique SIDs.

    Args:
      vectors: float ``[N, D]`` item content vectors (finite).
      item_ids: the N unique external item ids.
      cfg: a :class:`~sidjax.sid.rqkmeans.RQKMeansConfig` or :class:`~sidjax.sid.rqvae.RQVAEConfig`.
      reassign: zero-collision reassignment (colliding items move to free last-level codes of their
        prefix; an extra level only for prefixes without free codes). ``False`` always appends the
        collision level.
      split_prefixes: with ``reassign``, first move items out of length-(L-1) prefixes holding more
        than ``K_L`` items (:func:`~sidjax.sid.reassign.split_full_prefixes`), so that no extra level
        is needed unless a length-(L-2) prefix holds more than ``K_{L-1} * K_L`` items.
      progress: RQ-VAE only: ``progress(steps_done, log_entry_or_None)`` after every training
        step (:func:`sidjax.sid.rqvae.fit`).
    """
    method = next((name for name, (_, cls) in METHODS.items() if isinstance(cfg, cls)), None)
    if method is None:
        raise TypeError(f"unknown quantizer config {type(cfg).__name__}; use RQKMeansConfig or "
                        "RQVAEConfig (see quantizer_config)")
    module = METHODS[method][0]
    x = rqkmeans.check_vectors(vectors)
    ids = check_item_ids(item_ids, len(x))
    ks = cfg.codes_per_level()
    levels = len(ks)
    t0 = time.perf_counter()
    quantizer, base = (module.fit_with_codes(x, cfg, progress=progress) if method == "rqvae"
                       else module.fit_with_codes(x, cfg))
    fit_seconds = time.perf_counter() - t0
    moved, cost, split = 0, 0.0, None
    if reassign:
        codes = base
        if split_prefixes and levels >= 2:
            split = split_full_prefixes(base, module.residuals_before(quantizer, x, base, levels - 2),
                                        quantizer.codebooks[-2], quantizer.codebooks[-1])
            codes = split.codes
        result = reassign_collisions(codes, module.residuals_before(quantizer, x, codes, levels - 1),
                                     quantizer.codebooks[-1])
        full, moved, cost = result.codes, result.moved, result.cost
    else:
        full = add_collision_level(base)
    per_level = ks + ((int(full[:, -1].max()) + 1,) if full.shape[1] > levels else ())
    recon = module.reconstruct(quantizer, full[:, :levels])
    diagnostics = {
        "method": method,
        "collision_rate": collision_rate(base),
        "max_collision_group": int(np.unique(base, axis=0, return_counts=True)[1].max()),
        "codes_used_per_level": [int(len(np.unique(base[:, i]))) for i in range(levels)],
        "unique_prefixes_per_level": [int(len(np.unique(base[:, : i + 1], axis=0)))
                                      for i in range(levels)],
    }
    diagnostics.update(sid_diagnostics(base, full, per_level, x, recon, moved=moved, move_cost=cost))
    if split is not None:
        diagnostics["items_split_off"] = split.moved
        diagnostics["split_cost"] = split.cost
    if method == "rqvae":
        diagnostics["final_loss"] = quantizer.log[-1]["loss"]
        diagnostics["final_recon"] = quantizer.log[-1]["recon"]
    table = SIDTable(np.asarray(full, np.int32), per_level, ids)
    return SIDBuild(table, quantizer, method, diagnostics, vectors_sha256(x), fit_seconds)


def build_from_settings(vectors, item_ids, sid) -> SIDBuild:
    """:func:`build` with the settings of a :class:`~sidjax.config.SIDConfig` (``cfg.sid`` of a run).

    Errors name the ``sid.*`` key to change.
    """
    codes = tuple(sid.codes_per_level) if sid.codes_per_level else sid.codes
    if sid.method == "rqkmeans":
        options = {"iters": sid.kmeans_iters, "balanced": sid.balanced, "slack": sid.slack}
    elif sid.method == "rqvae":
        options = dataclasses.asdict(sid.rqvae)
        options["hidden"] = tuple(options["hidden"])
    else:
        raise ValueError(f"sid.method={sid.method!r}; use one of {sorted(METHODS)} "
                         "(e.g. --set sid.method=rqvae)")
    try:
        cfg = quantizer_config(sid.method, levels=sid.levels, codes=codes, seed=sid.seed, **options)
    except ValueError as err:
        raise ValueError(f"sid config (sid.levels={sid.levels}, sid.codes={sid.codes}, "
                         f"sid.codes_per_level={tuple(sid.codes_per_level)}): {err}") from err
    return build(vectors, item_ids, cfg, reassign=sid.reassign, split_prefixes=sid.split_prefixes)


def build_sid_table(vectors: np.ndarray, item_ids: list[str], *, levels: int,
                    codes: int | tuple[int, ...], iters: int = 25, seed: int = 0,
                    reassign: bool = False, method: str = "rqkmeans",
                    **options) -> tuple[SIDTable, dict]:
    """Unique SIDs of ``vectors`` (see :func:`sidjax.sid.build.build`). Returns the table and the
    diagnostics.

    By default residual k-means codes get an extra collision level numbering the items sharing a
    SID. With ``reassign=True`` colliding items move to free last-level codes of their prefix
    (:mod:`sidjax.sid.reassign`) and the extra level is added only if some prefix has no free codes.
    ``options`` are other fields of :class:`~sidjax.sid.rqkmeans.RQKMeansConfig` (``balanced``,
    ``slack``, ``batch_size``, ...) or, with ``method="rqvae"``, of
    :class:`~sidjax.sid.rqvae.RQVAEConfig` (``iters`` is then ignored).
    """
    if method == "rqkmeans":
        options = {"iters": iters, **options}
    cfg = quantizer_config(method, levels=levels, codes=codes, seed=seed, **options)
    result = build(vectors, item_ids, cfg, reassign=reassign)
    return result.table, result.diagnostics

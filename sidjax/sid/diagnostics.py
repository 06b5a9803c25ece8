"""SID diagnostics: per-level utilization, perplexity, group sizes; collisions; reconstruction error."""

from __future__ import annotations

import numpy as np


def _group_sizes(codes: np.ndarray) -> np.ndarray:
    return np.unique(codes, axis=0, return_counts=True)[1]


def level_stats(codes: np.ndarray, codes_per_level) -> list[dict]:
    """Per level l: codes used, utilization (used / K_l), perplexity (exp of the entropy of the
    level-l code distribution: the effective number of codes), number of prefixes of length l, and
    the largest / median number of items sharing such a prefix."""
    codes = np.asarray(codes)
    out = []
    for lv, k in enumerate(codes_per_level):
        counts = np.bincount(codes[:, lv], minlength=int(k))
        p = counts[counts > 0] / len(codes)
        groups = _group_sizes(codes[:, : lv + 1])
        out.append({
            "level": lv + 1,
            "codes": int(k),
            "used": int(np.sum(counts > 0)),
            "utilization": float(np.sum(counts > 0) / k),
            "perplexity": float(np.exp(-np.sum(p * np.log(p)))),
            "prefixes": int(len(groups)),
            "largest_group": int(groups.max()),
            "median_group": float(np.median(groups)),
        })
    return out


def collision_stats(codes: np.ndarray) -> dict:
    """Share of items whose full SID is shared (``collision_rate``) and the largest shared group."""
    sizes = _group_sizes(np.asarray(codes))
    return {"collision_rate": float(np.sum(sizes[sizes > 1]) / np.sum(sizes)),
            "max_collision_group": int(sizes.max())}


def sid_diagnostics(base_codes: np.ndarray, final_codes: np.ndarray, codes_per_level,
                    vectors: np.ndarray | None = None, reconstruction: np.ndarray | None = None, *,
                    moved: int = 0, move_cost: float = 0.0) -> dict:
    """All diagnostics of one SID build, JSON-ready.

    Args:
      base_codes: quantizer codes ``[N, L]`` before any collision handling.
      final_codes: the unique SIDs of the table (possibly with an extra level).
      codes_per_level: code space size per level of ``final_codes``.
      vectors, reconstruction: inputs and their quantized reconstruction (adds ``reconstruction_mse``
        and ``relative_reconstruction_error``).
      moved, move_cost: items moved by zero-collision reassignment and their added squared distance.
    """
    base = collision_stats(base_codes)
    out = {
        "num_items": int(len(base_codes)),
        "collision_rate_before_dedup": base["collision_rate"],
        "max_collision_group_before_dedup": base["max_collision_group"],
        "items_moved": int(moved),
        "share_moved": float(moved / max(len(base_codes), 1)),
        "move_cost": float(move_cost),
        "unique_after": bool(collision_stats(final_codes)["collision_rate"] == 0.0),
        "codes_per_level": [int(k) for k in codes_per_level],
        "levels": level_stats(final_codes, codes_per_level),
    }
    if vectors is not None and reconstruction is not None:
        err = np.sum((np.asarray(vectors) - reconstruction) ** 2, axis=1)
        out["reconstruction_mse"] = float(np.mean(err) / np.asarray(vectors).shape[1])
        out["relative_reconstruction_error"] = float(np.sum(err) / np.sum(np.asarray(vectors) ** 2))
    return out


def stats_table(diagnostics: dict) -> str:
    """Collision summary line and a markdown table of per-level stats of SID diagnostics."""
    d = diagnostics
    lines = [f"collision rate before dedup {d['collision_rate_before_dedup']:.4f}, items moved "
             f"{d['items_moved']} ({d['share_moved']:.2%}, cost {d['move_cost']:.4g}), unique "
             f"{d['unique_after']}, relative reconstruction error "
             f"{d.get('relative_reconstruction_error', float('nan')):.4g}",
             "| level | K | used | utilization | perplexity | prefixes | largest group | median group |",
             "|---|---|---|---|---|---|---|---|"]
    for s in d["levels"]:
        lines.append(f"| {s['level']} | {s['codes']} | {s['used']} | {s['utilization']:.3f} | "
                     f"{s['perplexity']:.1f} | {s['prefixes']} | {s['largest_group']} | "
                     f"{s['median_group']:g} |")
    return "\n".join(lines)

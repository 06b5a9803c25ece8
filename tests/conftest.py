"""Test setup: 8 host CPU devices so sharding tests run on one machine, and the shared data path."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dataset(name: str) -> Path:
    """Path of a real dataset under ``../shared/data`` (or ``$SIDJAX_DATA_DIR``).

    Skips the test when the folder is missing, except under CI (``CI=true``), where a missing
    dataset is a failure.
    """
    root = Path(os.environ.get("SIDJAX_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    path = root / name
    if not path.is_dir():
        msg = f"dataset folder {path} not found (set SIDJAX_DATA_DIR or place ../shared/data)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    """Writes ``{name: text or bytes}`` under ``root`` (created if needed); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def assert_png(path: Path, min_width: int = 300, min_height: int = 200) -> None:
    """Asserts ``path`` is a readable PNG of at least the given size, not a blank canvas."""
    import matplotlib.image

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert min_width <= width <= 4000 and min_height <= height <= 4000, (path, width, height)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.01, f"{path} is blank"


def sid_layout(rng, num_items: int, ks):
    """A BOS + items layout: ``codes``/``levels`` int arrays like the data pipeline makes, with
    ``num_items`` random SIDs of the code counts ``ks``."""
    import numpy as np

    codes, levels = [0], [0]
    for _ in range(num_items):
        for level, k in enumerate(ks, 1):
            codes.append(int(rng.integers(k)))
            levels.append(level)
    return np.array(codes), np.array(levels)


def assert_beam_steps_match_full(model, arrays, beams, offsets) -> None:
    """Split-cache beam steps over ``beams [B, K, L]`` (each beam's SID) after ``arrays``'
    histories give the logits of the full forward of history + generated prefix, at every depth."""
    import jax.numpy as jnp
    import numpy as np

    b, k, num_levels = beams.shape
    t = arrays["tokens"].shape[1]
    _, history = model.prefill(jnp.asarray(arrays["tokens"]), jnp.asarray(arrays["codes"]),
                               jnp.asarray(arrays["levels"]))
    generated = None
    for depth in range(1, num_levels):
        window = beams[..., :depth]
        levels = np.broadcast_to(np.arange(1, depth + 1), window.shape)
        step, generated = model.beam_step(jnp.asarray(offsets[:depth] + window), jnp.asarray(window),
                                          jnp.asarray(levels), history, generated, depth)
        full = model(*(np.concatenate([np.repeat(arrays[name], k, 0), w.reshape(b * k, depth)], 1)
                       for name, w in (("tokens", offsets[:depth] + window), ("codes", window),
                                       ("levels", levels))))
        np.testing.assert_allclose(np.asarray(step).reshape(b * k, -1), full[:, t - 1 + depth],
                                   rtol=1e-4, atol=1e-4)

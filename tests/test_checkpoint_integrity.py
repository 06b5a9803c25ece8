"""Checkpoint integrity: every saved step carries a sha256 manifest that restoring verifies, so a
step with flipped bytes (same size), a missing file or a broken manifest is skipped for the
previous good one; a step without a manifest (an older run) still restores."""

import json
from pathlib import Path

import numpy as np
import pytest

from sidjax.train import checkpoint


def _state(seed):
    # random (incompressible) values: orbax stores them raw, so a flipped byte decodes silently
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((64, 48)).astype(np.float32),
              "b": rng.standard_normal(48).astype(np.float32)}
    return params, {"mu": {"w": np.zeros((64, 48), np.float32)}, "count": np.full((1,), seed, np.int32)}


def _save(directory, steps, best_metric=None, metrics=None):
    mngr = checkpoint.manager(directory, 5, best_metric, "max")
    for step in steps:
        params, opt_state = _state(step)
        checkpoint.save(mngr, step, params, opt_state, "h",
                        metrics=None if metrics is None else metrics[step])
    mngr.wait_until_finished()
    mngr.close()


def _largest_array_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _restore(directory, log):
    mngr = checkpoint.manager(directory, 5)
    try:
        params, opt_state = _state(0)
        return checkpoint.restore_latest(mngr, params, opt_state, "h", log)
    finally:
        mngr.close()


def test_every_step_gets_a_manifest_of_all_its_files(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _save(ckpt, [10, 20])
    for step in (10, 20):
        step_dir = ckpt / str(step)
        manifest = json.loads((step_dir / checkpoint.MANIFEST).read_text())
        files = sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*")
                       if p.is_file() and p.name != checkpoint.MANIFEST)
        assert sorted(manifest["files"]) == files and "_CHECKPOINT_METADATA" in files
        assert any(name.startswith("params/") for name in files)
        assert checkpoint.verify_manifest(step_dir) is True
        assert not [p for p in step_dir.iterdir() if p.name.startswith(".")]  # no temp files
    # restoring leaves the step folders as they were: the manifests still match
    assert _restore(ckpt, print)[0] == 20
    assert checkpoint.verify_manifest(ckpt / "10") and checkpoint.verify_manifest(ckpt / "20")


def test_flipped_byte_falls_back_to_the_previous_step(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _save(ckpt, [10, 20])
    damaged = _largest_array_file(ckpt / "20")
    size = damaged.stat().st_size
    _flip_byte(damaged)
    assert damaged.stat().st_size == size
    name = damaged.relative_to(ckpt / "20").as_posix()
    # the evaluation path (restore_chosen / restore_params) checks the same way, moving nothing
    messages = []
    step, params = checkpoint.restore_params(ckpt, _state(0)[0], "h", messages.append)
    assert step == 10 and any(name in m and "checkpoints/20" in m for m in messages)
    assert (ckpt / "20").is_dir()
    messages.clear()
    step, params, opt_state = _restore(ckpt, messages.append)
    assert step == 10
    want_params = _state(10)[0]
    np.testing.assert_array_equal(np.asarray(params["w"]), want_params["w"])
    assert int(opt_state["count"][0]) == 10
    [line] = [m for m in messages if "is damaged" in m]
    assert "checkpoints/20 is damaged and was skipped" in line
    assert f"{name}: sha256 differs" in line and "falling back to step 10" in line
    # training resumes from 10: the damaged step is kept aside (not deleted) and can be saved again
    [kept] = list((tmp_path / "damaged").iterdir())
    assert kept.name.startswith("20-") and (kept / name).is_file() and not (ckpt / "20").exists()
    assert any("moved damaged checkpoint" in m for m in messages)
    _save(ckpt, [20])
    assert _restore(ckpt, print)[0] == 20


@pytest.mark.parametrize("damage", ["missing file", "broken manifest"])
def test_missing_file_or_broken_manifest_is_damage(tmp_path, damage):
    ckpt = tmp_path / "checkpoints"
    _save(ckpt, [10, 20])
    if damage == "missing file":
        victim = _largest_array_file(ckpt / "20")
        victim.unlink()
        expect = f"{victim.relative_to(ckpt / '20').as_posix()} is missing"
    else:
        manifest = ckpt / "20" / checkpoint.MANIFEST
        manifest.write_text(manifest.read_text()[:50])
        expect = f"{checkpoint.MANIFEST} is unreadable"
    messages = []
    assert _restore(ckpt, messages.append)[0] == 10
    assert any("checkpoints/20 is damaged" in m and expect in m for m in messages), messages


def test_best_checkpoint_is_verified(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _save(ckpt, [10, 20, 30], "valid/x", {10: {"valid/x": 0.9}, 20: {"valid/x": 0.1}, 30: None})
    params = _state(0)[0]
    kw = dict(which="best", best_metric="valid/x", best_mode="max")
    assert checkpoint.restore_chosen(ckpt, params, "h", print, **kw)[::2] == (10, "best")
    _flip_byte(_largest_array_file(ckpt / "10"))
    messages = []
    step, got, used = checkpoint.restore_chosen(ckpt, params, "h", messages.append, **kw)
    assert (step, used) == (30, "latest")
    np.testing.assert_array_equal(np.asarray(got["w"]), _state(30)[0]["w"])
    assert any("checkpoints/10 is damaged" in m and "sha256 differs" in m for m in messages)


def test_all_steps_damaged_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _save(ckpt, [10, 20])
    for step in (10, 20):
        _flip_byte(_largest_array_file(ckpt / str(step)))
    messages = []
    with pytest.raises(ValueError, match=r"all 2 checkpoint\(s\) under .*checkpoints are damaged "
                                         r"\(steps \[10, 20\]"):
        _restore(ckpt, messages.append)
    assert [m.split(" is damaged")[0][-14:] for m in messages] == ["checkpoints/20",
                                                                   "checkpoints/10"]
    with pytest.raises(ValueError, match="are damaged"):
        checkpoint.restore_params(ckpt, _state(0)[0], "h", messages.append)


def test_step_without_manifest_is_restored_unverified(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _save(ckpt, [10, 20])
    (ckpt / "20" / checkpoint.MANIFEST).unlink()  # as saved by a run before manifests existed
    messages = []
    step, params, _ = _restore(ckpt, messages.append)
    assert step == 20
    np.testing.assert_array_equal(np.asarray(params["w"]), _state(20)[0]["w"])
    assert any(f"checkpoints/20 has no {checkpoint.MANIFEST}" in m and "unverified" in m
               for m in messages)

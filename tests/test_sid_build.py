import dataclasses
import json

import numpy as np
import pytest

from sidjax import config as config_lib
from sidjax.config import Config, SIDConfig, SIDRQVAEConfig
from sidjax.sid import rqkmeans
from sidjax.sid.build import build, build_from_settings, quantizer_config
from sidjax.sid.rqvae import RQVAEConfig
from sidjax.sid.table import add_collision_level

TINY_VAE = SIDRQVAEConfig(hidden=(16,), latent=4, steps=30, batch_size=64, reset_every=10)


def _blobs(n=240, k=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    return (centers[np.arange(n) % k] + rng.normal(size=(n, d))).astype(np.float32)


IDS = [f"i{i}" for i in range(240)]


def test_default_settings_reproduce_residual_kmeans_plus_collision_level():
    x = _blobs()
    sid = SIDConfig(levels=3, codes=4, kmeans_iters=6, seed=3)
    got = build_from_settings(x, IDS, sid)
    _, base = rqkmeans.fit_with_codes(x, rqkmeans.RQKMeansConfig(levels=3, codes=4, iters=6, seed=3))
    want = add_collision_level(base)
    assert np.array_equal(got.table.codes, want) and got.extra_level
    assert got.table.codes_per_level == (4, 4, 4, int(want[:, -1].max()) + 1)
    for key in ("collision_rate", "max_collision_group", "codes_used_per_level",
                "unique_prefixes_per_level", "reconstruction_mse", "levels", "unique_after"):
        assert key in got.diagnostics
    json.dumps(got.diagnostics)


def test_per_level_codes_and_reassignment_remove_the_extra_level():
    x = _blobs()
    sid = SIDConfig(levels=2, codes=4, codes_per_level=(6, 48), kmeans_iters=6, reassign=True)
    got = build_from_settings(x, IDS, sid)
    assert got.table.codes_per_level == (6, 48) and not got.extra_level
    assert len(np.unique(got.table.codes, axis=0)) == 240
    assert got.diagnostics["items_moved"] > 0 and got.diagnostics["levels"][0]["utilization"] == 1.0


def test_split_prefixes_removes_the_extra_level():
    x = np.concatenate([_blobs(200), _blobs(40, k=1, seed=2) + 20])  # one tight blob of 40 items
    ids = [str(i) for i in range(240)]
    sid = SIDConfig(levels=2, codes=4, codes_per_level=(6, 48), kmeans_iters=5, reassign=True)
    plain = build_from_settings(x, ids, sid)
    split = build_from_settings(x, ids, dataclasses.replace(sid, split_prefixes=True))
    assert plain.extra_level and not split.extra_level
    assert split.table.codes_per_level == (6, 48) and len(np.unique(split.table.codes, axis=0)) == 240
    assert split.diagnostics["items_split_off"] > 0


def test_balanced_setting_caps_codes():
    x = np.concatenate([_blobs(200), _blobs(40, k=1, seed=2) + 20])
    ids = [str(i) for i in range(240)]
    plain = build_from_settings(x, ids, SIDConfig(levels=1, codes=6, kmeans_iters=5))
    capped = build_from_settings(x, ids, SIDConfig(levels=1, codes=6, kmeans_iters=5, balanced=True))
    assert np.bincount(plain.table.codes[:, 0]).max() > 40
    assert np.bincount(capped.table.codes[:, 0]).max() <= 40


@pytest.mark.parametrize("estimator", ["ste", "rotation"])
def test_rqvae_setting(estimator):
    sid = SIDConfig(levels=2, codes=6, codes_per_level=(6, 48), method="rqvae", reassign=True,
                    split_prefixes=True, rqvae=dataclasses.replace(TINY_VAE, estimator=estimator))
    got = build_from_settings(_blobs(), IDS, sid)
    assert got.method == "rqvae" and got.quantizer.config.estimator == estimator
    assert got.quantizer.config.hidden == (16,) and len(got.quantizer.log) == 4
    assert len(np.unique(got.table.codes, axis=0)) == 240 and not got.extra_level
    assert got.diagnostics["levels"][0]["largest_group"] <= 48
    assert got.diagnostics["method"] == "rqvae" and np.isfinite(got.diagnostics["final_loss"])


def test_run_config_rqvae_defaults_match_the_quantizer():
    run, quant = SIDRQVAEConfig(), RQVAEConfig()
    for field in dataclasses.fields(run):
        assert getattr(run, field.name) == getattr(quant, field.name), field.name


def test_sid_keys_parse_from_the_command_line():
    cfg = config_lib.apply_overrides(Config(), ["sid.codes_per_level=32,32,64", "sid.reassign=true",
                                                "sid.method=rqvae", "sid.rqvae.estimator=ste",
                                                "sid.rqvae.hidden=64,32"])
    assert cfg.sid.codes_per_level == (32, 32, 64) and cfg.sid.reassign
    assert cfg.sid.rqvae.estimator == "ste" and cfg.sid.rqvae.hidden == (64, 32)
    assert config_lib.from_dict(json.loads(json.dumps(config_lib.to_dict(cfg)))) == cfg


@pytest.mark.parametrize("sid, match", [
    (SIDConfig(method="vq"), "sid.method='vq'"),
    (SIDConfig(levels=3, codes_per_level=(8, 8)), r"sid.codes_per_level=\(8, 8\).*gives 2 levels"),
    (SIDConfig(levels=0), "levels=0 out of range"),
    (SIDConfig(levels=2, codes=1), "out of range"),
    (SIDConfig(method="rqvae", rqvae=SIDRQVAEConfig(estimator="gumbel")), "estimator='gumbel'"),
    (SIDConfig(method="rqvae", rqvae=SIDRQVAEConfig(steps=0)), "steps=0 must be positive"),
    (SIDConfig(levels=2, codes=300), "at least as many items"),
])
def test_bad_settings_fail_with_the_key(sid, match):
    with pytest.raises(ValueError, match=match):
        build_from_settings(_blobs(), IDS, sid)


def test_bad_input():
    x = _blobs()
    cfg = quantizer_config("rqkmeans", levels=2, codes=4)
    bad = x.copy()
    bad[11, 0] = np.inf
    with pytest.raises(ValueError, match="first row 11"):
        build(bad, IDS, cfg)
    with pytest.raises(ValueError, match="duplicate item ids"):
        build(x, IDS[:-1] + ["i0"], cfg)
    with pytest.raises(ValueError, match="unknown settings"):
        quantizer_config("rqkmeans", levels=2, codes=4, steps=10)
    with pytest.raises(TypeError, match="RQKMeansConfig or RQVAEConfig"):
        build(x, IDS, SIDConfig())


def test_prepare_uses_the_run_settings(tmp_path):
    from sidjax.run import prepare

    cfg = config_lib.apply_overrides(config_lib.tiny(), [
        "sid.codes_per_level=16,16,32", "sid.reassign=true", "sid.kmeans_iters=5"])
    lines = []
    prep = prepare(cfg, tmp_path, log=lines.append)
    assert prep.sids.codes_per_level == (16, 16, 32)
    diag = json.loads((tmp_path / "sid_diagnostics.json").read_text())
    assert diag["unique_after"] and diag["method"] == "rqkmeans"
    assert diag["codes_per_level"] == [16, 16, 32] and len(diag["vectors_sha256"]) == 64
    assert any("| level | K |" in line for line in lines)

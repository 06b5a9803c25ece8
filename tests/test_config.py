import dataclasses

import pytest
from conftest import REPO_ROOT

from sidjax import config as C


@pytest.mark.parametrize("name", sorted(C.PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = C.load_config(name)
    C.save_config(cfg, tmp_path / "c.json")
    assert C.read_config(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py")))
def test_config_files_load(path):
    cfg = C.load_config(str(REPO_ROOT / "configs" / path))
    assert isinstance(cfg, C.Config)
    assert cfg.model.kind == ("sasrec" if path.endswith("_sasrec.py") else "sid")


@pytest.mark.parametrize("assignment, key, expected", [
    ("model.d_model=96", ("model", "d_model"), 96),
    ("train.learning_rate=1e-4", ("train", "learning_rate"), 1e-4),
    ("model.prefixmem.enabled=true", ("model", "prefixmem", "enabled"), True),
    ("model.prefixmem.orders=1,3", ("model", "prefixmem", "orders"), (1, 3)),
    ("data.source=/some/folder", ("data", "source"), "/some/folder"),
])
def test_overrides_parse_by_field_type(assignment, key, expected):
    cfg = C.apply_overrides(C.demo(), [assignment])
    value = cfg
    for part in key:
        value = getattr(value, part)
    assert value == expected
    assert dataclasses.replace(cfg) == cfg


@pytest.mark.parametrize("assignment, message", [
    ("model.dmodel=3", "unknown config key 'model.dmodel'; valid keys: .*model.d_model"),
    ("model=3", "unknown config key 'model'"),
    ("model.d_model=big", "model.d_model: expected int, got 'big'"),
    ("model.prefixmem.gate=maybe", "expected a bool"),
    ("train.steps", "not of the form key=value"),
])
def test_bad_overrides_fail_with_the_valid_keys(assignment, message):
    with pytest.raises(C.ConfigError, match=message):
        C.apply_overrides(C.demo(), [assignment])


def test_bad_config_file_names_the_problem(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(C.ConfigError, match="defines no get_config"):
        C.load_config(str(bad))
    with pytest.raises(C.ConfigError, match="neither a preset"):
        C.load_config(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  oops\n}")
    with pytest.raises(C.ConfigError, match="broken.json:2"):
        C.read_config(broken)

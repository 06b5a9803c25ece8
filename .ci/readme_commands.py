"""CI: run README's commands as written, on small inputs, so that a command README shows, or an
install step it leaves out, fails CI instead of a new user.

    python .ci/readme_commands.py --install-line   # prints the quick start's install line
    python .ci/readme_commands.py [--list]         # runs (or lists) every `sidjax ...` command

The commands are read from README's ```bash blocks: continuation lines are joined, ``# comments``
dropped, optional ``[...]`` parts left out and ``a|b`` alternatives taken as ``a``. They run in
order (later commands use the run folders of earlier ones) in a scratch folder whose ``configs/``
is this repository's and whose ``../shared/data`` holds small copies of the datasets folder
(``$SIDJAX_DATA_DIR``, else ``../shared/data`` beside the repository: the first
``SMALL_USERS`` users of each dataset, :func:`small_dataset`), with the user files README assumes
(``log.csv``, ``items.csv``, ``histories.txt``) written small. Training and pre-training get
``SMALL`` appended (2 steps, a small synthetic catalog); nothing else is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMALL_RUN = ["--set", "train.steps=2", "--set", "data.num_items=150", "--set",
             "data.num_users=160", "--set", "sid.codes=8", "--set", "eval.batch_size=64",
             "--set", "model.num_layers=1"]
SMALL = {"demo": SMALL_RUN, "compare": SMALL_RUN, "train": SMALL_RUN,
         "pretrain-mem": SMALL_RUN + ["--steps", "5"]}
SMALL_RQVAE = ["--steps", "20"]
SMALL_USERS = 100  # users kept of each dataset
USER_FILES = {
    "log.csv": "uid,iid,ts\n" + "".join(f"u{u},i{(u + k) % 6},{k}\n" for u in range(5)
                                         for k in range(4)),
    "items.csv": "iid,title,brand\n" + "".join(f"i{i},toy {i},acme\n" for i in range(6)),
    "histories.txt": "i3,i7,i1\ni2 i5\n",
}


def bash_blocks(text: str) -> list[list[str]]:
    """The lines of every ```bash block of a Markdown text."""
    return [block.splitlines() for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S)]


def _drop_optional(line: str) -> str:
    out, depth = [], 0
    for ch in line:
        depth += ch == "["
        if depth == 0:
            out.append(ch)
        depth -= ch == "]" and depth > 0
    return "".join(out)


def commands(text: str) -> list[str]:
    """Every ``sidjax ...`` command of README's bash blocks, as it would be run (module docstring).
    """
    found = []
    for lines in bash_blocks(text):
        joined, current = [], ""
        for line in lines:
            current += line.rstrip()
            if current.endswith("\\"):
                current = current[:-1] + " "
                continue
            joined.append(current)
            current = ""
        for line in joined:
            line = re.sub(r"\s+#\s.*$", "", _drop_optional(line)).strip()
            if line.startswith("sidjax "):
                words = [w.split("|")[0] if "|" in w else w for w in shlex.split(line)]
                if shlex.join(words) not in found:  # the quick start's demo is run once
                    found.append(shlex.join(words))
    return found


def install_line(text: str) -> str:
    """The quick start's install line: the first ``pip install`` line of README."""
    for lines in bash_blocks(text):
        for line in lines:
            if line.startswith("pip install"):
                return line.strip()
    raise SystemExit("README.md: no `pip install` line in a ```bash block")


def small(command: str) -> list[str]:
    """``command`` as argv with the small-input arguments appended."""
    argv = shlex.split(command)
    extra = list(SMALL.get(argv[1], []))
    if argv[1:3] == ["sids", "build"] and argv[argv.index("--method") + 1] == "rqvae":
        extra += SMALL_RQVAE
    return argv + extra


def small_dataset(src: Path, dst: Path, users: int = SMALL_USERS) -> None:
    """A copy of dataset folder ``src`` in ``dst`` that keeps the first ``users`` users (and,
    for LC-Rec JSON, the items they touch); files it does not shorten are linked."""
    dst.mkdir(parents=True)
    keep_items: set[str] = set()
    for path in sorted(src.iterdir(), key=lambda p: not p.name.endswith(".inter.json")):
        out = dst / path.name
        if path.name.endswith(".inter.json"):  # {"<user>": [item, ...]}, 0-based item indices
            inter = dict(list(json.loads(path.read_text(encoding="utf-8")).items())[:users])
            keep_items |= {str(i) for seq in inter.values() for i in seq}
            out.write_text(json.dumps(inter), encoding="utf-8")
        elif path.name.endswith(".item.json"):  # {"<item>": {...}}
            items = json.loads(path.read_text(encoding="utf-8"))
            out.write_text(json.dumps({k: v for k, v in items.items() if k in keep_items}),
                           encoding="utf-8")
        elif path.name == "sequential_data.txt":  # P5: "<user> <item> <item> ..." lines
            lines = path.read_bytes().splitlines(keepends=True)[:users]
            out.write_bytes(b"".join(lines))
        elif path.name == "u.data":  # MovieLens: "user<TAB>item<TAB>rating<TAB>time" lines
            rows = path.read_bytes().splitlines(keepends=True)
            out.write_bytes(b"".join(r for r in rows if int(r.split(b"\t", 1)[0]) <= users))
        else:
            out.symlink_to(path.resolve())


def _scratch(root: Path) -> Path:
    data = Path(os.environ.get("SIDJAX_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
    if not data.is_dir():
        raise SystemExit(f"datasets folder {data} not found (set SIDJAX_DATA_DIR)")
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        small_dataset(folder, root / "shared" / "data" / folder.name)
    work = root / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    for name, content in USER_FILES.items():
        (work / name).write_text(content)
    return work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install-line", action="store_true")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    text = (REPO / "README.md").read_text(encoding="utf-8")
    if args.install_line:
        print(install_line(text))
        return 0
    todo = commands(text)
    if args.list:
        print("\n".join(shlex.join(small(c)) for c in todo))
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        work = _scratch(Path(tmp))
        for command in todo:
            t0 = time.perf_counter()
            done = subprocess.run(small(command), cwd=work, capture_output=True, text=True,
                                  timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
            if done.returncode != 0:
                print(f"README command failed (exit {done.returncode}): {command}\n"
                      f"{(done.stdout + done.stderr)[-4000:]}", file=sys.stderr)
                return 1
            print(f"ok {time.perf_counter() - t0:5.1f} s  {command}", flush=True)
    print(f"{len(todo)} README commands ran in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

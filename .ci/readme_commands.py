"""CI: run README's commands as written, on small inputs, so that a command README shows, or an
install step it leaves out, fails CI instead of a new user.

    python .ci/readme_commands.py --install-line   # prints the quick start's install line
    python .ci/readme_commands.py [--list]         # runs (or lists) every `sidjax ...` command

The commands are read from README's ```bash blocks: continuation lines are joined, ``# comments``
dropped, optional ``[...]`` parts left out and ``a|b`` alternatives taken as ``a``. They run two at
a time, each after the earlier ones whose run folders it uses, in a scratch folder whose ``configs/``
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
             "--set", "model.num_layers=1", "--set", "train.batch_size=16"]
SMALL = {"demo": SMALL_RUN, "compare": SMALL_RUN, "train": SMALL_RUN,
         "pretrain-mem": SMALL_RUN + ["--steps", "5"]}
SMALL_RQVAE = ["--steps", "20"]
SMALL_USERS = 50  # users kept of each dataset
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
    if argv[1:3] == ["sids", "build"] and "--method" in argv and \
            argv[argv.index("--method") + 1] == "rqvae":
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


OUTPUT_FLAGS = ("--workdir", "--out")


def dependencies(todo: list[str]) -> list[set[int]]:
    """For each command, the earlier commands it needs: those whose ``--workdir`` / ``--out``
    path it names (as a word, a ``KEY=PATH`` value, or a path below it) or writes too."""
    outputs, needs = [], []
    for command in todo:
        argv = shlex.split(command)
        mine = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_FLAGS}
        words = {part for a in argv for part in a.split("=")}
        needs.append({i for i, theirs in enumerate(outputs)
                      if theirs & mine or any(w == o or w.startswith(o + "/")
                                              for w in words for o in theirs)})
        outputs.append(mine)
    return needs


def run_all(todo: list[str], work: Path, parallel: int) -> int:
    """Runs ``todo`` in ``work``, up to ``parallel`` at a time, each after the commands it needs
    (:func:`dependencies`), in README order otherwise; stops at the first failure."""
    needs, done, running, failed = dependencies(todo), set(), {}, None
    env = {**os.environ, "MPLBACKEND": "Agg"}
    while len(done) < len(todo) and failed is None:
        for i, command in enumerate(todo):
            if len(running) < parallel and i not in done and i not in running \
                    and needs[i] <= done:
                log = tempfile.TemporaryFile("w+")
                running[i] = (subprocess.Popen(small(command), cwd=work, stdout=log,
                                               stderr=subprocess.STDOUT, text=True, env=env),
                              log, time.perf_counter())
        time.sleep(0.2)
        for i, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[i]
            if proc.returncode != 0:
                log.seek(0)
                print(f"README command failed (exit {proc.returncode}): {todo[i]}\n"
                      f"{log.read()[-4000:]}", file=sys.stderr)
                failed = i
            else:
                done.add(i)
                print(f"ok {time.perf_counter() - t0:5.1f} s  {todo[i]}", flush=True)
            log.close()
    for proc, log, _ in running.values():
        proc.wait()
        log.close()
    return 1 if failed is not None else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install-line", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--parallel", type=int, default=2,
                        help="commands run at once (default 2: XLA compiles on one core)")
    args = parser.parse_args()
    text = (REPO / "README.md").read_text(encoding="utf-8")
    if args.install_line:
        print(install_line(text))
        return 0
    todo = commands(text)
    if args.list:
        for command, need in zip(todo, dependencies(todo)):
            print(shlex.join(small(command)) + (f"   # after {sorted(need)}" if need else ""))
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        code = run_all(todo, _scratch(Path(tmp)), args.parallel)
    if code == 0:
        print(f"{len(todo)} README commands ran in {time.perf_counter() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())

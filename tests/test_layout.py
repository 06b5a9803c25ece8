"""The package's imports flow one way: config -> tokens / text -> data -> sid -> nn / parallel ->
train -> decode -> eval -> run -> cli (every `sidjax` import, at any depth, read with `ast`).

``KNOWN`` lists the imports against the flow and the circles still on main, to be removed by the
layout refactor (issue 16); a new one fails, and so does a listed one that is gone (delete its line).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sidjax"
ROOMS = {"config": 0, "console": 0, "files": 0, "tokens": 1, "text": 1, "data": 2, "sid": 3,
         "nn": 4, "parallel": 4, "train": 5, "decode": 6, "eval": 7, "run": 8,
         "cli": 9}
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: sidjax modules it imports}``; ``from sidjax.x import y`` counts as module
    ``sidjax.x.y`` when that is a module, else ``sidjax.x``."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                    (node.module or "").split(".")[0] == "sidjax":
                found |= {known(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {known(a.name) for a in node.names if a.name.split(".")[0] == "sidjax"}
        graph[name] = found - {name, "sidjax"}
    return graph


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Imports of a module from a room later in the flow than its own."""
    return {(a, b) for a, targets in graph.items() for b in targets
            if ROOMS.get(_room(b), -1) > ROOMS.get(_room(a), 99)}


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The import circles: strongly connected sets of two or more modules (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while v not in group:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
            if len(group) > 1:
                found.add(frozenset(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_new_import_against_the_flow():
    assert upward_imports(import_graph()) == KNOWN_UPWARD


def test_no_new_import_circle():
    assert circles(import_graph()) == KNOWN_CIRCLES


def test_the_checks_see_a_circle_and_an_upward_import():
    graph = {"sidjax.data.a": {"sidjax.train.b"}, "sidjax.train.b": {"sidjax.data.a"},
             "sidjax.eval.c": set()}
    assert circles(graph) == {frozenset({"sidjax.data.a", "sidjax.train.b"})}
    assert upward_imports(graph) == {("sidjax.data.a", "sidjax.train.b")}


MAX_LINES = 450


def test_no_module_is_over_450_lines_without_a_reason_at_its_top():
    """A longer module says why in its docstring (``Longer than 450 lines because ...``)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and "Longer than 450 lines because" not in doc:
            long.append(f"{path.relative_to(PACKAGE.parent)} ({text.count(chr(10))} lines)")
    assert not long, "split these modules or state the reason at their top: " + ", ".join(long)


def test_every_room_is_in_the_flow():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert rooms == set(ROOMS)


def test_argparse_lives_only_in_the_cli():
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            if "argparse" in names:
                users.append(str(path.relative_to(PACKAGE.parent)))
    assert not users, f"argparse outside sidjax/cli: {users}"

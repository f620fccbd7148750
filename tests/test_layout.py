"""The house rules of the code base, read from the source as imports draw it (no code is run):
no import circles among project modules (function-level imports included), no module using
another module's ``_private`` name, jobs/ holding only its entry scripts and concept subpackages,
no function under jobs/ longer than 80 lines, and no file or folder named after an issue."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "ingest", "samsp", "bench")
ENTRY_SCRIPTS = {"__init__.py", "demo.py", "evaluate.py", "manifest.py", "segment.py", "sweep.py",
                 "train.py", "models.py"}
MAX_FUNCTION_LINES = 80


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import in the file, at
    any depth (function-level ones included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    out.append((sub, [], node.lineno))
                elif target in mods:
                    out.append((target, [alias.name], node.lineno))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_sees_a_circle_and_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circles():
    mods = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, _, _ in imports_of(mod, path, mods):
            # a package's own __init__ re-exporting its modules is the API, not a circle
            if target != mod and not mod.startswith(target + "."):
                graph[mod].add(target)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def private_definitions(tree: ast.AST) -> set[str]:
    """``_names`` a module defines: functions, classes, module names and ``self._x`` fields."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_private_names_across_modules():
    mods = project_modules()
    trees = {mod: ast.parse(path.read_text()) for mod, path in mods.items()}
    defined = {mod: private_definitions(tree) for mod, tree in trees.items()}
    offences = []
    for mod, path in mods.items():
        where = path.relative_to(REPO)
        for target, names, line in imports_of(mod, path, mods):
            offences += [f"{where}:{line} takes {target}.{n}"
                         for n in names if n.startswith("_") and not n.startswith("__")]
        # `obj._name` where obj is not this class's own instance and only another module
        # defines ``_name``
        for node in ast.walk(trees[mod]):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr not in defined[mod]
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and any(node.attr in names for other, names in defined.items() if other != mod)):
                offences.append(f"{where}:{node.lineno} uses .{node.attr} of another module")
    assert not offences, "\n".join(offences)


def test_jobs_top_level_holds_entry_scripts_and_subpackages():
    jobs = REPO / "jobs"
    files = {p.name for p in jobs.glob("*.py")}
    assert files <= ENTRY_SCRIPTS, sorted(files - ENTRY_SCRIPTS)
    for sub in (p for p in jobs.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (sub / "__init__.py").exists(), sub
        assert f"{sub.name}.py" not in files, f"jobs/{sub.name}/ clashes with jobs/{sub.name}.py"
        assert not (REPO / f"{sub.name}.py").exists() and sub.name not in PACKAGES


@pytest.mark.parametrize("pkg", ["jobs"])
def test_functions_are_short(pkg):
    long = []
    for path in sorted((REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.name} {n} lines")
    assert not long, "\n".join(long)


def test_nothing_is_named_after_an_issue():
    tracked = [p for p in REPO.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts
               and "out" not in p.parts[:1]]
    named = [str(p.relative_to(REPO)) for p in tracked if re.search(r"issue[_-]?\d", p.name, re.I)]
    assert not named, named

"""The codebase's own rules (DEVELOPERS' brief), checked on the source: where Ray may be started
and a process exited, that every entry script's docstring holds its command, and that no
function's local name hides a module-level import (a ``storage = mkdtemp()`` in a function that
later calls ``storage.write_text_atomic`` fails only at the end of a long benchmark)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("rayhash", "jobs", "serve", "benchmarks", "tests")

# Entry points that may start Ray or end the process: the CLI's and jobs' helper, and `python -m rayhash`.
MAY_START_RAY = {"rayhash/ray_utils.py"}
MAY_EXIT = {"rayhash/__main__.py"}


def _python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _calls(tree: ast.AST, names: set[str]) -> list[int]:
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and _dotted(n.func) in names]


def test_library_never_starts_ray_or_exits():
    found = []
    for path in _python_files("rayhash"):
        rel, tree = path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())
        if rel not in MAY_START_RAY:
            found += [f"{rel}:{line} starts Ray" for line in _calls(tree, {"ray.init"})]
        if rel not in MAY_EXIT:
            found += [f"{rel}:{line} exits" for line in _calls(tree, {"sys.exit", "exit", "os._exit", "quit"})]
    assert not found, "library code must leave Ray and the process to its caller:\n" + "\n".join(found)


@pytest.mark.parametrize("script", [p.name for p in _python_files("jobs")])
def test_job_docstring_holds_its_command(script):
    doc = ast.get_docstring(ast.parse((ROOT / "jobs" / script).read_text())) or ""
    assert f"python jobs/{script}" in doc, f"jobs/{script}: its docstring must show the command that runs it"


def test_serve_app_docstring_holds_its_command():
    doc = ast.get_docstring(ast.parse((ROOT / "serve" / "app.py").read_text())) or ""
    assert "serve run serve/config.yaml" in doc


def _imported_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _bound_names(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    args = func.args
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    return names | {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def test_no_local_name_hides_a_module_import():
    found = []
    for path in _python_files(*SOURCES):
        tree = ast.parse(path.read_text())
        imported = _imported_names(tree)
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for name in sorted(_bound_names(func) & imported):
                    found.append(f"{path.relative_to(ROOT)}:{func.lineno} {func.name}() binds {name!r}")
    assert not found, "rename these locals or parameters; they hide the module's import:\n" + "\n".join(found)


def test_the_shadowing_check_sees_a_shadowed_import():
    tree = ast.parse(
        "from rayhash import storage\n\ndef main():\n    storage = '/tmp/x'\n    storage.write_text_atomic\n"
    )
    func = tree.body[1]
    assert _bound_names(func) & _imported_names(tree) == {"storage"}

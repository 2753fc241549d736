"""The pure stages import no Ray, and the index stage imports nothing above it (serve, the Ray
Data encode pipeline): each is checked in a fresh interpreter, where nothing was imported yet."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = "rayhash.index, rayhash.encode.codeset, rayhash.codespec.binary, rayhash.methods, rayhash.models"
INDEX_MODULES = sorted(
    f"rayhash.index.{p.stem}" for p in (ROOT / "rayhash" / "index").glob("*.py") if p.stem != "__init__"
)
ABOVE_INDEX = ("ray", "rayhash.serve", "rayhash.encode.pipeline")


def imported_after(statement: str) -> set[str]:
    """The names in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{statement}; import sys; print('\\n'.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(out.stdout.split())


def loaded_under(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_the_pure_stages_do_not_import_ray():
    subprocess.run(
        [sys.executable, "-c", f"import {PURE}; import sys; assert 'ray' not in sys.modules"],
        cwd=ROOT,
        check=True,
        timeout=120,
    )


@pytest.mark.parametrize("module", INDEX_MODULES)
def test_an_index_module_imports_nothing_above_it(module):
    modules = imported_after(f"import {module}")
    assert module in modules  # the check saw the import happen
    for above in ABOVE_INDEX:
        assert not loaded_under(modules, above), f"{module} imports {loaded_under(modules, above)[:3]}"


def test_the_import_check_sees_a_module_above_the_index():
    # What the check above would report if an index module imported the serve stage.
    modules = imported_after("import rayhash.serve.fanout")
    assert loaded_under(modules, "ray") and loaded_under(modules, "rayhash.serve")


@pytest.mark.parametrize("path", sorted((ROOT / "rayhash" / "index").glob("*.py")), ids=lambda p: p.name)
def test_no_index_source_names_a_module_above_it(path):
    # Also imports inside functions, which a fresh import does not run.
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # `from rayhash.encode import pipeline` names the module too
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            assert not any(name == a or name.startswith(a + ".") for a in ABOVE_INDEX), f"{path.name} imports {name}"

"""infra/docker's images agree with what CI tests, checked without a Docker daemon: the base tag's
Ray and Python are constraints.txt's, every pip install is constrained by it, the dependency list
is pyproject's, and the GPU image swaps faiss-cpu for pyproject's gpu extra at the same version.
The shell in each RUN that computes a list or a version is run here, on this checkout."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "infra" / "docker"
IMAGES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
APP = "/home/ray/rayhash"  # the manifests run /home/ray/rayhash/jobs/... (tests/test_infra.py)


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name.lower())] = version.strip()
    return out


def frozen_python() -> str:
    m = re.search(r"^# Frozen under Python (\d+\.\d+)\b", (REPO / "constraints.txt").read_text(), re.M)
    assert m, "constraints.txt says which Python it was frozen under"
    return m.group(1)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def at_least(requirement: str) -> tuple[str, tuple[int, ...]]:
    """``name>=X.Y`` (the form pyproject uses) as ``(name, (X, Y))``."""
    name, version = re.fullmatch(r"([\w.-]*)>=([\d.]+)", requirement.replace(" ", "")).groups()
    return name, tuple(map(int, version.split(".")))


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, runs of blanks made one
    space, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), " ".join(m.group(2).split())) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.M)]


def runs(path: Path) -> list[str]:
    return [args for op, args in instructions(path) if op == "RUN"]


@pytest.mark.parametrize("kind", IMAGES)
def test_base_is_rays_image_of_the_pinned_ray_and_python(kind):
    (base,) = [args for op, args in instructions(IMAGES[kind]) if op == "FROM"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)(-gpu|-cu\d+)?", base)
    assert m, f"{kind}: FROM {base} is not a rayproject/ray:<ray>-py<python>[-gpu] tag"
    ray, python = m.group(1), f"{m.group(2)}.{m.group(3)}"
    assert ray == pins()["ray"], f"{kind}: base Ray {ray}, constraints.txt pins {pins()['ray']}"
    assert python == frozen_python(), (
        f"{kind}: base Python {python}, constraints.txt was frozen under {frozen_python()}"
    )
    assert version(python) >= at_least(pyproject()["project"]["requires-python"])[1], "requires-python"
    assert pyproject()["tool"]["ruff"]["target-version"] == f"py{m.group(2)}{m.group(3)}"
    assert (m.group(4) is not None) == (kind == "gpu"), f"{kind}: {base}"


@pytest.mark.parametrize("kind", IMAGES)
def test_installs_pyprojects_dependencies_and_rayhash_under_the_constraints(kind):
    steps = runs(IMAGES[kind])
    installs = [s for s in steps if "pip install" in s]
    for step in installs:
        assert "-c constraints.txt" in step, f"{kind}: unconstrained install: {step}"
    assert [op for op, _ in instructions(IMAGES[kind]) if op == "WORKDIR"] == ["WORKDIR"]
    assert dict(instructions(IMAGES[kind]))["WORKDIR"] == APP
    (deps,) = [s for s in installs if "-r /tmp/requirements.txt" in s]
    # The step's own Python one-liner writes the list: run it on this checkout.
    (script,) = re.findall(r'python -c "([^"]+)"', deps)
    listed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert listed.stdout.split("\n")[:-1] == pyproject()["project"]["dependencies"]
    assert installs[-1].startswith("pip install --no-cache-dir --no-deps -c constraints.txt ."), "rayhash last"


def test_gpu_image_swaps_faiss_cpu_for_the_gpu_extra_at_the_same_version():
    (swap,) = [s for s in runs(IMAGES["gpu"]) if "faiss" in s]
    assert swap.startswith("pip uninstall -y faiss-cpu && "), "faiss-cpu goes before faiss-gpu writes the module"
    (wanted,) = [at_least(r) for r in pyproject()["project"]["optional-dependencies"]["gpu"]]
    (spec,) = re.findall(r'"(faiss-gpu==[^"]+)"', swap)
    echo = subprocess.run(["bash", "-c", f'echo "{spec}"'], cwd=REPO, capture_output=True, text=True, check=True)
    faiss = pins()["faiss-cpu"]
    assert echo.stdout.strip() == f"{wanted[0]}=={faiss}" and version(faiss) >= wanted[1]
    assert not [s for s in runs(IMAGES["cpu"]) if "faiss" in s], "the CPU image keeps faiss-cpu"


def test_build_context_leaves_the_virtualenv_and_history_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)
    for needed in ("pyproject.toml", "constraints.txt", "rayhash", "jobs", "configs", "serve", "README.md"):
        assert needed not in ignored and (REPO / needed).exists(), needed

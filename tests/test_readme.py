"""The README's results tables and docs/configuration.md's key tables agree with what they are made
from (benchmarks/results/*.json, the config dataclasses), and the check that says so catches a
changed number."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "readme_tables.py"


def _tables():
    spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_readme_and_docs_agree_with_results_and_configs():
    done = _run("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_results_block_is_in_the_readme():
    text = (ROOT / "README.md").read_text()
    for name in ("quality", "encode", "search"):
        assert f"<!-- results:{name}:start -->" in text and f"<!-- results:{name}:end -->" in text


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    (tmp_path / "benchmarks").mkdir()
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def test_check_catches_a_changed_score_and_the_rewrite_fixes_it(repo_copy: Path):
    path = repo_copy / "benchmarks" / "results" / "fmnist_map.json"
    result = json.loads(path.read_text())
    itq16 = [r for r in result["rows"] if r["method"] == "itq" and r["bits"] == 16]
    itq16[0]["map_at_1000"] += 0.3  # moves the mean by 0.1
    path.write_text(json.dumps(result))
    runs = [r["map_at_1000"] for r in itq16]
    expected = _tables().mean_sd(runs)

    stale = _run("--check", "--root", str(repo_copy))
    assert stale.returncode == 1 and "README.md: results:quality" in stale.stderr, stale.stderr
    assert expected not in (repo_copy / "README.md").read_text()  # --check changes nothing

    assert _run("--root", str(repo_copy)).returncode == 0
    assert expected in (repo_copy / "README.md").read_text()
    assert _run("--check", "--root", str(repo_copy)).returncode == 0


def test_check_catches_a_changed_search_figure(repo_copy: Path):
    path = repo_copy / "benchmarks" / "results" / "search.json"
    result = json.loads(path.read_text())
    result["rows"] = [{**r, "recall_at_100": 0.5} if r["index"] == "ivf" else r for r in result["rows"]]
    path.write_text(json.dumps(result))
    stale = _run("--check", "--root", str(repo_copy))
    assert stale.returncode == 1 and "README.md: results:search" in stale.stderr, stale.stderr


def test_a_method_without_rows_at_a_length_gets_a_dash():
    t = _tables()
    rows = [
        {"method": "dsch", "bits": 32, "map_at_1000": 0.8, "hardware": "h"},
        {"method": "dsch", "bits": 32, "map_at_1000": 0.78, "hardware": "h"},
        {"method": "itq", "bits": 16, "map_at_1000": 0.6, "hardware": "h"},
    ]
    lines = {line.split(" | ")[0]: line for line in t.quality_table(rows).splitlines()}
    assert lines["| DSCH"] == f"| DSCH | {t.DASH} | **0.790 ± 0.014 (n=2)** | {t.DASH} |"
    assert lines["| ITQ on raw pixels"] == f"| ITQ on raw pixels | 0.600 (n=1) | {t.DASH} | {t.DASH} |"


def test_a_row_trained_on_other_images_gets_its_own_line():
    t = _tables()
    rows = [
        {"method": "dsch", "bits": 64, "map_at_1000": 0.79},
        {"method": "dsch", "bits": 64, "map_at_1000": 0.80, "train_images": 69000},
    ]
    table = t.quality_table(rows)
    assert "| DSCH | — | — | 0.790 (n=1) |" in table
    assert "| DSCH (trained on 69,000 images) | — | — | 0.800 (n=1) |" in table


def test_every_method_gets_a_row_and_a_sentence_against_its_controls():
    t = _tables()
    rows = [
        *({"method": "itq", "bits": b, "map_at_1000": 0.6} for b in (16, 32)),
        *({"method": "dcuh-ablation", "bits": b, "map_at_1000": 0.65} for b in (16, 32)),
        {"method": "dcuh", "bits": 16, "map_at_1000": 0.70},
        {"method": "dcuh", "bits": 16, "map_at_1000": 0.66},  # mean 0.68: ahead of 0.6 and 0.65
        {"method": "dcuh", "bits": 32, "map_at_1000": 0.62},  # behind its ablation's 0.65
        {"method": "dcuh", "bits": 64, "map_at_1000": 0.80},  # no ITQ or ablation row at 64 bits
    ]
    table = t.quality_table(rows)
    lines = {line.split(" | ")[0]: line for line in table.splitlines()}
    assert lines["| DCUH"] == "| DCUH | 0.680 ± 0.028 (n=2) | 0.620 (n=1) | 0.800 (n=1) |"
    for label in ("PSCH", "PSCH ablation (hard 0/1 targets)"):  # no rows yet: dashes
        assert lines[f"| {label}"] == f"| {label} | {t.DASH} | {t.DASH} | {t.DASH} |"
    assert (
        "DCUH is ahead of ITQ at 16 bits and 32 bits; without ITQ rows to compare with at 64 bits; "
        "ahead of its ablation at 16 bits; behind its ablation at 32 bits (0.620 against 0.650); "
        "without its ablation rows to compare with at 64 bits." in table
    )
    assert "PSCH has no rows yet." in table


def test_deepquan_is_held_against_pq_on_raw_pixels_and_its_ablation():
    t = _tables()
    rows = [
        {"method": "itq", "bits": 16, "map_at_1000": 0.9},  # binary codes' control, not DeepQuan's
        {"method": "pq", "bits": 16, "map_at_1000": 0.69},
        {"method": "deepquan-ablation", "bits": 16, "map_at_1000": 0.72},
        {"method": "deepquan", "bits": 16, "map_at_1000": 0.70},
    ]
    table = t.quality_table(rows)
    assert f"| PQ on raw pixels | 0.690 (n=1) | {t.DASH} | {t.DASH} |" in table
    assert f"| DeepQuan ablation (no triplet term) | 0.720 (n=1) | {t.DASH} | {t.DASH} |" in table
    assert (
        "DeepQuan is ahead of PQ at 16 bits; behind its ablation at 16 bits (0.700 against 0.720); "
        "no rows at 32 bits and 64 bits." in table
    )


def test_check_fails_where_a_registered_method_has_no_config_table(repo_copy: Path):
    (repo_copy / "docs").mkdir()
    text = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- config:train.method.psch:start -->", "<!-- config:train.method.psch:end -->"
    cut = text[: text.index(start)] + text[text.index(end) + len(end) :]
    (repo_copy / "docs" / "configuration.md").write_text(cut)
    for args in (["--check"], []):
        done = _run(*args, "--root", str(repo_copy))
        assert done.returncode == 1 and "docs/configuration.md: config:train.method.psch" in done.stderr, done.stderr


def test_the_config_tables_carry_each_key_its_default_and_comment():
    from rayhash.index.build import IndexBuildConfig

    table = _tables().config_table(IndexBuildConfig)
    assert '| `kind` | `str` | `flat` | "flat" (exact) or "ivf" (faiss.IndexBinaryIVF, sub-linear) |' in table
    assert "| `nlist` | `int \\| None` | `null` |" in table


# --- the documented commands parse ------------------------------------------------------------------

JOBS = {
    "jobs/train.py": "train",
    "jobs/train_dsch.py": "train",
    "jobs/build_index.py": "index",
    "jobs/encode.py": "encode",
    "jobs/quickstart.py": "quickstart",
}


def documented_commands() -> list[tuple[str, str]]:
    """Every ``rayhash ...`` and ``python jobs/...`` command in an indented block of README.md and
    docs/*.md, continuation lines joined, as (file, command)."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            if not line.startswith("    "):
                continue
            m = re.search(r"(?:^|-- )((?:rayhash|python jobs/)\S* .*)$", line.strip())
            if m:
                found.append((path.name, m.group(1).split("  #")[0].strip()))
    return found


def test_the_docs_show_commands_for_every_stage():
    commands = [c for _, c in documented_commands()]
    for stage in (
        "rayhash train",
        "rayhash eval",
        "rayhash encode",
        "rayhash index",
        "rayhash serve",
        "python jobs/train_dsch.py",
        "python jobs/encode.py",
    ):
        assert any(c.startswith(stage) for c in commands), stage


@pytest.mark.parametrize("where,command", documented_commands())
def test_documented_command_parses(where: str, command: str):
    from rayhash import config
    from rayhash.cli import build_parser
    from rayhash.encode.config import EncodeConfig
    from rayhash.index.build import IndexBuildConfig
    from rayhash.quickstart import DEFAULT_METHOD, config_path, load_config
    from rayhash.serve.app import ServeConfig
    from rayhash.train.config import TrainConfig

    # What a shell would substitute: an absolute path, a checkpoint found by `ls`.
    command = re.sub(r'"\$\([^)]*\)"', "runs/quickstart/checkpoint_0", command.replace("$PWD", "/abs"))
    argv = shlex.split(command)
    if argv[0] == "python":
        assert argv[1] in JOBS, f"{where}: {argv[1]} is not a job script"
        argv = [JOBS[argv[1]], *argv[2:]]
    else:
        argv = argv[1:]
    ns, overrides = build_parser().parse_known_args(argv)
    assert all(a.startswith("--") and "=" in a for a in overrides), f"{where}: {command}"
    path = getattr(ns, "config", None)
    assert path is None or (ROOT / path).is_file(), f"{where}: {path} is not in the repo"
    path = path and str(ROOT / path)
    try:
        if ns.command in ("serve", "swap"):
            config.from_dict(ServeConfig, {**config.apply_overrides({}, overrides), "index": ns.index})
        elif ns.command == "quickstart":
            # its config is the file, or the --method's own (DSCH's by default), in the repository
            load_config(path or str(ROOT / config_path(ns.method or DEFAULT_METHOD)), ns.method, overrides)
        elif ns.command not in ("eval", "compact"):
            cls = {"train": TrainConfig, "encode": EncodeConfig, "index": IndexBuildConfig}[ns.command]
            config.load(cls, path, overrides)
    except config.ConfigError as e:
        raise AssertionError(f"{where}: {command!r} does not parse: {e}") from e

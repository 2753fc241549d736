"""benchmarks/gpu.py as a user runs it: its CPU smoke run writes the result file that a CUDA run
writes, and without CUDA the default run stops with one line."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )


def test_smoke_run_on_cpu_writes_every_stage(tmp_path):
    out = tmp_path / "gpu.json"
    r = _run(
        "--device",
        "cpu",
        "--out",
        str(out),
        "--bits",
        "16",
        "--rounds",
        "2",
        "--db-size",
        "3000",
        "--k",
        "10",
        "--images",
        "1000",
        "--data.protocol=random",
        "--data.random_queries=100",
        "--data.random_train=256",
        "--optim.batch_size=64",
        "--method.fine_components=8",
        "--method.coarse_components=3",
        "--run.torch_threads=1",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["command"].startswith("python ") and "benchmarks/gpu.py --device cpu" in result["command"]
    assert result["hardware"] and result["config"] == "configs/fmnist-dsch-16.yaml"
    rows = {row["stage"]: row for row in result["rows"]}
    assert [row["device"] for row in result["rows"]] == ["cpu", "cpu", "cpu"] and set(rows) == {
        "train",
        "encode",
        "search",
    }
    assert rows["train"]["rounds"] == 2
    assert rows["train"]["samples_per_second"] > 0 and rows["train"]["e_step_seconds"] > 0
    assert rows["encode"]["images"] == 1000 and rows["encode"]["images_per_second"] > 0
    assert rows["search"]["database"] == 3000 and rows["search"]["queries"] == 100
    assert rows["search"]["queries_per_second"] > 0


def test_without_cuda_it_stops_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the default run would measure it")
    r = _run("--out", str(tmp_path / "gpu.json"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no CUDA device here" in r.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_cpu_smoke_run_needs_an_out_path():
    r = _run("--device", "cpu")
    assert r.returncode == 2 and "--out" in r.stderr

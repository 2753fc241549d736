"""benchmarks/gpu_check.py as scripts/device_check.sh runs it, on CPU and without the packages the
device machine lacks (Ray, faiss, s3fs): device time is scarce, so a broken check must fail here."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSENT_ON_DEVICE = ("ray", "faiss", "s3fs", "boto3", "botocore", "aiobotocore", "fastapi", "moto")


def _blocker(tmp_path):
    """A folder whose sitecustomize makes the packages absent on the device machine unimportable."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        class _Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {ABSENT_ON_DEVICE!r}:
                    raise ImportError("not on the device machine: " + name)
        sys.meta_path.insert(0, _Absent())
    """))
    return blocker


def _run(tmp_path, *args, check=True):
    env = {**os.environ, "PYTHONPATH": f"{_blocker(tmp_path)}{os.pathsep}{ROOT}", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=check)  # fmt: skip


def test_the_blocker_blocks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(_blocker(tmp_path))}
    r = subprocess.run([sys.executable, "-c", "import faiss"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "not on the device machine: faiss" in r.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the loader workers fork")
def test_gpu_check_trains_scores_and_times_without_ray_faiss_or_s3fs(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = _run(tmp_path, "--allow-cpu", f"--out={out}", "--every=2", "--cpu-images=200", "--bits=16",
             "--data.protocol=random", "--data.random_queries=100", "--data.random_train=256", "--run.rounds=2",
             "--optim.batch_size=64", "--method.fine_components=8", "--method.coarse_components=3",
             "--run.loader_workers=1", "--run.torch_threads=1", check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["finished"] and result["device"] == "cpu" and result["rounds_done"] == 2
    assert set(result["map_by_round"]) == {"1"} and 0 < result["map_at_1000"] <= 1
    assert result["config"]["run"]["loader_workers"] == 1
    assert result["encode"]["device_images_per_second"] > 0 and result["encode"]["cpu_images_per_second"] > 0
    assert result["median_round"]["samples_per_second"] > 0


def test_gpu_check_refuses_a_machine_without_cuda_unless_told(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run in full")
    r = _run(tmp_path, f"--out={tmp_path / 'x.json'}", check=False)
    assert r.returncode == 2 and "no CUDA device here" in r.stderr
    assert not (tmp_path / "x.json").exists()

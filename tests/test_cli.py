"""Every entry point (each ``rayhash`` subcommand, each ``jobs/*.py``) refuses a bad config key
with one line on stderr and exit code 2, before any work: the processes run with a Ray address
nothing answers at and with inputs that do not exist, so one that went on would fail otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rayhash.cli import build_parser, eval_config
from rayhash.config import ConfigError, load, to_dict
from rayhash.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
MISSING = "/nonexistent/rayhash-test"

# (argv after the python executable, text the one error line must hold)
SUBCOMMANDS = {
    "train": (["--run.roundz=2"], "'run.roundz'"),
    "eval": (["--checkpoint", MISSING, "--eval.kk=5"], "'eval.kk'"),
    "index": ([f"--codeset={MISSING}", f"--out={MISSING}", "--num_shardz=2"], "'num_shardz'"),
    "serve": (["--index", MISSING, "--max_kk=3"], "'max_kk'"),
    "swap": (["--index", MISSING, "--max_kk=3"], "'max_kk'"),
    "compact": (
        [f"--index={MISSING}", f"--codeset-out={MISSING}", f"--out={MISSING}", "--kk=3"],
        "compact takes --index, --codeset-out, --out and --up-to only",
    ),
    "quickstart": (["--train.run.roundz=1"], "'train.run.roundz'"),
    "encode": (
        [f"--input={MISSING}", f"--checkpoint={MISSING}", f"--output={MISSING}", "--num_actorz=2"],
        "'num_actorz'",
    ),
}
JOBS = {
    "train_dsch.py": (["--config", "configs/fmnist-dsch-64.yaml", "--optim.lrr=1e-3"], "'optim.lrr'"),
    "train.py": (
        ["--config", "configs/fmnist-dsch-64.yaml", "--method.name=dsch", "--method.num_clusters=50"],
        "'method.num_clusters' with method.name=dsch",
    ),
    "quickstart.py": (["--config", "configs/quickstart.yaml", "--train.run.roundz=1"], "'train.run.roundz'"),
    "encode.py": (["--config", "configs/encode-fmnist.yaml", f"--output={MISSING}", "--num_actorz=2"], "'num_actorz'"),
    "build_index.py": ([f"--codeset={MISSING}", f"--out={MISSING}", "--kindd=ivf"], "'kindd'"),
    "compact.py": (
        [f"--index={MISSING}", f"--codeset-out={MISSING}", f"--out={MISSING}", "--kk=3"],
        "compact takes --index, --codeset-out, --out and --up-to only",
    ),
}
OTHERS = {
    "wrong type": (
        ["-m", "rayhash", "train", "-v", "--optim.lr=abc"],
        "'optim.lr' must be a number (float), got 'abc'",
    ),
    "eval wrong type": (
        ["-m", "rayhash", "eval", "--checkpoint", MISSING, "--eval.k=1e3"],
        "'eval.k' must be an integer",
    ),
    "missing config file": (
        ["jobs/train_dsch.py", "--config", f"{MISSING}.yaml"],
        f"cannot read config file '{MISSING}.yaml'",
    ),
    "not an override": (["-m", "rayhash", "index", "--nlist", "8"], "unrecognized arguments: --nlist 8"),
    "unknown method": (
        ["jobs/train.py", "--config", "configs/fmnist-dsch-64.yaml", "--method.name=nosuch"],
        "config key 'method.name': no method named 'nosuch'; known: dcuh, deepquan, dsch, psch",
    ),
}
CASES = {
    **{f"rayhash {name}": (["-m", "rayhash", name, *args], want) for name, (args, want) in SUBCOMMANDS.items()},
    **{f"jobs/{name}": ([f"jobs/{name}", *args], want) for name, (args, want) in JOBS.items()},
    **OTHERS,
}


@pytest.fixture(scope="module")
def finished():
    """Every case's (returncode, stdout, stderr); a few run side by side to share their start-up."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}

    def run(argv: list[str]) -> tuple[int, str, str]:
        try:
            p = subprocess.run([PYTHON, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            return -1, str(e.stdout), f"timed out: {e.stderr}"
        return p.returncode, p.stdout, p.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, argv) for name, (argv, _) in CASES.items()}
        return {name: f.result() for name, f in futures.items()}


def test_every_subcommand_and_job_has_a_case():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(subparsers.choices) == set(SUBCOMMANDS)
    assert {p.name for p in (REPO / "jobs").glob("*.py")} == set(JOBS)


@pytest.mark.parametrize("case", list(CASES))
def test_config_error_is_one_line_and_exit_2(finished, case):
    code, stdout, stderr = finished[case]
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, f"exit {code}, stderr:\n{stderr}"
    assert "config error:" in lines[0] and CASES[case][1] in lines[0], lines[0]
    assert stdout == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "train"],
        ["train", "-v"],
        ["train", "--verbose", "--run.rounds=2"],
        ["encode", "-v"],
        ["-v", "serve", "--index", "x"],
    ],
)
def test_verbose_before_or_after_the_subcommand(argv):
    ns, overrides = build_parser().parse_known_args(argv)
    assert ns.verbose is True and overrides == [a for a in argv if "=" in a]
    quiet = [a for a in argv if a not in ("-v", "--verbose")]
    assert build_parser().parse_known_args(quiet)[0].verbose is False


def test_eval_applies_overrides_and_named_options_win():
    saved = to_dict(TrainConfig())
    cfg = eval_config(
        saved,
        "/runs/ckpt",
        ["--eval.k=100", "--data.path=/data", "--eval.baselines=lsh", "--data.protocol=x"],
        protocol="fmnist-1k",
    )
    assert cfg.eval.k == 100 and cfg.data.path == "/data" and cfg.eval.baselines == ("lsh",)
    assert cfg.data.protocol == "fmnist-1k" and cfg.eval.output == "/runs/ckpt/eval"
    cfg = eval_config(saved, "/runs/ckpt", ["--eval.k=100"], k=50, baselines=[], output="/out")
    assert (cfg.eval.k, cfg.eval.baselines, cfg.eval.output) == (50, (), "/out")
    default = eval_config(saved, "/runs/ckpt")
    assert (default.eval.k, default.eval.baselines, default.model) == (1000, ("itq", "lsh"), TrainConfig().model)


def test_eval_reads_a_checkpoint_config_with_a_retired_key():
    saved = to_dict(TrainConfig())
    saved["run"] = {**saved["run"], "chaos_kill_at_round": -1}
    assert eval_config(saved, "/runs/ckpt").run == TrainConfig().run
    with pytest.raises(ConfigError, match="chaos_kill_at_round"):
        load(TrainConfig, None, ["--run.chaos_kill_at_round=3"])


def test_encode_main_is_rayhash_encode(capsys):
    from rayhash.encode.cli import main as encode_main

    assert encode_main(["--input=x", "--checkpoint=c", "--output=o", "--input_format=csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rayhash encode: config error: config key 'input_format' must be one of")

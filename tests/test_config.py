import pytest

from rayhash.config import ConfigError, load
from rayhash.train.config import TrainConfig


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  bits: 32\nrun:\n  rounds: 3\n")
    cfg = load(TrainConfig, str(path), ["--run.rounds=5", "--method.lam=0.5", "--augment.crop_scale=[0.3, 1.0]"])
    assert cfg.model.bits == 32 and cfg.run.rounds == 5 and cfg.method.lam == 0.5
    assert cfg.augment.crop_scale == (0.3, 1.0)
    with pytest.raises(Exception):
        cfg.run.rounds = 1  # frozen


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.bitz.*Did you mean 'bits'"):
        load(TrainConfig, None, ["--model.bitz=3"])
    path = tmp_path / "c.yaml"
    path.write_text("runn:\n  rounds: 3\n")
    with pytest.raises(ConfigError, match="runn"):
        load(TrainConfig, str(path))


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"model\.bits.*integer"):
        load(TrainConfig, None, ["--model.bits=abc"])
    with pytest.raises(ConfigError, match=r"method\.covariance_type.*one of"):
        load(TrainConfig, None, ["--method.covariance_type=spherical"])
    with pytest.raises(ConfigError, match=r"run\.use_gpu.*true or false"):
        load(TrainConfig, None, ["--run.use_gpu=3"])


def test_cli_exits_with_message(capsys):
    from rayhash.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--run.roundz=2"])
    assert e.value.code == 2
    assert "run.roundz" in capsys.readouterr().err

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from rayhash.config import ConfigError, apply_overrides, dump_yaml, from_dict, load
from rayhash.train.config import TrainConfig


@dataclass(frozen=True)
class Inner:
    n: int = 1
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Typed:
    i: int = 0
    f: float = 0.0
    b: bool = False
    s: str = ""
    opt: Optional[int] = 3  # noqa: UP045 (typing.Optional is a different annotation from int | None)
    opt_s: str | None = "x"
    mode: Literal["a", "b"] = "a"
    nums: tuple[float, ...] = ()
    pair: tuple[int, str] = (0, "")
    items: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def typed(*overrides: str) -> Typed:
    return load(Typed, None, list(overrides))


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  bits: 32\nrun:\n  rounds: 3\n")
    cfg = load(TrainConfig, str(path), ["--run.rounds=5", "--method.lam=0.5", "--augment.crop_scale=[0.3, 1.0]"])
    assert cfg.model.bits == 32 and cfg.run.rounds == 5 and cfg.method.lam == 0.5
    assert cfg.augment.crop_scale == (0.3, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.rounds = 1  # type: ignore[misc]


def test_numbers_are_read_by_the_field_not_by_yaml():
    cfg = load(TrainConfig, None, ["--optim.lr=1e-3", "--optim.decay_every=010", "--optim.batch_size=1_024"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.decay_every == 10 and cfg.optim.batch_size == 1024  # not octal
    assert typed("--f=3").f == 3.0 and isinstance(typed("--f=3").f, float)
    assert typed("--s=010").s == "010" and typed("--s=1e-3").s == "1e-3"  # a str field keeps the text
    for bad in ("--i=1.5", "--i=1e3", "--i=0x10", "--i=", "--f=abc", "--f=true"):
        with pytest.raises(ConfigError, match=rf"'{bad[2]}' must be (an integer|a number)"):
            typed(bad)


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("True", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("NO", False),
        ("off", False),
        ("0", False),
    ],
)
def test_bools(text, value):
    assert typed(f"--b={text}").b is value


def test_bool_words_are_refused_elsewhere():
    for bad in ("--b=2", "--b=y", "--b=", "--b=nope"):
        with pytest.raises(ConfigError, match=r"'b' must be true or false \(bool\), got"):
            typed(bad)
    # A bare YAML bool or null word is refused for a str field; quoted, it is the word.
    for word in ("no", "Yes", "true", "off", "null", "~"):
        with pytest.raises(ConfigError, match=rf"'s' must be a string \(str\), got '{word}'.*quote it"):
            typed(f"--s={word}")
    assert typed('--s="no"').s == "no" and typed("--s='null'").s == "null"
    assert typed("--s=a: b, [c]").s == "a: b, [c]"  # a str field takes the text as written


def test_optional_literal_sequences_sections():
    assert typed("--opt=null").opt is None and typed("--opt=~").opt is None and typed("--opt=").opt is None
    assert typed("--opt=None").opt is None and typed("--opt=07").opt == 7
    assert typed("--opt_s=null").opt_s is None
    with pytest.raises(ConfigError, match=r"'opt_s' must be a string \(str\) or null, got 'no'"):
        typed("--opt_s=no")
    assert typed("--opt_s=path").opt_s == "path"
    with pytest.raises(ConfigError, match=r"'opt' must be an integer \(int\) or null, got 'x'"):
        typed("--opt=x")
    assert typed("--mode=b").mode == "b"
    with pytest.raises(ConfigError, match=r"'mode' must be one of \['a', 'b'\], got 'c'"):
        typed("--mode=c")
    assert typed("--nums=[1e-3, 2]").nums == (0.001, 2.0)
    assert typed("--nums=0.5,1").nums == (0.5, 1.0) and typed("--nums=").nums == () and typed("--nums=[]").nums == ()
    assert typed("--items=[010, 2]").items == (10, 2)
    assert typed('--pair=[3, "no"]').pair == (3, "no")
    with pytest.raises(ConfigError, match=r"'pair\[1\]' must be a string"):
        typed("--pair=[3, no]")
    with pytest.raises(ConfigError, match=r"'pair' must be a list.*3 items, 2 expected"):
        typed("--pair=1,a,b")
    with pytest.raises(ConfigError, match=r"'nums\[1\]' must be a number \(float\), got 'x'"):
        typed("--nums=1,x")
    assert typed("--inner.n=05", "--inner.names=a,b").inner == Inner(5, ("a", "b"))
    with pytest.raises(ConfigError, match=r"'inner' must be a section.*--inner\.n="):
        typed("--inner=3")
    # Free-form dicts read their text by YAML's own rules.
    assert typed("--extra.num_replicas=2", "--extra.opts={num_cpus: 0.5}").extra == {
        "num_replicas": 2,
        "opts": {"num_cpus": 0.5},
    }


def test_yaml_file_values_are_read_by_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "f: 1e-3\ni: 010\nb: yes\ns: 123\nnums: [1, 2e-1]\nopt: null\ninner:\n  n: 2\nextra:\n  a: 1\n  b: [x, 2]\n"
    )
    cfg = load(Typed, str(path))
    assert (cfg.f, cfg.i, cfg.b, cfg.s, cfg.nums, cfg.opt) == (0.001, 10, True, "123", (1.0, 0.2), None)
    assert cfg.inner.n == 2 and cfg.extra == {"a": 1, "b": ["x", 2]}
    assert "!!python" not in dump_yaml(cfg)  # every value came back as a plain type
    path.write_text('s: "no"\n')
    assert load(Typed, str(path)).s == "no"
    for text, match in [
        ("s: no\n", r"'s' must be a string"),
        ("i: ten\n", r"'i' must be an integer \(int\), got 'ten'"),
        ('f: "1e-3"\n', r"'f' must be a number \(float\), got str '1e-3'"),  # quoted: a string
        ("inner:\n  n: 1.5\n", r"'inner\.n' must be an integer"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load(Typed, str(path))


def test_values_that_are_not_text_are_checked_not_converted():
    assert from_dict(Typed, {"f": 2, "nums": [1, 2.5], "s": "no"}) == Typed(f=2.0, nums=(1.0, 2.5), s="no")
    for data, match in [
        ({"i": "3"}, r"'i' must be an integer \(int\), got str '3'"),
        ({"i": True}, "'i' must be an integer"),
        ({"b": 1}, r"'b' must be true or false"),
        ({"s": 3}, r"'s' must be a string"),
    ]:
        with pytest.raises(ConfigError, match=match):
            from_dict(Typed, data)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.bitz.*Did you mean 'bits'"):
        load(TrainConfig, None, ["--model.bitz=3"])
    path = tmp_path / "c.yaml"
    path.write_text("runn:\n  rounds: 3\n")
    with pytest.raises(ConfigError, match="runn"):
        load(TrainConfig, str(path))


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"model\.bits.*integer.*'abc'"):
        load(TrainConfig, None, ["--model.bits=abc"])
    with pytest.raises(ConfigError, match=r"method\.covariance_type.*one of"):
        load(TrainConfig, None, ["--method.covariance_type=spherical"])
    with pytest.raises(ConfigError, match=r"run\.use_gpu.*true or false"):
        load(TrainConfig, None, ["--run.use_gpu=3"])


def test_bad_files_and_overrides_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.yaml"):
        load(TrainConfig, str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("run: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.* not valid YAML"):
        load(TrainConfig, str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(TrainConfig, str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match=r"--key=value"):
        apply_overrides({}, ["--run.rounds"])


def test_cli_returns_2_with_one_line(capsys):
    from rayhash.cli import main

    assert main(["train", "--run.roundz=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.roundz" in err[0] and err[0].startswith("rayhash train: config error:")

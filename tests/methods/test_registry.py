"""The method registry and interface: a method is picked by name with its own config keys, its own
module is trained, checkpointed, restored and averaged across ranks like the model, and its E-step
and loss get exactly the outputs it declared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from rayhash import dist
from rayhash.config import ConfigError, from_dict, load, to_dict
from rayhash.methods import (
    DSCHConfig,
    HashingMethod,
    MethodConfig,
    ShardInputs,
    ViewBatch,
    build_method,
    losses,
    register_method,
)
from rayhash.methods import registry as method_registry
from rayhash.models import checkpoint
from rayhash.train.config import TrainConfig
from rayhash.train.loop import run_rounds

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--data.protocol=random",
    "--data.random_queries=100",
    "--data.random_train=256",
    "--model.bits=16",
    "--model.backbone=tiny_cnn",
    "--optim.batch_size=64",
    "--run.rounds=2",
    "--run.torch_threads=1",
    "--eval.enabled=false",
]


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    name: str = "toy"
    width: int = 8


class Toy(HashingMethod):
    """A projection head trained by instance contrast; it records what the trainer handed it."""

    e_step_inputs = ("codes", "features", "feature_maps")
    loss_inputs = ("features", "feature_maps")
    instances: list[Toy] = []

    def __init__(self, cfg: ToyConfig, nbits: int, feature_dim: int = 0):
        super().__init__(cfg, nbits, feature_dim)
        self.module = nn.Linear(nbits, cfg.width)
        self.initial = self.module.weight.detach().clone()
        self.e_steps = 0
        self.e_step_shapes: list[dict] = []
        self.batch_shapes: list[dict] = []
        Toy.instances.append(self)

    def e_step(self, inputs: ShardInputs, round_index: int) -> dict[str, float]:
        self.e_steps += 1
        self.e_step_shapes.append({k: _shape(getattr(inputs, k)) for k in ("codes", "features", "feature_maps")})
        return {"toy_e_steps": float(self.e_steps)}

    def loss(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, float]]:
        fields = ("h_a", "h_b", "index", "features_a", "features_b", "feature_maps_a", "feature_maps_b")
        self.batch_shapes.append({k: _shape(getattr(batch, k)) for k in fields})
        z_a, z_b = self.module(batch.h_a), self.module(batch.h_b)
        l_ic = losses.instance_correlation_loss(z_a, z_b, torch.eye(len(z_a)), 0.3)
        return l_ic, {"ic": l_ic.item()}

    def state_dict(self) -> dict:
        return {"e_steps": self.e_steps}

    def load_state_dict(self, state: dict) -> None:
        self.e_steps = state.get("e_steps", 0)


@dataclass(frozen=True)
class FeaturesOnlyConfig(ToyConfig):
    name: str = "toy_features"


class FeaturesOnly(Toy):
    e_step_inputs = ("features",)
    loss_inputs = ()


def _shape(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else tuple(t.shape)


def _register_toys() -> None:
    register_method("toy", ToyConfig, Toy)
    register_method("toy_features", FeaturesOnlyConfig, FeaturesOnly)


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setattr(method_registry, "_REGISTRY", dict(method_registry._REGISTRY))
    _register_toys()
    Toy.instances.clear()
    yield
    Toy.instances.clear()


def _train(args: list[str], resume=None, save_round=-1, save_to="") -> list[dict]:
    payloads = []

    def keep(metrics, payload):
        if metrics["round"] == save_round:
            checkpoint.save(save_to, **payload)
        payloads.append(
            {
                k: ({n: t.clone() for n, t in v.items()} if k in ("model", "method_module") else v)
                for k, v in payload.items()
            }
        )

    run_rounds(load(TrainConfig, None, [*TINY, *args]), device=torch.device("cpu"), report=keep, resume=resume)
    return payloads


# --- config --------------------------------------------------------------------------------------


def test_an_unknown_method_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"'method.name': no method named 'nosuch'; known: .*dsch"):
        load(TrainConfig, None, ["--method.name=nosuch"])
    with pytest.raises(ValueError, match=r"unknown method 'nosuch'; available: .*dsch"):
        method_registry.method_entry("nosuch")


def test_a_key_of_another_method_names_this_methods_keys(toys):
    with pytest.raises(ConfigError) as e:
        load(TrainConfig, None, ["--method.name=toy", "--method.lam=0.5"])
    msg = str(e.value)
    assert "'method.lam' with method.name=toy (a key of method.name=dsch)" in msg
    assert msg.endswith("Allowed keys here: ablation, name, width.")
    with pytest.raises(
        ConfigError, match=r"'method.width' with method.name=dsch \(a key of method.name=toy or toy_features\)"
    ):
        load(TrainConfig, None, ["--method.width=4"])  # no name: the default method, DSCH
    with pytest.raises(ConfigError, match=r"'method.nosuch' with method.name=toy\. Allowed keys here: ablation"):
        load(TrainConfig, None, ["--method.name=toy", "--method.nosuch=1"])


def test_a_dsch_config_file_with_another_method_name_is_refused(toys):
    with pytest.raises(
        ConfigError, match=r"'method.\w+' with method.name=toy \(a key of method.name=(\w+ or )*dsch( or \w+)*\)"
    ):
        load(TrainConfig, str(ROOT / "configs" / "fmnist-dsch-64.yaml"), ["--method.name=toy"])


def test_the_method_section_is_read_as_the_named_methods_dataclass(toys):
    cfg = load(TrainConfig, None, ["--method.name=toy", "--method.width=3", "--method.ablation=true"])
    assert cfg.method == ToyConfig(width=3, ablation=True)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg  # a checkpoint's saved config round-trips
    assert TrainConfig().method == DSCHConfig() and load(TrainConfig).method == DSCHConfig()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("fmnist-dsch-*.yaml")))
def test_dsch_configs_load_as_dsch_and_round_trip(path):
    cfg = load(TrainConfig, str(path))
    assert type(cfg.method) is DSCHConfig
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_registering_checks_the_entry():
    with pytest.raises(ValueError, match="must default to 'other'"):
        register_method("other", ToyConfig, Toy)
    with pytest.raises(TypeError, match="subclassing MethodConfig"):
        register_method("toy", dict, Toy)
    with pytest.raises(TypeError, match="takes a DSCHConfig"):
        build_method(MethodConfig(name="dsch"), 16)


# --- trainer -------------------------------------------------------------------------------------


def test_the_e_step_and_loss_get_exactly_what_the_method_declared(toys):
    _train(["--method.name=toy"])
    (toy,) = Toy.instances
    n = 256  # one process: the whole training set is its shard
    assert toy.e_step_shapes == [{"codes": (n, 16), "features": (n, 512), "feature_maps": (n, 64, 7, 7)}] * 2
    assert toy.batch_shapes[0] == {
        "h_a": (64, 16),
        "h_b": (64, 16),
        "index": (64,),
        "features_a": (64, 512),
        "features_b": (64, 512),
        "feature_maps_a": (64, 64, 7, 7),
        "feature_maps_b": (64, 64, 7, 7),
    }
    _train(["--method.name=toy_features", "--model.backbone=mlp"])
    only = Toy.instances[-1]
    assert only.e_step_shapes[0] == {"codes": None, "features": (n, 1024), "feature_maps": None}
    assert only.batch_shapes[0]["features_a"] is None and only.batch_shapes[0]["feature_maps_a"] is None


def test_a_method_that_needs_feature_maps_refuses_a_backbone_without_them(toys):
    with pytest.raises(ValueError, match=r"needs the backbone's spatial feature maps and backbone 'mlp' has none"):
        _train(["--method.name=toy", "--model.backbone=mlp"])


def test_a_methods_module_is_trained_checkpointed_and_restored(toys, tmp_path):
    uri = str(tmp_path / "round1")
    whole = _train(["--method.name=toy", "--run.rounds=3"], save_round=1, save_to=uri)
    assert set(whole[-1]["method_module"]) == {"weight", "bias"}
    assert not torch.equal(whole[0]["method_module"]["weight"], Toy.instances[0].initial)
    assert not torch.equal(whole[0]["method_module"]["weight"], whole[-1]["method_module"]["weight"])
    saved = checkpoint.load(uri)
    assert torch.equal(saved.method_module["weight"], whole[1]["method_module"]["weight"])
    assert saved.em == {"e_steps": 2}

    resumed = _train(["--method.name=toy", "--run.rounds=3"], resume=saved)
    assert resumed[0]["em"] == {"e_steps": 3}
    assert resumed[0]["progress"]["metrics"]["loss"] == whole[2]["progress"]["metrics"]["loss"]
    for part in ("model", "method_module"):
        for key, value in whole[2][part].items():
            assert torch.equal(value, resumed[0][part][key]), (part, key)


def _rank_trains_toy() -> dict:
    """One DDP rank of a 2-round run; returns its own head, before and after, and its E-step's shapes."""
    _register_toys()
    cfg = load(TrainConfig, None, [*TINY, "--method.name=toy"])
    run_rounds(cfg, device=torch.device("cpu"), wrap_model=nn.parallel.DistributedDataParallel)
    toy = Toy.instances[-1]
    return {"head": toy.module.weight.detach().clone(), "initial": toy.initial, "shapes": toy.e_step_shapes[0]}


def test_a_methods_module_is_averaged_across_ranks_by_ddp():
    ranks = dist.launch_local(_rank_trains_toy, nprocs=2)
    assert torch.equal(ranks[0]["head"], ranks[1]["head"])  # each rank's own gradients would part them
    assert torch.equal(ranks[0]["initial"], ranks[1]["initial"])
    assert not torch.equal(ranks[0]["head"], ranks[0]["initial"])
    assert [r["shapes"]["codes"] for r in ranks] == [(128, 16), (128, 16)]  # each rank its shard


def test_a_methods_sample_order_sets_the_batches():
    from rayhash.train.loop import _batches

    order = torch.tensor([3, 3, 0, 7, 1, 1, 5, 2, 9])  # repeats allowed, e.g. drawn uniformly over clusters
    g = torch.Generator().manual_seed(0)
    assert _batches(10, 4, 2, None, g, order) == [[3, 3, 0, 7], [1, 1, 5, 2]]
    partners = torch.arange(10).flip(0)
    assert _batches(10, 4, 2, partners, g, order) == [[3, 3, 6, 6], [0, 7, 9, 2]]

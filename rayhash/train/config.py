"""The training stage's config: one frozen dataclass per section, saved with every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rayhash.config import ConfigError
from rayhash.methods import DSCHConfig, MethodConfig
from rayhash.models import ModelConfig


@dataclass(frozen=True)
class DataConfig:
    source: str = "fashion-mnist"  # fashion-mnist | cifar10 | files | parquet
    path: str = ""  # "" = the source's default location
    protocol: str = "fmnist-1k"  # a split from rayhash.data.splits, or "random" for unlabelled data
    random_queries: int = 1000  # with protocol "random": held-out queries ...
    random_train: int = 5000  # ... and training images drawn from the rest


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, ...] = (0.5, 1.0)
    hflip: bool = True
    color_jitter: float = 0.4  # RGB only
    grayscale_p: float = 0.2  # RGB only
    gray_jitter: float = 0.8  # grayscale only: brightness and contrast jitter strength (p = 0.8)
    blur: bool = False
    erase: float = 0.0  # probability of erasing a random patch (v2.RandomErasing) of each view


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4  # Adam, as the released DSCH scripts
    weight_decay: float = 0.0
    schedule: Literal["step", "cosine"] = "step"
    decay: float = 0.99  # step: lr *= decay every `decay_every` steps
    decay_every: int = 200
    min_lr: float = 0.0  # cosine: from lr down to min_lr over all the run's steps
    batch_size: int = 256  # global: split across workers
    # Weight averaging (SWA): from this round on, the checkpoint's model is the mean of the weights
    # each round ended with, batch-norm statistics re-measured on the training shard; -1: off.
    swa_start: int = -1

    def __post_init__(self) -> None:
        if self.swa_start < -1:
            raise ConfigError(
                f"optim.swa_start must be -1 (off) or the first round to average (>= 0), got {self.swa_start}"
            )


@dataclass(frozen=True)
class RunConfig:
    name: str = "dsch-fmnist"
    storage_path: str = "runs"  # local folder or s3://bucket/prefix
    rounds: int = 10  # each round: one E-step, then one epoch of M-step training
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional so two workers (and Ray Data) start on 2 cores
    # Where Ray puts the workers (Ray Train's ScalingConfig): PACK fills one node first, keeping
    # DDP's all-reduce off the network; SPREAD / STRICT_SPREAD give each worker a node of its own
    # where it can (must), when one worker takes a node's memory, disk or network.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = 2  # worker deaths survived by resuming from the latest checkpoint
    keep_checkpoints: int = 2
    seed: int = 0
    torch_threads: int = 0  # 0: leave torch's default
    # Processes that augment the next batches while the model trains (torch DataLoader workers).
    # 0 augments in the training process, right for a 2-core machine; on a GPU machine with spare
    # cores the augmentation is what the GPU waits on.
    loader_workers: int = 0

    def __post_init__(self) -> None:
        if self.loader_workers < 0:
            raise ConfigError(
                f"run.loader_workers must be >= 0 (0 augments in the training process), got {self.loader_workers}"
            )


@dataclass(frozen=True)
class EvalConfig:
    enabled: bool = True
    k: int = 1000
    output: str = ""  # "" = <storage_path>/<name>/eval
    baselines: tuple[str, ...] = ("itq", "lsh")  # on raw pixels, same harness; a pq checkpoint adds pq unless empty


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # method.name picks a registered method (rayhash.methods); the section is read as its dataclass
    method: MethodConfig = field(default_factory=DSCHConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Keys that older checkpoints may still hold and that no longer configure anything. Reading a
# saved config drops them; a user's YAML or override naming one is still an unknown key.
RETIRED_KEYS = {("run", "chaos_kill_at_round")}


def saved_config(data: dict) -> dict:
    """A checkpoint's saved config without :data:`RETIRED_KEYS`, ready for ``from_dict``."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for section, key in RETIRED_KEYS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out

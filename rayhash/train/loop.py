"""The per-worker training loop: rounds of (cluster-wide E-step, one epoch of M-step training).

Runs inside Ray Train workers (``train_loop_per_worker``) and, with ``ray_train=False``, in one
plain process: the E-step's collectives become identities and checkpoints go straight to disk.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rayhash import dist
from rayhash.config import from_dict, to_dict
from rayhash.data.images import LabeledImages
from rayhash.data.sources import load_source
from rayhash.data.splits import Split, protocol_split, random_split
from rayhash.data.transforms import TwoViewAugment, eval_batch_transform
from rayhash.methods import HashingMethod, ShardInputs, ViewBatch, build_method, method_entry
from rayhash.methods.base import CODES, FEATURE_MAPS, FEATURES, INPUTS
from rayhash.models import HashModel, backbones_with_feature_maps, build_model, checkpoint
from rayhash.train.averaging import WeightAverage
from rayhash.train.config import DataConfig, OptimConfig, TrainConfig

logger = logging.getLogger(__name__)


def load_split(cfg: DataConfig) -> tuple[LabeledImages, Split]:
    data = load_source(cfg.source, cfg.path or None)
    if cfg.protocol == "random":
        split = random_split(len(data), cfg.random_queries, cfg.random_train, seed=0)
    else:
        if data.labels is None:
            raise ValueError(f"protocol {cfg.protocol!r} needs labels; use data.protocol=random for unlabelled data")
        split = protocol_split(cfg.protocol, data.labels)
    return data, split


class _TwoViews(Dataset):
    def __init__(self, images: np.ndarray, augment: TwoViewAugment):
        self.images, self.augment = images, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        a, b = self.augment(self.images[i])
        return a, b, i


def _batches(
    n: int,
    batch: int,
    steps: int,
    partners: torch.Tensor | None,
    generator: torch.Generator,
    order: torch.Tensor | None = None,
) -> list[list[int]]:
    """``steps`` batches of shard positions: shuffled (or in the method's ``order``), or such
    anchors each followed by its partner."""
    if order is None:
        order = torch.randperm(n, generator=generator)
    if partners is None:
        return order[: steps * batch].view(steps, batch).tolist()
    half = batch // 2
    anchors = order[: steps * half].view(steps, half)
    return torch.cat([anchors, partners[anchors]], dim=1).tolist()


def eval_batches(model: HashModel, images: np.ndarray, device: torch.device, batch_size: int = 512):
    """``images`` as the model's input batches, without augmentation."""
    spec = model.input
    transform = eval_batch_transform(spec.image_size, spec.channels, spec.mean, spec.std)
    for i in range(0, len(images), batch_size):
        yield transform(images[i : i + batch_size]).to(device)


@torch.no_grad()
def encode_shard(model: HashModel, images: np.ndarray, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Continuous codes of ``images`` in eval mode without augmentation (the E-step's input)."""
    was_training = model.training
    model.eval()
    out = [model(batch) for batch in eval_batches(model, images, device, batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def shard_inputs(
    model: HashModel, images: np.ndarray, device: torch.device, needs: tuple[str, ...], batch_size: int = 512
) -> ShardInputs:
    """What a method's E-step declared (``needs``) for every image, in eval mode without augmentation."""
    if tuple(needs) == (CODES,):
        return ShardInputs(codes=encode_shard(model, images, device, batch_size))
    was_training = model.training
    model.eval()
    outs = [
        model.outputs(batch, features=FEATURES in needs, feature_map=FEATURE_MAPS in needs)
        for batch in eval_batches(model, images, device, batch_size)
    ]
    model.train(was_training)
    return ShardInputs(
        codes=torch.cat([o.h for o in outs]) if CODES in needs else None,
        features=torch.cat([o.features for o in outs]) if FEATURES in needs else None,
        feature_maps=torch.cat([o.feature_map for o in outs]) if FEATURE_MAPS in needs else None,
    )


class TrainStep(nn.Module):
    """The model and the method's own module as one module, whose forward is a batch's loss.

    This is what DDP wraps: the method's parameters are used inside its forward, so their
    gradients are averaged across workers like the model's.
    """

    def __init__(self, model: HashModel, method: HashingMethod):
        super().__init__()
        self.model = model
        self.method_module = method.module  # registered as a submodule when there is one
        self.method = method
        self.features = FEATURES in method.loss_inputs
        self.feature_map = FEATURE_MAPS in method.loss_inputs
        self.inputs = INPUTS in method.loss_inputs

    def forward(self, views: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``views``: both views stacked (all of view a, then all of view b)."""
        n = len(index)
        x_a, x_b = (views[:n], views[n:]) if self.inputs else (None, None)
        if not (self.features or self.feature_map):
            h = self.model(views)
            return self.method.loss(ViewBatch(h[:n], h[n:], index, inputs_a=x_a, inputs_b=x_b))
        out = self.model.outputs(views, features=self.features, feature_map=self.feature_map)
        f, m = out.features, out.feature_map
        batch = ViewBatch(
            out.h[:n],
            out.h[n:],
            index,
            features_a=None if f is None else f[:n],
            features_b=None if f is None else f[n:],
            feature_maps_a=None if m is None else m[:n],
            feature_maps_b=None if m is None else m[n:],
            inputs_a=x_a,
            inputs_b=x_b,
        )
        return self.method.loss(batch)


def _check_backbone(cfg: TrainConfig, method: HashingMethod, model: HashModel) -> None:
    if FEATURE_MAPS in (*method.e_step_inputs, *method.loss_inputs) and not model.has_feature_map:
        raise ValueError(
            f"method {cfg.method.name!r} needs the backbone's spatial feature maps and backbone "
            f"{cfg.model.backbone!r} has none; backbones with one: {', '.join(backbones_with_feature_maps())}"
        )


def with_method_embedding(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``model.embed_dim`` set to the width of h the method trains, where that is not ``bits``.

    A binary method keeps ``embed_dim`` 0 (its config and weights exactly as before); a PQ method gets
    M * d_sub, which the checkpoint's config then carries. A width set by hand must agree.
    """
    want = method_entry(cfg.method.name).method_cls.embedding_dim(cfg.method, cfg.model.bits)
    have = cfg.model.embed_dim or cfg.model.bits
    if cfg.model.embed_dim and have != want:
        raise ValueError(
            f"model.embed_dim={cfg.model.embed_dim} but method {cfg.method.name!r} trains an embedding of "
            f"{want} dims at {cfg.model.bits} bits; leave model.embed_dim at 0 and the trainer sets it"
        )
    if want == cfg.model.bits or have == want:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=want))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """The learning-rate schedule, stepped once per optimizer step."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=cfg.min_lr)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.decay_every, gamma=cfg.decay)


def run_rounds(
    cfg: TrainConfig,
    *,
    device: torch.device,
    wrap_model=lambda m: m,
    report=None,
    resume: checkpoint.Checkpoint | None = None,
    node_id: str = "",
) -> None:
    """Train ``cfg.run.rounds`` rounds on this worker's shard; ``report(metrics, payload)`` saves each round.

    ``node_id``: the Ray node this worker runs on; every checkpoint lists each rank's as
    ``progress["worker_nodes"]``, so a run says where it trained (one node, or spread).
    """
    rank, world = dist.rank(), dist.world_size()
    worker_nodes = dist.all_gather_object(node_id)
    logger.info("worker %d of %d on node %s", rank, world, node_id or "(no Ray)")
    cfg = with_method_embedding(cfg)
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    data, split = load_split(cfg.data)
    shard_positions = np.asarray(split.train)[rank::world]
    shard = data.images[shard_positions]
    model = build_model(cfg.model).to(device)
    spec = model.input
    input_dim = spec.channels * spec.image_size**2
    method: HashingMethod = build_method(cfg.method, cfg.model.bits, model.feature_dim, input_dim)
    _check_backbone(cfg, method, model)
    if method.module is not None:
        method.module.to(device)
    params = itertools.chain(model.parameters(), method.module.parameters() if method.module is not None else ())
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    local_batch = max(2, cfg.optim.batch_size // world)
    # Every rank runs the same number of steps, or DDP's all-reduce would wait forever.
    steps = (len(split.train) // world) // local_batch
    if steps == 0:
        raise ValueError(f"{len(split.train)} training images cannot fill one batch of {cfg.optim.batch_size}")
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=cfg.run.rounds * steps)
    average = WeightAverage() if cfg.optim.swa_start >= 0 and rank == 0 else None  # rank 0 alone writes checkpoints
    if average is not None and cfg.optim.swa_start >= cfg.run.rounds:
        # A shortened run of a long recipe (--run.rounds=3 on the 64-bit config) is still a run worth having.
        logger.warning(
            "optim.swa_start=%d is not below run.rounds=%d: this run averages no weights and serves "
            "its last round's (set optim.swa_start below run.rounds, or -1)",
            cfg.optim.swa_start,
            cfg.run.rounds,
        )
    start_round, resumes = 0, []
    if resume is not None:
        # With averaging, the checkpoint's model is the averaged copy; training goes on from the live weights.
        model.load_state_dict(resume.averaging.get("live_model", resume.model))
        if average is not None and resume.averaging:
            average.load_state_dict(resume.averaging, device)
        optimizer.load_state_dict(resume.optimizer["adam"])
        scheduler.load_state_dict(resume.optimizer["schedule"])
        method.load_state_dict(resume.em)
        if method.module is not None:
            method.module.load_state_dict(resume.method_module)
        if "torch_rng" in resume.optimizer:
            # The augmentations (and loader workers' seeds) draw from torch's global generator: with
            # its state back, a resumed run draws what the uninterrupted run would have drawn.
            torch.set_rng_state(resume.optimizer["torch_rng"])
        start_round = int(resume.progress["round"]) + 1
        resumes = [*resume.progress.get("resumes", []), start_round]
        logger.info("resuming from %s at round %d", resume.uri, start_round)
    # DDP under Ray Train; the bare model encodes for the E-step.
    train_step = wrap_model(TrainStep(model, method))

    a = cfg.augment
    augment = TwoViewAugment(
        spec.image_size,
        spec.channels,
        spec.mean,
        spec.std,
        crop_scale=tuple(a.crop_scale),
        hflip=a.hflip,
        color_jitter=a.color_jitter,
        grayscale_p=a.grayscale_p,
        gray_jitter=a.gray_jitter,
        blur=a.blur,
        erase=a.erase,
    )

    for round_index in range(start_round, cfg.run.rounds):
        t0 = time.perf_counter()
        e_stats = method.e_step(shard_inputs(model, shard, device, method.e_step_inputs), round_index)
        e_seconds = time.perf_counter() - t0

        generator = torch.Generator().manual_seed(cfg.run.seed * 100_003 + round_index * 101 + rank)
        # Loader workers seed their augmentations from torch's global generator (seeded above), so
        # a run repeats for a given worker count; fork hands them the shard without pickling it.
        workers = cfg.run.loader_workers
        partners = method.partners(generator)  # drawn before the order, as the generator's sequence has it
        order = method.sample_order(len(shard), generator)
        loader = DataLoader(
            _TwoViews(shard, augment),
            batch_sampler=_batches(len(shard), local_batch, steps, partners, generator, order),
            num_workers=workers,
            pin_memory=workers > 0 and device.type == "cuda",
            multiprocessing_context="fork" if workers else None,
        )
        train_step.train()
        sums: dict[str, float] = {}
        t1 = time.perf_counter()
        for view_a, view_b, index in loader:
            loss, parts = train_step(torch.cat([view_a, view_b]).to(device), index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
        m_seconds = time.perf_counter() - t1
        metrics = {
            "round": round_index,
            **{k: v / steps for k, v in sums.items()},
            **e_stats,
            "e_step_seconds": e_seconds,
            "m_step_seconds": m_seconds,
            "samples_per_second": steps * local_batch * world / max(m_seconds, 1e-9),
            "lr": scheduler.get_last_lr()[0],
            "loss_parts": [k for k in sums if k != "loss"],  # which keys the progress line shows as the loss's terms
        }
        logger.info(
            "round %d: %s", round_index, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        )
        payload = None
        if rank == 0:
            served, averaging = model.state_dict(), {}
            if average is not None and round_index >= cfg.optim.swa_start:
                average.update(model)
                served = average.averaged_model(model, eval_batches(model, shard, device)).state_dict()
                live = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                averaging = {**average.state_dict(), "live_model": live}
                metrics["averaged_rounds"] = average.count
            payload = dict(
                config=to_dict(cfg),
                model=served,
                em=method.state_dict(),
                method_module=method.module.state_dict() if method.module is not None else {},
                code_kind=method.code_kind,
                averaging=averaging,
                optimizer={
                    "adam": optimizer.state_dict(),
                    "schedule": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                progress={
                    "round": round_index,
                    "step": (round_index + 1) * steps,
                    "metrics": metrics,
                    "resumes": resumes,
                    "worker_nodes": worker_nodes,
                },
            )
        if report is not None:
            report(metrics, payload)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: one worker of a data-parallel run (``TorchTrainer``)."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(TrainConfig, config)
    resume = None
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            resume = checkpoint.load(d)

    def report(metrics: dict, payload: dict | None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if payload is not None:
                checkpoint.save(tmp, **payload)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    run_rounds(
        cfg,
        device=ray.train.torch.get_device(),
        wrap_model=ray.train.torch.prepare_model,
        report=report,
        resume=resume,
        node_id=ray.get_runtime_context().get_node_id(),
    )

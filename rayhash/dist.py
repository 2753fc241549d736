"""Collectives for cluster-wide code: the one place rayhash talks to ``torch.distributed``.

Without an initialised process group every function is the identity (it returns a copy), so
code written for N ranks runs unchanged in one process, which is the case of one rank.
gloo communicates CPU tensors and nccl CUDA tensors: inputs are moved for the collective and
the result comes back on the input's device. Results are fresh tensors, never views of the
input, and carry no autograd history.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as tdist

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    backend = tdist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return torch.device("cpu")
    return t.device


def _to_comm(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` on the backend's device, safe to overwrite in place."""
    return t.detach().to(_comm_device(t), copy=True).contiguous()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of ``t`` over all ranks; ``t`` itself is left unchanged."""
    if not is_distributed():
        return t.detach().clone()
    out = _to_comm(t)
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``t`` on every rank (every rank passes a tensor of the same shape and dtype)."""
    if not is_distributed():
        return t.detach().clone()
    out = _to_comm(t)
    tdist.broadcast(out, src=src)
    return out.to(t.device)


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order; row counts may differ.

    All ranks must pass tensors with the same number of dimensions, trailing sizes and dtype.
    """
    if t.dim() == 0:
        raise ValueError("all_gather_cat needs a tensor with at least one dimension; got a scalar (use t.view(1))")
    if not is_distributed():
        return t.detach().clone()
    local = _to_comm(t)
    shape = torch.tensor(local.shape, dtype=torch.int64, device=local.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    tdist.all_gather(shapes, shape)
    shapes = [tuple(s.tolist()) for s in shapes]
    if any(s[1:] != shapes[0][1:] for s in shapes):
        raise ValueError(f"all_gather_cat needs equal trailing sizes on every rank; got shapes {shapes} in rank order")
    rows = [s[0] for s in shapes]
    # Collectives move equal-sized buffers: pad every rank to the largest, then trim.
    padded = local.new_zeros((max(rows), *local.shape[1:]))
    if max(rows) == 0:
        return padded.to(t.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in rows]
    tdist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, rows)]).to(t.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable) in rank order: for small plain values, never tensors of data."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_worker(rank_: int, fn: Callable, args: Sequence, nprocs: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    tdist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank_,
        world_size=nprocs,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.save(fn(*args), os.path.join(out_dir, f"rank{rank_}.pt"))
    finally:
        tdist.destroy_process_group()


def launch_local(fn: Callable, nprocs: int = 2, args: Sequence = (), *, timeout_s: float = 300.0) -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` fresh processes joined in a gloo group on 127.0.0.1.

    For tests and for debugging cluster-wide code on one machine. ``fn`` must be importable
    (a module-level function) and return tensors and plain values only; the results come
    back in rank order. A worker's exception is re-raised here; a hang ends at ``timeout_s``.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    with tempfile.TemporaryDirectory(prefix="rayhash-dist-") as out_dir:
        ctx = torch.multiprocessing.start_processes(
            _local_worker,
            args=(fn, tuple(args), nprocs, _free_port(), out_dir),
            nprocs=nprocs,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=5.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError(f"launch_local: {fn.__name__} did not finish on {nprocs} ranks within {timeout_s} s")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(nprocs)]

"""What the driver shows while Ray Train runs: a progress bar over rounds and one line per round.

The workers' own output (their logs, Ray Train's record of every report) goes to Ray's log files
unless the job runs verbose, so the driver learns of each round from the Train controller: a
``UserCallback`` there forwards every collected report to a queue that a driver thread follows.
Only reports the controller has collected are shown, so a round on the screen is a round a
resumed run will not repeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from queue import Empty

from ray.train import UserCallback
from ray.util.queue import Queue
from tqdm import tqdm

logger = logging.getLogger(__name__)


def merge_workers(metrics: list[dict]) -> dict:
    """One round's metrics: rank 0's, with the loss and its terms averaged over the workers
    (each worker's are the mean over its own shard's batches)."""
    merged = dict(metrics[0])
    for key in ["loss", *merged.get("loss_parts", [])]:
        values = [m[key] for m in metrics if key in m]
        if values:
            merged[key] = sum(values) / len(values)
    return merged


def format_round(metrics: dict, rounds: int) -> str:
    """``round 3/15  loss 4.2101 (ic 3.9, fine 0.21, coarse 0.11)  E-step 2.3 s  812 samples/s``."""
    terms = ", ".join(f"{k} {metrics[k]:.3f}" for k in metrics.get("loss_parts", []) if k in metrics)
    return (
        f"round {metrics['round'] + 1}/{rounds}  loss {metrics['loss']:.4f}{f' ({terms})' if terms else ''}"
        f"  E-step {metrics['e_step_seconds']:.1f} s  {metrics['samples_per_second']:.0f} samples/s"
    )


class ForwardReports(UserCallback):
    """Runs on the Train controller: puts ``("round", metrics)`` and ``("failure", text)`` on ``queue``."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def _put(self, item: tuple) -> None:
        # The controller's loop is asyncio: a blocking put (ray.get) would stall its polling.
        self.queue.actor.put_nowait.remote(item)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self._put(("round", merge_workers(metrics)))

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        errors = "; ".join(f"worker {rank}: {_last_line(e)}" for rank, e in sorted(worker_exceptions.items()))
        self._put(("failure", errors))


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1][:200] if text else type(error).__name__


class RoundProgress:
    """Driver side: follows the queue on a thread, drawing a bar over ``rounds`` and calling
    ``on_round(metrics)`` for each round as it arrives."""

    def __init__(self, rounds: int, on_round: Callable[[dict], None] | None = None, show: bool = True):
        self.rounds, self.on_round, self.last_round = rounds, on_round, -1
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.callback = ForwardReports(self.queue)
        self._bar = tqdm(total=rounds, desc="train", unit="round", disable=not show, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="rayhash-train-progress", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while True:
            try:
                kind, item = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            if kind == "failure":
                self._bar.write(f"worker failure, resuming from the latest checkpoint: {item}")
                continue
            self.last_round = item["round"]
            self._bar.write(format_round(item, self.rounds))
            self._bar.update(item["round"] + 1 - self._bar.n)
            if self.on_round is not None:
                try:
                    self.on_round(item)
                except Exception:  # the run goes on; so does the bar
                    logger.exception("on_round failed for round %d", item["round"])

    def close(self, final_round: int | None = None, wait_s: float = 5.0) -> None:
        """Stop following (after the run's ``final_round`` arrives, or ``wait_s``) and free the queue."""
        deadline = time.monotonic() + wait_s
        while final_round is not None and self.last_round < final_round and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        self._bar.close()
        self.queue.shutdown(force=True)


def format_summary(title: str, blocks: Sequence[str], written: dict[str, str]) -> str:
    """The block a job ends with: its results (``blocks`` of text, such as the mAP table), then
    every path it ``written``, set off by rules from the log lines above."""
    blocks = [b for b in blocks if b]
    width = min(100, max([72, *(len(line) for b in blocks for line in b.splitlines())]))
    pad = max((len(k) for k in written), default=0)
    lines = ["", f"== {title} ".ljust(width, "=")]
    for block in blocks:
        lines += [block, ""]
    lines += ["written:", *(f"  {k.ljust(pad)}  {v}" for k, v in written.items()), "=" * width]
    return "\n".join(lines)

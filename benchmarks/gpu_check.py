"""The GPU check: DSCH trains, clusters and encodes on CUDA, timed, and its mAP@1000 on the protocol.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json --data.path=.devdata/fashion-mnist \\
        --run.rounds=120 --run.loader_workers=6 [--model.backbone=small_cnn ...]

Run by ``scripts/device_check.sh`` on a machine the device tool lends. That machine has torch but
no Ray (its wheel is larger than what may travel there), so this trains through
:func:`rayhash.train.loop.run_rounds` in one process: the loop each Ray Train worker runs, with
identity collectives. Arguments after ``--out`` override ``configs/fmnist-dsch-<bits>.yaml``
(``--bits``, default 64). Recorded: per-round E-step and M-step seconds and samples/s, mAP@1000
every ``--every`` rounds and at the end (binary codes, the same harness as ``rayhash eval``),
and encoding images/s of the whole 70,000 images on the GPU against a plain PyTorch loop on the
machine's CPU cores over the same model (``--cpu-images`` of them). ``--allow-cpu`` runs it on a
machine without CUDA (the suite's smoke test); its figures then say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from protocol_scores import model_map, query_then_database
from results_io import command_line, hardware, write_result
from rayhash.config import load, to_dict
from rayhash.models.encoder import ImageEncoder
from rayhash.evaluate import encode_images
from rayhash.models import build_model
from rayhash.train.config import TrainConfig
from rayhash.train.loop import load_split, run_rounds

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


def images_per_second(encoder: ImageEncoder, images: np.ndarray, batch_size: int) -> float:
    encoder.encode(images[:batch_size])  # warm-up: cuDNN picks its kernels, threads spin up
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    encode_images(encoder, images, batch_size=batch_size)  # returns numpy, so the GPU has finished
    return len(images) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where the JSON goes")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--every", type=int, default=20, help="score mAP@1000 every this many rounds")
    parser.add_argument("--cpu-images", type=int, default=5000, help="images for the CPU encoding reference")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (smoke test only)")
    args, overrides = parser.parse_known_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device here: run this on a GPU machine, or pass --allow-cpu for a smoke test", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load(TrainConfig, os.path.join(CONFIGS, f"fmnist-dsch-{args.bits}.yaml"), overrides)
    data, split = load_split(cfg.data)
    rounds, map_by_round, last = [], {}, {}

    def score(payload: dict) -> tuple[float, torch.nn.Module]:
        model = build_model(cfg.model)
        model.load_state_dict(payload["model"])
        return model_map(model, data, split, device), model

    t0 = time.perf_counter()

    def save(**extra) -> dict:
        # Written after every scored round too: a run stopped at its time limit leaves what it measured.
        result = {
            "command": command_line(), "hardware": hardware(), "device": str(device), "config": to_dict(cfg),
            "finished": False, "rounds_done": len(rounds), "train_seconds": time.perf_counter() - t0,
            "map_by_round": map_by_round,
            "median_round": {k: float(np.median([r[k] for r in rounds])) for k in
                             ("e_step_seconds", "m_step_seconds", "samples_per_second")},
            "rounds": rounds, **extra,
        }  # fmt: skip
        write_result(args.out, result)
        return result

    def report(metrics: dict, payload: dict | None) -> None:
        rounds.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        r = metrics["round"]
        if payload is not None and (r % args.every == args.every - 1 or r == cfg.run.rounds - 1):
            map_by_round[str(r)], last["model"] = score(payload)
            save()
            print(f"round {r}: mAP@1000 {map_by_round[str(r)]:.4f}, {metrics['samples_per_second']:.0f} samples/s, "
                  f"E-step {metrics['e_step_seconds']:.2f} s, {time.perf_counter() - t0:.0f} s so far", flush=True)  # fmt: skip

    run_rounds(cfg, device=device, report=report)
    train_seconds = time.perf_counter() - t0

    model = last["model"]
    gpu_rate = images_per_second(ImageEncoder(model, device=device, batch_size=1024), data.images[query_then_database(split)], 1024)
    torch.set_num_threads(os.cpu_count() or 1)
    cpu_rate = images_per_second(ImageEncoder(model, device="cpu", batch_size=256), data.images[: args.cpu_images], 256)
    result = save(finished=True, train_seconds=train_seconds, map_at_1000=map_by_round[str(cfg.run.rounds - 1)],
                  encode={"device_images_per_second": gpu_rate, "cpu_images_per_second": cpu_rate,
                          "cpu_threads": torch.get_num_threads(), "device_over_cpu": gpu_rate / cpu_rate})  # fmt: skip
    print({k: result[k] for k in ("device", "train_seconds", "map_at_1000", "median_round", "encode")})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Asked: which weight-averaging window serves best? One run scores several windows at once.

    python benchmarks/experiments/swa_windows.py LABEL --run.seed=1 --method.seed=1 --run.torch_threads=1 \\
        --run.rounds=120

Trains configs/fmnist-dsch-64.yaml (plus the overrides given) in one process with averaging off,
feeds the live weights after every round to one running mean per window start (``STARTS``,
default 40,60,80,100, counted from 0 as ``optim.swa_start`` is), and after the last round scores
each mean, batch-norm statistics re-measured as ``rayhash.train.averaging`` does, beside the live
weights after rounds 60, 100 and the last. Averaging never changes the training trajectory, so
one run answers for every window. Building a model each round draws from torch's global
generator, so the augmentations (and the run's figures) differ from a run without this script.
Prints one JSON line; the rows swa-windows-* in benchmarks/results/fmnist_recipe_pilots.json
came from it.
"""

import argparse
import json
import os
import time

import torch
from protocol_scores import model_map

from rayhash.config import load
from rayhash.models import build_model
from rayhash.train.averaging import WeightAverage
from rayhash.train.config import TrainConfig
from rayhash.train.loop import eval_batches, load_split, run_rounds

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "fmnist-dsch-64.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label", help="the run's name in the printed JSON")
    args, overrides = parser.parse_known_args()
    label = args.label
    starts = [int(s) for s in os.environ.get("STARTS", "40,60,80,100").split(",")]
    cfg = load(TrainConfig, CONFIG, ["--optim.swa_start=-1", *overrides])
    data, split = load_split(cfg.data)
    shard = data.images[split.train]
    means = {s: WeightAverage() for s in starts}
    out: dict = {"label": label, "overrides": overrides, "windows": {}}
    t0 = time.perf_counter()
    last = cfg.run.rounds - 1

    def report(metrics: dict, payload: dict | None) -> None:
        r = metrics["round"]
        model = build_model(cfg.model)
        model.load_state_dict(payload["model"])
        for start, mean in means.items():
            if r >= start:
                mean.update(model)
        if r in (59, 99, last):
            out[f"live_{r}"] = round(model_map(model, data, split, "cpu"), 4)
        if r == last:
            for start, mean in means.items():
                averaged = mean.averaged_model(model, eval_batches(model, shard, torch.device("cpu")))
                out["windows"][f"{start + 1}-{r + 1}"] = round(model_map(averaged, data, split, "cpu"), 4)
            out["seconds"] = round(time.perf_counter() - t0)
            print(json.dumps(out), flush=True)

    run_rounds(cfg, device=torch.device("cpu"), report=report)


if __name__ == "__main__":
    main()

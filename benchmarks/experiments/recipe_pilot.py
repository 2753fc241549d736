"""Asked: does a change to a recipe (a config override) raise mAP@1000 on Fashion-MNIST?

    EVERY=10 python benchmarks/experiments/recipe_pilot.py M1-mlp-abl --model.backbone=mlp \\
        --method.ablation=true --optim.batch_size=64 --optim.lr=0.001 --run.rounds=30

Trains in one process through ``rayhash.train.loop.run_rounds`` and prints one JSON line with
mAP@1000 on the protocol every ``EVERY`` rounds. Arguments: a label, ``--config`` (default
configs/fmnist-dsch-64.yaml), then overrides of it. ``FLOAT=1`` adds the cosine mAP of the continuous codes, ``FEAT=1``
that of the backbone's features (before the hash head). Its rows, each with the commit it ran
on: benchmarks/results/fmnist_recipe_pilots.json.
"""

import argparse
import json
import os
import time

import torch
from protocol_scores import cosine_map, features_and_preactivations, model_map, query_then_database

from rayhash.config import load
from rayhash.models import build_model
from rayhash.models.encoder import ImageEncoder
from rayhash.train.config import TrainConfig
from rayhash.train.loop import load_split, run_rounds

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "fmnist-dsch-64.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label", help="the run's name in the printed JSON")
    parser.add_argument("--config", default=CONFIG, help="the recipe the overrides change")
    args, overrides = parser.parse_known_args()
    label = args.label
    every = int(os.environ.get("EVERY", "3"))
    cfg = load(TrainConfig, args.config, overrides)
    data, split = load_split(cfg.data)
    images = data.images[query_then_database(split)]
    t0 = time.perf_counter()

    def report(metrics: dict, payload: dict | None) -> None:
        r = metrics["round"]
        if payload is None or not (r % every == every - 1 or r == cfg.run.rounds - 1):
            return
        model = build_model(cfg.model)
        model.load_state_dict(payload["model"])
        score = model_map(model, data, split, "cpu")
        extra = {}
        if os.environ.get("FLOAT"):  # how much of the gap is binarisation: cosine mAP of the continuous codes
            h = ImageEncoder(model, device="cpu").encode_continuous(images)
            extra["float_map"] = round(cosine_map(h, data, split), 4)
        if os.environ.get("FEAT"):  # how much the hash head loses: cosine mAP of the backbone's features
            f, _ = features_and_preactivations(ImageEncoder(model, device="cpu"), images)
            extra["feat_map"] = round(cosine_map(f, data, split), 4)
        print(
            json.dumps(
                {
                    "label": label,
                    "round": r,
                    "map": round(score, 4),
                    **extra,
                    "loss": round(metrics["loss"], 3),
                    "seconds": round(time.perf_counter() - t0),
                }
            ),
            flush=True,
        )

    run_rounds(cfg, device=torch.device("cpu"), report=report)


if __name__ == "__main__":
    main()

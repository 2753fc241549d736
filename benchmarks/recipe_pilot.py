"""Recipe pilots: train in one process (no Ray) and print mAP@1000 on the Fashion-MNIST protocol
every ``EVERY`` rounds. The README's "what was tried" figures came from it.

    EVERY=10 python benchmarks/recipe_pilot.py M1-mlp-abl --model.backbone=mlp --method.ablation=true \\
        --optim.batch_size=64 --optim.lr=0.001 --run.rounds=30

Arguments: a label, then overrides of configs/fmnist-dsch-64.yaml. ``FLOAT=1`` adds the cosine
mAP of the continuous codes, ``FEAT=1`` that of the backbone's features (before the hash head).
The pilots so far: benchmarks/results/fmnist_recipe_pilots.json.
"""

import json
import os
import sys
import time

import numpy as np
import torch

from rayhash.config import load
from rayhash.encoder import ImageEncoder
from rayhash.evaluate import encode_images
from rayhash.metrics import average_precision, map_at_k
from rayhash.models import build_model
from rayhash.train.config import TrainConfig
from rayhash.train.loop import load_split, run_rounds


def cosine_map(vectors: torch.Tensor, query_labels: np.ndarray, db_labels: np.ndarray, k: int = 1000) -> float:
    """mAP@k of a float ranking by cosine similarity; ``vectors`` holds the queries, then the database."""
    v = torch.nn.functional.normalize(vectors.float(), dim=1)
    nq = len(query_labels)
    top = torch.topk(v[:nq] @ v[nq:].T, k, dim=1).indices.numpy()
    return round(float(average_precision(db_labels[top] == query_labels[:, None]).mean()), 4)


def main() -> None:
    label, overrides = sys.argv[1], sys.argv[2:]
    every = int(os.environ.get("EVERY", "3"))
    cfg = load(TrainConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "fmnist-dsch-64.yaml"), overrides)
    data, split = load_split(cfg.data)
    positions = np.concatenate([split.query, split.database])
    nq = len(split.query)
    t0 = time.perf_counter()

    def report(metrics: dict, payload: dict | None) -> None:
        r = metrics["round"]
        if payload is None or not (r % every == every - 1 or r == cfg.run.rounds - 1):
            return
        model = build_model(cfg.model)
        model.load_state_dict(payload["model"])
        packed = encode_images(ImageEncoder(model, device="cpu"), data.images[positions])
        score = map_at_k(packed[:nq], packed[nq:], data.labels[split.query], data.labels[split.database], 1000)
        extra = {}
        if os.environ.get("FLOAT"):  # how much of the gap is binarisation: cosine mAP of the continuous codes
            h = ImageEncoder(model, device="cpu").encode_continuous(data.images[positions])
            extra["float_map"] = cosine_map(h, data.labels[split.query], data.labels[split.database])
        if os.environ.get("FEAT"):  # how much the hash head loses: cosine mAP of the backbone's features
            batch = ImageEncoder(model, device="cpu").preprocess(data.images[positions])
            with torch.inference_mode():
                f = torch.cat([model.eval().backbone(batch[i:i + 1024]) for i in range(0, len(batch), 1024)])
            extra["feat_map"] = cosine_map(f, data.labels[split.query], data.labels[split.database])
        print(json.dumps({"label": label, "round": r, "map": round(score, 4), **extra, "loss": round(metrics["loss"], 3),
                          "seconds": round(time.perf_counter() - t0)}), flush=True)

    run_rounds(cfg, device=torch.device("cpu"), report=report)


if __name__ == "__main__":
    main()

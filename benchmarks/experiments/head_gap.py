"""Asked: where does a trained model lose retrieval quality: backbone features, hash head or sign?

    python benchmarks/experiments/head_gap.py CHECKPOINT [CHECKPOINT ...] --out head_gap.json

For each checkpoint, on the Fashion-MNIST protocol (PROTOCOL.md), mAP@1000 of:

- ``binary``: the model's codes by Hamming distance (what ``rayhash eval`` reports);
- ``float``: the continuous codes ``tanh(head(f))`` by cosine: binarisation's share is float - binary;
- ``features``: the backbone's features ``f`` by cosine: the hash head's share is features - float;
- ``itq_on_features``: ITQ (PCA + rotation, fitted on the 5,000 training images, no labels) on the
  L2-normalised features, as a yardstick of what a linear 64-bit hash of these features reaches;
- ``head_rotated``: the model's head pre-activations turned by an ITQ rotation fitted on the
  training images (the head stays one linear layer), i.e. what a better-placed sign could recover.

Diagnostics only: none of these codes is DSCH's, and rayhash ships none of them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import numpy as np
import torch
import torch.nn.functional as F
from protocol_scores import cosine_map, features_and_preactivations, packed_map, query_then_database

from rayhash import storage
from rayhash.baselines import create_baseline
from rayhash.codespec import binary as codes
from rayhash.config import from_dict
from rayhash.models.checkpoint import load as load_checkpoint
from rayhash.models.encoder import ImageEncoder
from rayhash.train.config import DataConfig
from rayhash.train.loop import load_split


def head_gap(uri: str, seed: int = 0) -> dict:
    ckpt = load_checkpoint(uri)
    data, split = load_split(from_dict(DataConfig, ckpt.config["data"]))
    encoder = ImageEncoder.from_checkpoint(uri, device="cpu")
    nbits = encoder.nbits

    def hamming_map(bits: np.ndarray) -> float:
        return packed_map(codes.pack(bits), data, split)

    feats, pre = features_and_preactivations(encoder, data.images[query_then_database(split)])
    train_feats, train_pre = features_and_preactivations(encoder, data.images[split.train])
    unit = F.normalize(feats, dim=1).numpy()
    itq_feat = create_baseline("itq").fit(F.normalize(train_feats, dim=1).numpy(), nbits, seed=seed)
    itq_head = create_baseline("itq").fit(train_pre.numpy(), nbits, seed=seed)
    return {
        "checkpoint": ckpt.uri,
        "checkpoint_sha256": ckpt.sha256,
        "round": ckpt.progress.get("round"),
        "method": ckpt.config["method"]["name"],
        "ablation": ckpt.config["method"].get("ablation"),
        "seed": ckpt.config["run"].get("seed"),
        "bits": nbits,
        "train_images": len(split.train),
        "map_at_1000": {
            "binary": hamming_map(pre.numpy() > 0),
            "float": cosine_map(torch.tanh(pre), data, split),
            "features": cosine_map(feats, data, split),
            "itq_on_features": hamming_map(itq_feat.encode(unit)),
            "head_rotated": hamming_map(itq_head.encode(pre.numpy())),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", required=True, help="where the JSON goes (local path or s3://)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for uri in args.checkpoints:
        rows.append(head_gap(uri))
        print({k: round(v, 4) for k, v in rows[-1]["map_at_1000"].items()}, flush=True)
    # Mean over the checkpoints (seeds) of each round: rows of different rounds are not averaged.
    means = {}
    for r in sorted({row["round"] for row in rows}, key=lambda x: (x is None, x)):
        same = [row["map_at_1000"] for row in rows if row["round"] == r]
        means[str(r)] = {"n": len(same), **{key: float(np.mean([m[key] for m in same])) for key in same[0]}}
        print(f"round {r}, mean of {len(same)}:", {k: round(v, 4) for k, v in means[str(r)].items()})
    result = {
        "protocol": "fmnist-1k",
        "command": "python " + shlex.join(sys.argv),
        "mean_by_round": means,
        "rows": rows,
    }
    storage.write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

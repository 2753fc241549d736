"""LSH and ITQ on raw Fashion-MNIST pixels under the fmnist-1k protocol (PROTOCOL.md).

Checks the metric against the reference figures the protocol quotes. Prints one row per
method and code length; ``--json PATH`` also writes the full evaluations (P@N, PR curves).

    python benchmarks/baselines_fmnist.py [--seeds 0,1,2] [--json out/baselines.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rayhash import storage
from rayhash.baselines import create_baseline
from rayhash.codespec import binary as codes
from rayhash.data import load_fashion_mnist, protocol_split
from rayhash.metrics import evaluate_codes

REFERENCE = {"lsh": {16: 0.502, 32: 0.550, 64: 0.621}, "itq": {16: 0.616, 32: 0.670, 64: 0.694}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--json", default=None, help="write every evaluation here (local path or s3://)")
    args = parser.parse_args()

    data = load_fashion_mnist(args.root)
    split = protocol_split("fmnist-1k", data.labels)
    pixels = data.images.reshape(len(data), -1).astype(np.float32) / 255.0
    labels = data.labels
    results = []
    print(f"{'method':6} {'bits':>4} {'seed':>4} {'mAP@1000':>9} {'reference':>9} {'seconds':>8}")
    for name in REFERENCE:
        for nbits in (int(b) for b in args.bits.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                start = time.perf_counter()
                model = create_baseline(name).fit(pixels[split.train], nbits, seed=seed)
                db = codes.pack(model.encode(pixels[split.database]))
                queries = codes.pack(model.encode(pixels[split.query]))
                ev = evaluate_codes(queries, db, labels[split.query], labels[split.database], nbits)
                seconds = time.perf_counter() - start
                print(
                    f"{name:6} {nbits:4d} {seed:4d} {ev['map_at_k']:9.4f} {REFERENCE[name][nbits]:9.3f} {seconds:8.1f}"
                )
                results.append({"method": name, "nbits": nbits, "seed": seed, "seconds": seconds, **ev})
    if args.json:
        storage.write_text_atomic(args.json, json.dumps(results))


if __name__ == "__main__":
    main()

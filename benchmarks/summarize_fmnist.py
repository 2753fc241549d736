"""Summarise benchmarks/results/fmnist_map.json: mean and spread over seeds, as Markdown and a PNG.

    python benchmarks/summarize_fmnist.py      # prints the table, writes results/fmnist_map.png

The table is the README's quality table (benchmarks/readme_tables.py writes it there).
"""

import json
import os

from readme_tables import HEADLINE_TRAIN_IMAGES, quality_table

from rayhash.plots import plot_map_table

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    rows = json.load(open(os.path.join(HERE, "results", "fmnist_map.json")))["rows"]
    print(quality_table(rows))
    for r in rows:  # PROTOCOL.md's second row (the whole database, no labels) keeps its own label
        if r.get("train_images", HEADLINE_TRAIN_IMAGES) != HEADLINE_TRAIN_IMAGES:
            r["method"] = f"{r['method']} (trained on {r['train_images']:,} images)"
    plot_map_table(
        [{"method": r["method"], "nbits": r["bits"], "map": r["map_at_1000"]} for r in rows],
        os.path.join(HERE, "results", "fmnist_map.png"),
        title="Fashion-MNIST mAP@1000 (mean, sd over seeds)",
    )


if __name__ == "__main__":
    main()

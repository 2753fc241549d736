"""Build an index set from a code set.

    python jobs/build_index.py --codeset=s3://bucket/codes --out=s3://bucket/index \
        [--config=index.yaml] [--num_shards=4] [--kind=ivf] [--nlist=4096] [--nprobe=256]

Keys are those of ``rayhash.index.IndexBuildConfig``. On a cluster, submit it as a Ray job:
``ray job submit --working-dir . -- python jobs/build_index.py ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rayhash import config
from rayhash.index import IndexBuildConfig, build_from_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of IndexBuildConfig keys")
    args, overrides = parser.parse_known_args(argv)
    cfg = config.load(IndexBuildConfig, args.config, overrides)
    m = build_from_config(cfg)
    print(json.dumps({"index": m.uri, "kind": m.kind, "params": m.params, "shards": len(m.shards),
                      "items": m.items, "nbits": m.nbits, "manifest_sha256": m.sha256}))  # fmt: skip
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(main())

"""``rayhash encode`` and ``jobs/encode.py``: parse a config, join Ray, run the job, print a summary.

rayhash encode --config configs/encode-fmnist.yaml --output=s3://bucket/codes --num_actors=4
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rayhash.config import load

DESCRIPTION = "Encode an image lake (folder, s3:// prefix, list file or Parquet) into a code set."


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``encode`` on the ``rayhash`` command's subparsers."""
    p = sub.add_parser(
        "encode",
        help=DESCRIPTION,
        description=DESCRIPTION,
        epilog="Override any config key: --output=s3://bucket/codes --num_actors=4",
    )
    p.add_argument("--config", help="YAML config (local or s3://); keys are rayhash.encode.EncodeConfig's")
    p.set_defaults(func=cmd_encode)


def cmd_encode(ns: argparse.Namespace, overrides: Sequence[str]) -> int:
    from rayhash.encode import EncodeConfig, run_encode
    from rayhash.ray_utils import ensure_ray

    cfg = load(EncodeConfig, ns.config, overrides)  # a bad key stops here, before Ray starts
    ensure_ray(verbose=ns.verbose)
    manifest = run_encode(cfg)
    health = {k: v for k, v in manifest.health.items() if k != "bit_balance"}
    print(json.dumps({"code_set": manifest.uri, "manifest_sha256": manifest.sha256, **manifest.counts, **health}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``rayhash encode ARGV``: the exit code, 2 for a config error."""
    from rayhash.cli import main as rayhash_main

    return rayhash_main(["encode", *(sys.argv[1:] if argv is None else argv)])

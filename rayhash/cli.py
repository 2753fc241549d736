"""The ``rayhash`` command line: parse, connect to Ray where needed, call one library function.

    rayhash train --config configs/fmnist-dsch-64.yaml [--run.num_workers=2 ...]
    rayhash eval --checkpoint runs/dsch-fmnist/checkpoint_... [--protocol fmnist-1k]

Every ``--section.key=value`` after the named options overrides the YAML config; unknown keys
and wrong types stop before any work with a message naming the key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster this process was submitted to (``ray job submit``), else start a local one."""
    from rayhash.ray_utils import ensure_ray

    if address or os.environ.get("RAY_ADDRESS"):
        ensure_ray(address=address or os.environ["RAY_ADDRESS"])
    else:
        ensure_ray(num_cpus=num_cpus, include_dashboard=False)


def cmd_train(ns: argparse.Namespace, overrides: list[str]) -> int:
    from rayhash.config import dump_yaml, load
    from rayhash.train.config import TrainConfig
    from rayhash.train.trainer import train_job

    cfg = load(TrainConfig, ns.config, overrides)
    logger.info("resolved config:\n%s", dump_yaml(cfg))
    connect_ray(ns.address, ns.num_cpus)
    result = train_job(cfg)
    print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_eval(ns: argparse.Namespace, overrides: list[str]) -> int:
    from rayhash import storage
    from rayhash.models import checkpoint
    from rayhash.config import from_dict, replace
    from rayhash.train.config import DataConfig, EvalConfig, TrainConfig
    from rayhash.train.trainer import evaluate_run

    saved = checkpoint.load(ns.checkpoint).config
    cfg = from_dict(TrainConfig, saved)
    data = cfg.data if ns.protocol is None else replace(cfg.data, protocol=ns.protocol)
    if ns.data_path:
        data = replace(data, path=ns.data_path)
    output = ns.output or storage.join(ns.checkpoint, "eval")
    cfg = replace(cfg, data=from_dict(DataConfig, data.__dict__),
                  eval=EvalConfig(k=ns.k, output=output, baselines=tuple(ns.baselines)))
    evaluate_run(cfg, ns.checkpoint)
    return 0


def cmd_quickstart(ns: argparse.Namespace, overrides: list[str]) -> int:
    from rayhash.config import dump_yaml, load
    from rayhash.quickstart import QuickstartConfig, run

    cfg = load(QuickstartConfig, ns.config, overrides)
    logger.info("resolved config:\n%s", dump_yaml(cfg))
    connect_ray(ns.address, ns.num_cpus)
    run(cfg)
    return 0


def cmd_index(ns: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from rayhash.config import load
    from rayhash.index import IndexBuildConfig, build_from_config

    m = build_from_config(load(IndexBuildConfig, ns.config, overrides))
    print(json.dumps({"index": m.uri, "kind": m.kind, "params": m.params, "shards": len(m.shards),
                      "items": m.items, "nbits": m.nbits, "manifest_sha256": m.sha256}))
    return 0


def cmd_serve(ns: argparse.Namespace, overrides: list[str]) -> int:
    import time

    from rayhash.config import apply_overrides, from_dict
    from rayhash.serve import ServeConfig, start

    options = apply_overrides({}, overrides)
    from_dict(ServeConfig, {**options, "index": ns.index})  # a bad key stops here, before Ray starts
    connect_ray(ns.address, ns.num_cpus)
    url = start(ns.index, ns.checkpoint, host=ns.host, port=ns.port, **options)
    print(f"rayhash search answering at {url} (OpenAPI docs at {url}/docs); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def _protocol_name(text: str) -> str:
    # "fmnist" and "cifar10" are the short names users type; the splits are named by PROTOCOL.md.
    return {"fmnist": "fmnist-1k", "cifar10": "cifar10-1"}.get(text, text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayhash", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a hashing model on Ray Train, then evaluate it")
    p.add_argument("--config", help="YAML config (local or s3://); defaults are rayhash.train.config.TrainConfig")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster, when one is started")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="mAP@k, P@N and PR curves of a checkpoint on a protocol split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--protocol", type=_protocol_name, help="split name (fmnist, fmnist-1k, cifar10, ...); default: the run's")
    p.add_argument("--data-path", help="where the source's data is, if not where the run found it")
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--baselines", nargs="*", default=["itq", "lsh"], help="baselines scored beside the checkpoint")
    p.add_argument("--output", help="report folder (default: <checkpoint>/eval)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("index", help="build faiss binary index shards from a code set (--codeset=... --out=...)")
    p.add_argument("--config", help="YAML of rayhash.index.IndexBuildConfig keys")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("serve", help="serve Hamming search over an index set on Ray Serve (blocks)")
    p.add_argument("--index", required=True, help="index-set directory (local or s3://)")
    p.add_argument("--checkpoint", help="encoder checkpoint (default: the one that wrote the code set)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster, when one is started")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("quickstart", help="train -> evaluate -> encode -> index -> serve -> query, on one machine")
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster, when one is started")
    p.set_defaults(func=cmd_quickstart)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


def _encode_parser(sub: argparse._SubParsersAction) -> None:
    from rayhash.encode.cli import add_parser

    add_parser(sub)


# Later stages register their subcommands here; each module owns its parser and command.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_encode_parser]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    # What argparse does not know is a config override, and must look like one.
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --section.key=value)")
    overrides = rest
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rayhash.config import ConfigError

    try:
        return ns.func(ns, overrides)
    except ConfigError as e:
        parser.exit(2, f"rayhash {ns.command}: config error: {e}\n")
    return 0

"""The ``rayhash`` command line: parse, connect to Ray where needed, call one library function.

    rayhash train --config configs/fmnist-dsch-64.yaml [--run.num_workers=2 ...]
    rayhash eval --checkpoint runs/dsch-fmnist/checkpoint_... [--protocol fmnist-1k]
    rayhash quickstart [--method=dcuh] [--keep_serving=false ...]

Every ``--section.key=value`` after the named options overrides the YAML config, read as the
field's type (``rayhash.config``). ``rayhash eval`` applies them to the config saved with the
checkpoint; its named options (``--protocol``, ``--k``, ...) win over the same keys given as
overrides. An unknown key, a value of the wrong type or an unreadable config file stops every
subcommand before any work, with one line on stderr and exit code 2. ``-v`` shows debug logs,
and Ray's own logs on the terminal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayhash.train.config import TrainConfig

logger = logging.getLogger(__name__)


def connect_ray(
    address: str | None = None, num_cpus: int | None = None, verbose: bool = False, serving: bool = False
) -> None:
    """Join the cluster this process was submitted to (``ray job submit``), else start a local one.

    ``serving``: a local cluster started here runs Serve's fastest path (``RAY_SERVE_THROUGHPUT_OPTIMIZED``:
    user code on the replicas' own event loops, gRPC between deployments, and each ingress replica
    answering HTTP on its own port, skipping the proxy's hop). It must be in the environment
    before Ray starts; set it to 0 to keep Serve's defaults. A cluster's own setting is its own."""
    from rayhash.ray_utils import ensure_ray

    if address or os.environ.get("RAY_ADDRESS"):
        ensure_ray(address=address or os.environ["RAY_ADDRESS"], verbose=verbose)
    else:
        if serving:
            os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        ensure_ray(num_cpus=num_cpus, include_dashboard=False, verbose=verbose)


def cmd_train(ns: argparse.Namespace, overrides: list[str]) -> int:
    from rayhash.config import dump_yaml, load
    from rayhash.train.config import TrainConfig
    from rayhash.train.trainer import train_job

    cfg = load(TrainConfig, ns.config, overrides)
    logger.debug("resolved config:\n%s", dump_yaml(cfg))
    connect_ray(ns.address, ns.num_cpus, ns.verbose)
    train_job(cfg, verbose=ns.verbose)
    return 0


def eval_config(
    saved: dict,
    checkpoint_uri: str,
    overrides: Sequence[str] = (),
    *,
    protocol: str | None = None,
    data_path: str | None = None,
    k: int | None = None,
    baselines: Sequence[str] | None = None,
    output: str | None = None,
) -> TrainConfig:
    """What ``rayhash eval`` scores with: the run's saved config, its eval section reset to the
    command's defaults, then ``overrides``, then the named options that were given."""
    from rayhash import storage
    from rayhash.config import apply_overrides, from_dict
    from rayhash.train.config import TrainConfig, saved_config

    eval_defaults = {"k": 1000, "output": storage.join(checkpoint_uri, "eval"), "baselines": ["itq", "lsh"]}
    data = apply_overrides({**saved_config(saved), "eval": eval_defaults}, overrides)
    named = {
        ("data", "protocol"): protocol,
        ("data", "path"): data_path,
        ("eval", "k"): k,
        ("eval", "baselines"): None if baselines is None else list(baselines),
        ("eval", "output"): output,
    }
    for (section, key), value in named.items():
        if value is not None:
            data.setdefault(section, {})[key] = value
    return from_dict(TrainConfig, data)


def cmd_eval(ns: argparse.Namespace, overrides: list[str]) -> int:
    from rayhash.config import load
    from rayhash.models import checkpoint
    from rayhash.train.config import TrainConfig
    from rayhash.train.trainer import evaluate_run

    load(TrainConfig, None, overrides)  # a bad key or value stops here, before the checkpoint is read
    saved = checkpoint.load(ns.checkpoint).config
    cfg = eval_config(
        saved,
        ns.checkpoint,
        overrides,
        protocol=ns.protocol,
        data_path=ns.data_path,
        k=ns.k,
        baselines=ns.baselines,
        output=ns.output,
    )
    evaluate_run(cfg, ns.checkpoint)
    return 0


def cmd_quickstart(ns: argparse.Namespace, overrides: list[str]) -> int:
    from rayhash.config import dump_yaml
    from rayhash.quickstart import load_config, run

    cfg = load_config(ns.config, ns.method, overrides)
    logger.debug("resolved config:\n%s", dump_yaml(cfg))
    connect_ray(ns.address, ns.num_cpus, ns.verbose, serving=True)
    run(cfg, verbose=ns.verbose)
    return 0


def cmd_index(ns: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from rayhash.config import load
    from rayhash.index import IndexBuildConfig, build_from_config
    from rayhash.index.build import check_build_config

    cfg = load(IndexBuildConfig, ns.config, overrides)
    check_build_config(cfg)  # a missing codeset or out is a ConfigError before Ray or any work
    if ns.address or os.environ.get("RAY_ADDRESS"):
        from rayhash.ray_utils import run_on_worker

        # Submitted to a cluster: build on a worker when the head takes no work; faiss's threads are its CPUs.
        connect_ray(ns.address, verbose=ns.verbose)
        m = run_on_worker(build_from_config, cfg, num_cpus=cfg.threads or 1)
    else:
        m = build_from_config(cfg)
    print(
        json.dumps(
            {
                "index": m.uri,
                "kind": m.kind,
                "params": m.params,
                "shards": len(m.shards),
                "items": m.items,
                "nbits": m.nbits,
                "code_kind": m.code_kind,
                "manifest_sha256": m.sha256,
            }
        )
    )
    return 0


def cmd_compact(ns: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from rayhash.config import ConfigError
    from rayhash.index.compact import compact

    if overrides:
        raise ConfigError(f"compact takes --index, --codeset-out, --out and --up-to only, not {' '.join(overrides)}")
    m = compact(ns.index, ns.codeset_out, ns.out, ns.up_to)
    print(json.dumps({"index": m.uri, "items": m.items, "shards": len(m.shards), "manifest_sha256": m.sha256}))
    return 0


def cmd_serve(ns: argparse.Namespace, overrides: list[str]) -> int:
    import dataclasses
    import time

    from rayhash.config import apply_overrides, from_dict
    from rayhash.serve import ServeConfig, start
    from rayhash.serve.app import direct_ingress_urls, http_address

    # A bad key or value stops here, before Ray starts.
    # The placement defaults to the fastest for the index (rayhash.serve.app.resolve_placement).
    given = {"index": ns.index, "checkpoint": ns.checkpoint, "shards_in_ingress": None}
    cfg = from_dict(ServeConfig, apply_overrides(given, overrides))
    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("index", "checkpoint")}
    connect_ray(ns.address, ns.num_cpus, ns.verbose, serving=True)
    url = start(cfg.index, cfg.checkpoint, host=ns.host, port=ns.port, **options)
    print(f"rayhash search answering at {url} (OpenAPI docs at {url}/docs); Ctrl-C stops", flush=True)
    replicas = direct_ingress_urls("rayhash")
    if len(replicas) > 1:  # each ingress replica's own port: clients spread over them (or a load balancer does)
        print(f"ingress replicas at {' '.join(replicas)}; Serve's proxy at {http_address()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def cmd_swap(ns: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from rayhash.config import apply_overrides, from_dict
    from rayhash.serve import ServeConfig

    options = apply_overrides({}, overrides)  # ServeConfig keys for the new version's deployments
    from_dict(ServeConfig, {**options, "index": ns.index})  # a bad key or value stops here, before Ray
    # The service runs in a cluster already: join it (the one on this machine by default).
    connect_ray(ns.address or os.environ.get("RAY_ADDRESS") or "auto", verbose=ns.verbose)
    from rayhash.serve.swap import swap

    print(json.dumps(swap(ns.index, ns.checkpoint, name=ns.name, **options)), flush=True)
    return 0


def _protocol_name(text: str) -> str:
    # "fmnist" and "cifar10" are the short names users type; the splits are named by PROTOCOL.md.
    return {"fmnist": "fmnist-1k", "cifar10": "cifar10-1"}.get(text, text)


VERBOSE_HELP = "debug logs, and Ray's own logs on the terminal (else they go to Ray's log files)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayhash", description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a hashing model on Ray Train, then evaluate it")
    p.add_argument("--config", help="YAML config (local or s3://); defaults are rayhash.train.config.TrainConfig")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster, when one is started")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="mAP@k, P@N and PR curves of a checkpoint on a protocol split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--protocol", type=_protocol_name, help="split name (fmnist, fmnist-1k, cifar10, ...); default: the run's"
    )
    p.add_argument("--data-path", help="where the source's data is, if not where the run found it")
    p.add_argument("--k", type=int, help="mAP@k (default 1000; the same as --eval.k=...)")
    p.add_argument(
        "--baselines",
        nargs="*",
        help="baselines scored beside the checkpoint (default: itq lsh); a pq checkpoint also gets pq unless none",
    )
    p.add_argument("--output", help="report folder (default: <checkpoint>/eval)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("index", help="build faiss binary index shards from a code set (--codeset=... --out=...)")
    p.add_argument("--config", help="YAML of rayhash.index.IndexBuildConfig keys")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else build in this process)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("compact", help="fold an index set's write log into a new code set and index set version")
    p.add_argument("--index", required=True, help="the index set whose write log to fold in (local or s3://)")
    p.add_argument("--codeset-out", required=True, help="where to write the new code set")
    p.add_argument("--out", required=True, help="where to write the new index set")
    p.add_argument("--up-to", type=int, help="the last write-log record to fold in (default: all)")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("serve", help="serve search over an index set (binary or pq codes) on Ray Serve (blocks)")
    p.add_argument("--index", required=True, help="index-set directory (local or s3://)")
    p.add_argument("--checkpoint", help="encoder checkpoint (default: the one that wrote the code set)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster, when one is started")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "swap", help="point a running search service at another index set, blue/green, with no failed request"
    )
    p.add_argument("--index", required=True, help="the index set to serve from now on (local or s3://)")
    p.add_argument("--checkpoint", help="its encoder checkpoint (default: the one that wrote its code set)")
    p.add_argument("--name", default="rayhash", help="the service's Serve application name")
    p.add_argument("--address", help="the service's Ray cluster (default: $RAY_ADDRESS, else the one on this machine)")
    p.set_defaults(func=cmd_swap)

    p = sub.add_parser("quickstart", help="train -> evaluate -> encode -> index -> serve -> query, on one machine")
    p.add_argument(
        "--config", help="YAML config (default: the --method's main-job config, DSCH's configs/quickstart.yaml)"
    )
    p.add_argument(
        "--method",
        "--method.name",
        dest="method",
        metavar="NAME",
        help="run this registered method's main-job config (dsch, dcuh, psch: configs/quickstart[-NAME].yaml)",
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster, when one is started")
    p.set_defaults(func=cmd_quickstart)

    for register in _EXTRA_COMMANDS:
        register(sub)
    for p in sub.choices.values():
        # Overrides are unknown options, so none may be read as an abbreviation of a named one.
        p.allow_abbrev = False
        # SUPPRESS: a -v before the subcommand is not undone by the subcommand's default.
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _encode_parser(sub: argparse._SubParsersAction) -> None:
    from rayhash.encode.cli import add_parser

    add_parser(sub)


# Later stages register their subcommands here; each module owns its parser and command.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_encode_parser]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; the exit code is returned: 0, or 2 for a config error (one line on stderr)."""
    from rayhash.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns, overrides = parser.parse_known_args(argv)
    try:
        # What argparse does not know is a config override, and must look like one.
        bad = [a for a in overrides if not (a.startswith("--") and "=" in a)]
        if bad:
            raise ConfigError(
                f"unrecognized arguments: {' '.join(bad)} (config overrides look like --section.key=value)"
            )
        # rayhash's own progress at INFO; other libraries (faiss's loader, ...) only warn. With -v,
        # rayhash's debug logs and the others' INFO (their DEBUG is per-file-open chatter).
        logging.basicConfig(
            level=logging.INFO if ns.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("rayhash").setLevel(logging.DEBUG if ns.verbose else logging.INFO)
        return ns.func(ns, overrides)
    except ConfigError as e:
        print(f"rayhash {ns.command}: config error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2

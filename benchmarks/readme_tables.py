"""Write the results tables of README.md and docs/results.md from the committed results, and the
key tables of docs/configuration.md and docs/methods.md from the config dataclasses, between
their markers.

    python benchmarks/readme_tables.py           # rewrite the blocks in README.md and docs/*.md
    python benchmarks/readme_tables.py --check   # exit 1, naming each block, where a file disagrees

A block is the text between ``<!-- results:NAME:start -->`` and ``<!-- results:NAME:end -->``
(``config:NAME`` for key tables). Everything outside the markers is left as written, so prose can
sit around a table while its numbers always come from benchmarks/results/*.json. Each registered
method's keys are the block ``config:train.method.NAME``; docs/configuration.md must hold every
config block, so a method registered without its table there fails the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BITS = (16, 32, 64)
# PROTOCOL.md's quality targets for DSCH's mean over seeds.
TARGETS = {16: 0.72, 32: 0.77, 64: 0.80}
HEADLINE_TRAIN_IMAGES = 5000  # PROTOCOL.md's training set; other sizes get a row of their own
# Table order; every one of these gets a row, with "—" where the results hold none yet.
METHOD_LABELS = {
    "itq": "ITQ on raw pixels",
    "lsh": "LSH on raw pixels",
    "pq": "PQ on raw pixels",
    "dsch-ablation": "DSCH ablation (plain NT-Xent)",
    "dsch": "DSCH",
    "dcuh-ablation": "DCUH ablation (invariance only)",
    "dcuh": "DCUH",
    "psch-ablation": "PSCH ablation (hard 0/1 targets)",
    "psch": "PSCH",
    "deepquan-ablation": "DeepQuan ablation (no triplet term)",
    "deepquan": "DeepQuan",
}
# Methods held to being ahead of a non-learned baseline of their kind of code (ITQ for binary codes,
# PQ for product-quantised ones, both on raw pixels) and of their own ablation at every length.
AHEAD_OF_CONTROLS = {"dcuh": "itq", "psch": "itq", "deepquan": "pq"}
SHORT_NAMES = {"itq": "ITQ", "pq": "PQ"}  # a baseline as the controls sentence names it
DASH = "—"
# the files whose blocks are written
FILES = ("README.md", "docs/results.md", "docs/configuration.md", "docs/methods.md")
EVERY_CONFIG_BLOCK = "docs/configuration.md"  # must hold every config block: every key of every stage
MARKER = re.compile(r"(<!-- (results|config):([\w.-]+):start -->\n)(.*?)(<!-- \2:\3:end -->)", re.S)


# --- results ----------------------------------------------------------------------------------


def _load(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text())


def _method_label(row: dict) -> str:
    label = METHOD_LABELS.get(row["method"], row["method"])
    images = row.get("train_images", HEADLINE_TRAIN_IMAGES)
    return label if images == HEADLINE_TRAIN_IMAGES else f"{label} (trained on {images:,} images)"


def quality_runs(rows: list[dict]) -> tuple[list[str], dict[tuple[str, int], list[float]]]:
    """Method labels in table order and mAP@1000 per (label, bits); also what summarize_fmnist.py plots."""
    runs: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        runs[(_method_label(r), int(r["bits"]))].append(float(r["map_at_1000"]))
    order = list(METHOD_LABELS.values())
    shown = {label for label, _ in runs} | set(order)
    labels = sorted(shown, key=lambda m: (order.index(m) if m in order else len(order), m))
    return labels, runs


def mean_sd(values: list[float]) -> str:
    if not values:
        return DASH
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def quality_table(rows: list[dict]) -> str:
    labels, runs = quality_runs(rows)
    lines = ["| method | " + " | ".join(f"{b} bits" for b in BITS) + " |", "| --- |" + " --- |" * len(BITS)]
    for label in labels:
        cells = []
        for b in BITS:
            v = runs.get((label, b), [])
            cell = mean_sd(v)
            if label == METHOD_LABELS["dsch"] and v and statistics.mean(v) >= TARGETS[b]:
                cell = f"**{cell}**"  # meets its target
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| target (DSCH mean) | " + " | ".join(f"{TARGETS[b]:.2f}" for b in BITS) + " |")
    hardware = sorted({r["hardware"] for r in rows if r.get("hardware")})
    lines += ["", quality_status(runs), *[controls_status(runs, m) for m in AHEAD_OF_CONTROLS]]
    lines += ["", "Measured on: " + ("; ".join(hardware) or DASH) + "."]
    return "\n".join(lines)


def quality_status(runs: dict[tuple[str, int], list[float]]) -> str:
    """One sentence: which of DSCH's targets its mean over seeds meets, with the numbers."""
    met, short = [], []
    for b in BITS:
        v = runs.get((METHOD_LABELS["dsch"], b))
        if not v:
            short.append(f"{b} bits (no rows)")
            continue
        m = statistics.mean(v)
        (met if m >= TARGETS[b] else short).append(f"{b} bits ({m:.3f} against {TARGETS[b]:.2f})")
    parts = ([f"meets its target at {_and(met)}"] if met else []) + ([f"falls short at {_and(short)}"] if short else [])
    return f"DSCH {', and '.join(parts)}."


def controls_status(runs: dict[tuple[str, int], list[float]], method: str) -> str:
    """One sentence: at which lengths ``method``'s mean is ahead of, or behind, its baseline's
    (:data:`AHEAD_OF_CONTROLS`) and its ablation's."""
    label, baseline = METHOD_LABELS[method], AHEAD_OF_CONTROLS[method]
    controls = {SHORT_NAMES[baseline]: METHOD_LABELS[baseline], "its ablation": METHOD_LABELS[f"{method}-ablation"]}
    present = [b for b in BITS if runs.get((label, b))]
    if not present:
        return f"{label} has no rows yet."
    clauses = []
    for name, control in controls.items():
        ahead, behind, alone = [], [], []
        for b in present:
            mean = statistics.mean(runs[(label, b)])
            if not runs.get((control, b)):
                alone.append(f"{b} bits")
                continue
            theirs = statistics.mean(runs[(control, b)])
            if mean > theirs:
                ahead.append(f"{b} bits")
            else:
                behind.append(f"{b} bits ({mean:.3f} against {theirs:.3f})")
        if ahead:
            clauses.append(f"ahead of {name} at {_and(ahead)}")
        if behind:
            clauses.append(f"behind {name} at {_and(behind)}")
        if alone:
            clauses.append(f"without {name} rows to compare with at {_and(alone)}")
    empty = [f"{b} bits" for b in BITS if b not in present]
    return f"{label} is {'; '.join(clauses)}" + (f"; no rows at {_and(empty)}." if empty else ".")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _num(value, fmt: str) -> str:
    return DASH if value is None else format(value, fmt)


def encode_table(result: dict) -> str:
    row = (result.get("rows") or [{}])[0]
    details = result.get("details", {})
    lines = [
        "| images | Ray Data job, images/s | plain PyTorch loop, images/s | job / loop | job end to end, images/s "
        "| index build, s per 1M codes |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {_num(row.get('images'), ',')} | {_num(row.get('ray_images_per_s'), '.0f')} "
        f"| {_num(row.get('torch_loop_images_per_s'), '.0f')} | {_num(row.get('ratio'), '.2f')} "
        f"| {_num(details.get('ray_end_to_end_images_per_s'), '.0f')} "
        f"| {_num(row.get('index_build_s_per_million'), '.1f')} |",
        "",
        f"Measured on: {result.get('hardware', DASH)}; model: {details.get('model', DASH)}; "
        f"`{result.get('command', DASH)}`.",
    ]
    return "\n".join(lines)


def _find(rows: list[dict], **want) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def search_table(result: dict, code_kind: str = "binary") -> str:
    """The rows of one code kind (a row without ``code_kind`` is binary): a line per size and index."""
    rows = [r for r in result.get("rows", []) if r.get("code_kind", "binary") == code_kind]
    batched = [r for r in rows if r.get("format") == "arrow" and r.get("concurrency", 1) > 1]
    sizes = sorted({r["queries_per_request"] for r in batched}) or [64, 1000]
    small, bulk = sizes[0], sizes[-1]
    lines = [
        f"| codes | index | direct faiss, q/s | served / direct: {small} queries a request (arrow) "
        f"| {bulk:,} queries a request (packed) | {bulk:,} a request, shard deployments "
        "| one query at a time, p50 / p99 ms | through Serve's proxy, p50 ms | speed-up over flat | recall@100 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = list(dict.fromkeys((r["codes"], r["index"], r.get("nlist"), r.get("nprobe")) for r in rows))
    for codes, kind, nlist, nprobe in groups:
        same = [
            r
            for r in batched + rows
            if (r["codes"], r["index"], r.get("nlist"), r.get("nprobe")) == (codes, kind, nlist, nprobe)
        ]
        small_row = _find(same, placement="ingress", queries_per_request=small, format="arrow")
        bulk_row = _find(same, placement="ingress", queries_per_request=bulk, format="arrow")
        deployed = _find(same, placement="deployments", queries_per_request=bulk, format="arrow")
        single = _find(same, placement="ingress", concurrency=1, queries_per_request=1)
        ref = bulk_row or small_row or same[0]
        name = "flat" if kind == "flat" else f"{kind} ({nlist} lists, nprobe {nprobe})"

        def ratio(r: dict | None) -> str:
            return _num(r and r.get("served_over_direct"), ".2f")

        latency = f"{single['p50_ms']:.1f} / {single['p99_ms']:.1f}" if single else DASH
        lines.append(
            f"| {codes / 1e6:g}M | {name} | {_num(ref.get('direct_qps'), ',.0f')} | {ratio(small_row)} "
            f"| {ratio(bulk_row)} | {ratio(deployed)} | {latency} "
            f"| {_num(single and single.get('proxy_p50_ms'), '.1f')} "
            f"| {_num(ref.get('speedup_over_flat'), '.0f')}x | {_num(ref.get('recall_at_100'), '.3f')} |"
        )
    first = rows[0] if rows else {}
    kind = "pq codes (M = 8, K = 256)" if code_kind == "pq" else "codes"
    in_flight = max((r["concurrency"] for r in batched), default=DASH)
    lines += [
        "",
        f"{first.get('bits', DASH)}-bit {kind}, k = {first.get('k', DASH)}, {first.get('shards', DASH)} shards, "
        f"{first.get('queries', 1000):,} queries, {in_flight} requests in flight when batched; "
        f"`{first.get('command', result.get('command', DASH))}`.",
    ]
    return "\n".join(lines)


def chaos_table(result: dict) -> str:
    """One line per failure drill of benchmarks/chaos.py."""
    lines = [
        "| scenario | requests | success during / after | errors | p99 during, ms | lost / duplicated rows |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.get("rows", []):
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors_by_status"].items())) or "none"
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['success_rate_during']:.2f} / {r['success_rate_after']:.2f} "
            f"| {errors} | {r['p99_ms_during']:,.0f} | {r['lost_rows']} / {r['duplicated_rows']} |"
        )
    hw = result.get("rows", [{}])[0].get("hardware", DASH) if result.get("rows") else DASH
    return "\n".join([*lines, "", f"Measured on: {hw}; `{result.get('command', DASH)}`."])


def live_table(result: dict) -> str:
    """benchmarks/live_bench.py's rows: the default URL's latency, writes under search, the swap."""
    rows = result.get("rows", [])
    lines = [
        "| measured | result | beside it |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        if r["kind"] == "latency":
            b = r["batched"]
            beside = f"direct faiss p50 / p99 {r['direct_p50_ms']:.2f} / {r['direct_p99_ms']:.2f} ms"
            lines.append(
                f"| one query at a time, {r['codes']:,} codes, {r['index']}, the URL `rayhash serve` prints "
                f"| p50 / p99 {r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms | {beside} |"
            )
            theirs = _num(b.get("search_json_qps"), ",.0f")
            lines.append(
                f"| {b['concurrency']} requests of {b['queries_per_request']} queries in flight, {r['index']}, "
                f"over its {b['spread_over_replica_urls']} ingress replicas' URLs | {b['qps']:,.0f} q/s "
                f"| search.json: {theirs} q/s |"
            )
        elif r["kind"] == "writes":
            lines.append(
                f"| single-item writes beside one-at-a-time searches, {r['codes']:,} codes {r['index']} "
                f"| {r['acked_per_s']:.0f} acknowledged/s; search p50 / p99 {r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms "
                f"| {r['acked']:,} acknowledged; {r['acked_lost_after_kill']} lost after SIGKILL of all "
                f"{r['killed_shard_processes']} shard processes |"
            )
        elif r["kind"] == "swap":
            took = " and ".join(f"{w['seconds']:.1f}" for w in r["swaps"])
            lines.append(
                f"| swap A -> B -> A under {r['clients']} clients, {r['codes']:,} codes {r['index']} "
                f"| {r['requests']:,} requests, {r['errors']} errors, {r['mixed_answers']} mixed answers "
                f"| the swaps took {took} s |"
            )
    return "\n".join([*lines, "", f"Measured on: {result.get('hardware', DASH)}; `{result.get('command', DASH)}`."])


def results_blocks(results: Path) -> dict[str, Callable[[], str]]:
    return {
        "quality": lambda: quality_table(_load(results, "fmnist_map.json")["rows"]),
        "encode": lambda: encode_table(_load(results, "encode.json")),
        "search": lambda: search_table(_load(results, "search.json")),
        "search-pq": lambda: search_table(_load(results, "search.json"), "pq"),
        "chaos": lambda: chaos_table(_load(results, "chaos.json")),
        "live": lambda: live_table(_load(results, "live.json")),
    }


# --- configuration ----------------------------------------------------------------------------


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the ``#`` lines just above it and the one after it;
    a field a subclass redefines without one keeps its base class's."""
    comments = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            comments.update({k: v for k, v in _own_comments(base).items() if v})
    comments.update({k: v for k, v in _own_comments(cls).items() if v or k not in comments})
    return comments


def _own_comments(cls: type) -> dict[str, str]:
    comments, pending = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"\s+(\w+):[^#]*?(?:#\s*(.*))?$", line)
        if m and not stripped.startswith(("def ", "@")):
            comments[m.group(1)] = " ".join(pending + ([m.group(2)] if m.group(2) else []))
        pending = []
    return comments


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_table(cls: type, prefix: str = "") -> str:
    """A table of ``cls``'s keys; a field that is itself a config is named, not expanded."""
    comments = _field_comments(cls)
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default) and hasattr(default, "config_variants"):
            key, variants = default.config_variants()
            names = ", ".join(f"`{c.__name__}`" for _, c in sorted(variants.items()))
            lines.append(f"| `{prefix}{f.name}` | section | | `{f.name}.{key}` picks its keys: {names}, below |")
            continue
        if dataclasses.is_dataclass(default):
            lines.append(f"| `{prefix}{f.name}` | section | | `{type(default).__name__}`, below |")
            continue
        typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        meaning = comments.get(f.name, "").replace("|", "\\|")
        typ = typ.replace("|", "\\|")
        lines.append(f"| `{prefix}{f.name}` | `{typ}` | `{_yaml(default)}` | {meaning} |")
    return "\n".join(lines)


def config_blocks() -> dict[str, Callable[[], str]]:
    """One block per config class, named by where its keys sit in a YAML file."""
    from rayhash.encode.config import EncodeConfig
    from rayhash.index.build import IndexBuildConfig
    from rayhash.quickstart import QuickstartConfig
    from rayhash.serve.app import ServeConfig
    from rayhash.train.config import TrainConfig

    blocks: dict[str, Callable[[], str]] = {"train": lambda: config_table(TrainConfig)}
    for f in dataclasses.fields(TrainConfig):
        section = _default(f)
        if dataclasses.is_dataclass(section) and hasattr(section, "config_variants"):
            # one table per variant: the method section's keys are those of the method it names
            _, variants = section.config_variants()
            for name, cls in sorted(variants.items()):
                blocks[f"train.{f.name}.{name}"] = functools.partial(config_table, cls, f"{f.name}.")
        elif dataclasses.is_dataclass(section):
            blocks[f"train.{f.name}"] = functools.partial(config_table, type(section), f"{f.name}.")
    blocks["quickstart"] = lambda: config_table(QuickstartConfig)
    blocks["encode"] = lambda: config_table(EncodeConfig)
    blocks["index"] = lambda: config_table(IndexBuildConfig)
    blocks["serve"] = lambda: config_table(ServeConfig)
    return blocks


# --- files --------------------------------------------------------------------------------------


def rewrite(text: str, lookup: Callable[[str], dict[str, Callable[[], str]]]) -> tuple[str, list[str]]:
    """``text`` with every marked block regenerated, and the names of the blocks that changed.

    ``lookup(kind)`` gives the block makers of one kind; config blocks import the library (Ray
    Serve among it), so they are asked for only where a file has config markers.
    """
    changed: list[str] = []

    def one(m: re.Match) -> str:
        kind, name = m.group(2), m.group(3)
        makers = lookup(kind)
        if name not in makers:
            raise SystemExit(f"unknown block {kind}:{name}; known: {', '.join(sorted(makers))}")
        body = makers[name]() + "\n"
        if body != m.group(4):
            changed.append(f"{kind}:{name}")
        return m.group(1) + body + m.group(5)

    return MARKER.sub(one, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a block is stale")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the repository (README.md, docs/, benchmarks/results/)"
    )
    args = parser.parse_args(argv)
    makers = {"results": lambda: results_blocks(args.root / "benchmarks" / "results"), "config": config_blocks}
    lookup = functools.cache(lambda kind: makers[kind]())
    stale, missing = [], []
    for rel in FILES:
        path = args.root / rel
        if not path.exists():
            continue
        text = path.read_text()
        new, changed = rewrite(text, lookup)
        stale += [f"{rel}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(new)
        if rel == EVERY_CONFIG_BLOCK:
            present = {m.group(3) for m in MARKER.finditer(text) if m.group(2) == "config"}
            missing += [f"{rel}: config:{name}" for name in lookup("config") if name not in present]
    if missing:
        print("no block (add its start and end markers where it belongs):\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    if args.check and stale:
        print("stale, run `python benchmarks/readme_tables.py`:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    print("\n".join(f"rewrote {s}" for s in stale) or "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

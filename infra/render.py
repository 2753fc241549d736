"""Render infra/'s manifests and cluster.yaml from one values file, so that the bucket, the
checkpoint, the images and the like are set in one place, never by editing a manifest.

    python infra/render.py                                 # infra/values.yaml -> infra/rendered/
    python infra/render.py --set bucket=my-bucket --set checkpoint=s3://my-bucket/runs/...
    python infra/render.py --out - rayjob-train.yaml | kubectl apply -f -

A template is a YAML file of infra/ with ``${key}`` placeholders (Python's ``string.Template``:
``$$`` is a literal ``$``); a value may name other values the same way. An unknown key, a
placeholder with no value, or a result that is not YAML stops with a one-line message and exit 2.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parent
TEMPLATES = (
    "raycluster.yaml",
    "rayjob-train.yaml",
    "rayjob-encode.yaml",
    "rayjob-index.yaml",
    "rayservice.yaml",
    "networkpolicy.yaml",
    "cluster.yaml",
    "serve.yaml",
)


class RenderError(ValueError):
    pass


def substitute(text: str, values: dict[str, str], where: str) -> str:
    try:
        return string.Template(text).substitute(values)
    except KeyError as e:
        raise RenderError(f"{where}: no value for ${{{e.args[0]}}} (keys: {', '.join(values)})") from None
    except ValueError as e:  # a lone "$": write "$$"
        raise RenderError(f"{where}: {e}") from None


def load_values(path: Path = INFRA / "values.yaml", overrides: list[str] = ()) -> dict[str, str]:
    """The values file with ``key=value`` overrides applied, every value's own placeholders filled."""
    values = {k: str(v) for k, v in yaml.safe_load(Path(path).read_text()).items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in values:
            raise RenderError(f"--set {item!r}: want key=value with a key of {path.name}: {', '.join(values)}")
        values[key] = value
    return {k: substitute(v, values, f"{path.name}: {k}") for k, v in values.items()}


def render(name: str, values: dict[str, str]) -> str:
    if name not in TEMPLATES:
        raise RenderError(f"no template {name!r}: {', '.join(TEMPLATES)}")
    text = substitute((INFRA / name).read_text(), values, name)
    try:
        list(yaml.safe_load_all(text))  # what kubectl and `ray up` will read must parse
    except yaml.YAMLError as e:
        raise RenderError(f"{name} is not YAML once rendered: {e}") from None
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"templates to render (default: all of {', '.join(TEMPLATES)})")
    parser.add_argument("--values", type=Path, default=INFRA / "values.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(INFRA / "rendered"), help="folder to write, or - for stdout")
    ns = parser.parse_args(argv)
    try:
        values = load_values(ns.values, ns.overrides)
        rendered = {name: render(name, values) for name in ns.names or TEMPLATES}
    except RenderError as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    if ns.out == "-":
        print("\n---\n".join(rendered.values()), end="")
        return 0
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

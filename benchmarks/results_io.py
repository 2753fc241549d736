"""What every benchmark does with its result: records the command that made it, and writes it
atomically, so that a stopped run leaves the last complete file."""

from __future__ import annotations

import json
import shlex
import sys

from rayhash import storage


def command_line() -> str:
    """This process's command as typed: ``python benchmarks/<script>.py --flag ...``."""
    return "python " + shlex.join(sys.argv)


def write_result(path: str, result: dict) -> str:
    """``result`` as indented JSON at ``path`` (local or ``s3://``), written atomically; returns the text."""
    text = json.dumps(result, indent=1) + "\n"
    storage.write_text_atomic(path, text)
    return text

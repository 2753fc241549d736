"""What every benchmark does with its result: records the command that made it, and writes it
atomically, so that a stopped run leaves the last complete file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys

from rayhash import storage


def command_line() -> str:
    """This process's command as typed: ``python benchmarks/<script>.py --flag ...``."""
    return "python " + shlex.join(sys.argv)


def hardware() -> str:
    """The machine a result was measured on: architecture, CPU cores, GPU (or "no GPU"), torch."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def write_result(path: str, result: dict) -> str:
    """``result`` as indented JSON at ``path`` (local or ``s3://``), written atomically; returns the text."""
    text = json.dumps(result, indent=1) + "\n"
    storage.write_text_atomic(path, text)
    return text

#!/usr/bin/env bash
# Set up a fresh machine for rayhash: a virtual environment with the exact stack of
# constraints.txt, and the Fashion-MNIST Debian package (the real data the main job and the
# tests use) where missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import rayhash, torch, torchvision, ray, faiss, moto" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.rayhash-installed ] || [ constraints.txt -nt .venv/.rayhash-installed ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -c constraints.txt -e ".[test]"
  touch .venv/.rayhash-installed
fi
if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

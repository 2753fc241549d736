#!/usr/bin/env bash
# Set up (if needed) and run the main job end to end on the embedded default: local Ray, local
# storage under runs/, Fashion-MNIST from the Debian package. DSCH unless --method=NAME picks
# another method's main-job config; other arguments override the config (--train.run.rounds=4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python jobs/quickstart.py "$@"

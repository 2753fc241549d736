"""The main job end to end: train DSCH -> evaluate -> encode 70,000 images -> index -> serve -> query.

    python jobs/quickstart.py --config configs/quickstart.yaml          (what `bash scripts/main.sh` runs)
    ray job submit --working-dir . -- python jobs/quickstart.py --config configs/quickstart.yaml --keep_serving=false

``--section.key=value`` overrides the config (e.g. ``--train.run.rounds=4``); ``-v`` shows Ray's own
logs. A config error exits with code 2.
"""

import sys

from rayhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))

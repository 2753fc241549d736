"""The main job end to end: train a method -> evaluate -> encode 70,000 images -> index -> serve -> query.

    python jobs/quickstart.py                              (what `bash scripts/main.sh` runs: DSCH)
    python jobs/quickstart.py --method=dcuh                (DCUH's main-job config, configs/quickstart-dcuh.yaml)
    ray job submit --working-dir . -- python jobs/quickstart.py --method=psch --keep_serving=false

``--method=NAME`` (or ``--method.name=NAME``) runs that method's main-job config; ``--config FILE``
runs any other. ``--section.key=value`` overrides the config (e.g. ``--train.run.rounds=4``); ``-v``
shows Ray's own logs. A config error, an unknown method among them, exits with code 2.
"""

import sys

from rayhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))

"""Train DSCH on Ray Train, then evaluate it.

    ray job submit --working-dir . -- python jobs/train_dsch.py --config configs/fmnist-dsch-64.yaml

Without a cluster, ``python jobs/train_dsch.py --config ...`` starts a local Ray. Any
``--section.key=value`` overrides the config (e.g. ``--run.num_workers=2``); ``-v`` shows Ray's own
logs. A config error exits with code 2.
"""

import sys

from rayhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

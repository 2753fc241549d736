"""Train any registered hashing method on Ray Train, then evaluate it.

    python jobs/train.py --config configs/fmnist-dsch-64.yaml --method.name=dsch
    ray job submit --working-dir . -- python jobs/train.py --config configs/fmnist-dsch-64.yaml --method.name=dsch

``--method.name`` picks the method (``rayhash.methods.list_methods()``); the ``method`` section
then takes that method's keys only, so a config written for another method fails with the keys
this one takes. Without a cluster a local Ray starts. Any ``--section.key=value`` overrides the
config (e.g. ``--run.num_workers=2``); ``-v`` shows Ray's own logs. A config error exits with code 2.
"""

import sys

from rayhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

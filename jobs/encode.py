"""Ray job entry point for bulk encoding; the same as ``rayhash encode``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/encode.py --config configs/encode-fmnist.yaml --output=s3://bucket/codes

Any ``--key=value`` overrides the config; ``-v`` shows Ray's own logs. A config error exits with code 2.
"""

import sys

from rayhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["encode", *sys.argv[1:]]))

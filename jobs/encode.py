"""Ray job entry point for bulk encoding; the same as ``rayhash encode``.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/encode.py --config configs/encode-fmnist.yaml --output=s3://bucket/codes
"""

import sys

from rayhash.encode.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Build an index set (faiss binary index shards + manifest) from a code set.

    ray job submit --working-dir . -- python jobs/build_index.py --codeset=s3://bucket/codes --out=s3://bucket/index \\
        [--config=index.yaml] [--num_shards=4] [--kind=ivf] [--nlist=4096] [--nprobe=256]

Keys are those of ``rayhash.index.IndexBuildConfig``; ``-v`` shows debug logs. A config error exits
with code 2.
"""

import sys

from rayhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))

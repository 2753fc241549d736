"""Fold an index set's write log (items added, replaced and deleted through the service) into a
new version: a new code set from the old one plus the log, then the normal index build with the
old index's options. Serve the new index set (pin its index_sha256) once it is written.

    ray job submit --working-dir . -- python jobs/compact.py --index=s3://bucket/index \\
        --codeset-out=s3://bucket/codes-v2 --out=s3://bucket/index-v2 [--up-to=SEQ]
"""

import sys

from rayhash.cli import main

if __name__ == "__main__":
    sys.exit(main(["compact", *sys.argv[1:]]))

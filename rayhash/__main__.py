import sys

from rayhash.cli import main

sys.exit(main())

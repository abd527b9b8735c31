"""``python -m slirp`` is ``slirpnet``."""

import sys

from .cli import main

sys.argv[0] = "slirpnet"
sys.exit(main())

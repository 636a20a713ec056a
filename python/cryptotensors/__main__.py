"""`python -m cryptotensors`: the command line (see cryptotensors.cli)."""

import sys

from .cli import main

sys.exit(main())

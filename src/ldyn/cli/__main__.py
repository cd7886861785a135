"""`python -m ldyn.cli ...`: the `ldyn` command."""

import sys

from ldyn.cli import main

sys.exit(main())

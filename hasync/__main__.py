"""`python -m hasync`: the same as the `hasync` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m sidjax.cli ...``: the `sidjax` command."""

import sys

from sidjax.cli import main

sys.exit(main())

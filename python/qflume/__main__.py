"""`python -m qflume` is the `qflume` command."""

import sys

from qflume.cli import main

sys.exit(main())

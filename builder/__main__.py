"""`python -m builder` -> the pybuild CLI (builder.cli.main). Imports builder.cli only."""

import sys

from builder.cli import main

sys.exit(main())

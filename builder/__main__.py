"""`python -m builder` → the pybuild CLI."""

import sys

from builder.cli import main

sys.exit(main())

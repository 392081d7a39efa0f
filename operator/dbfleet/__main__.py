"""`python -m dbfleet` runs the command line."""

import sys

from dbfleet.cli import main

sys.exit(main())

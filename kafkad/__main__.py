"""`python -m kafkad`: the same as the `kafkad` command."""

import sys

from kafkad.cli import main

sys.exit(main())

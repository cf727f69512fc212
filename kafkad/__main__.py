"""`python -m kafkad`: the same as the `kafkad` command."""

import sys

try:
    from kafkad.cli import main
except KeyboardInterrupt:   # Ctrl-C before the command line could take it: no traceback
    sys.exit(130)

sys.exit(main())

"""``python -m csp_bus`` runs the ``csp-bus`` command line."""

import sys

from .cli import main

sys.exit(main())

"""``python -m ccvault`` runs the ``ccvault`` command."""

import sys

from .cli import main

sys.exit(main())

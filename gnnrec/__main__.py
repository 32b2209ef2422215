"""``python -m gnnrec ...``: the ``gnnrec`` command where only the source tree is present
(e.g. a Ray job's ``--working-dir .`` on nodes that have the dependencies but no install)."""

import sys

from gnnrec.cli import main

sys.exit(main())

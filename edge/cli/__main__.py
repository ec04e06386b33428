"""``python -m edge.cli``: the same as the ``edgecut`` command."""

import sys

from edge.cli import main

sys.exit(main())

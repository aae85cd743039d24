"""``python -m tingji.cli``: the ``tingji`` command where its script is not installed."""

import sys

from tingji.cli.main import main

sys.exit(main())

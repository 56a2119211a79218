"""``python -m sdk``: the ``vmguard`` command line (``sdk.cli``)."""

import sys

from sdk.cli import main

sys.exit(main())

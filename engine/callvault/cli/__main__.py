"""``python -m callvault.cli``: the same as the ``callvault`` command."""

import sys

from callvault.cli import main

sys.exit(main())

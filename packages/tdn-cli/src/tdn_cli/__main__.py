"""``python -m tdn_cli``: the same as the ``tdn`` command."""

import sys

from .main import main

sys.exit(main())

"""``python -m mometas_ds.study``."""

import sys

from .cli import main

sys.exit(main())

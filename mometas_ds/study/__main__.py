"""``python -m mometas_ds.study``."""

import sys

from mometas_ds.cli.study import main

sys.exit(main())

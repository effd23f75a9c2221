"""``python -m mometas_ds.bench`` (and the deepspeed launcher's ``--module mometas_ds.bench``)."""
import sys

from mometas_ds.cli.bench import main

sys.exit(main())

"""``python -m mometas_ds.config --markdown``: the options table of mometas-pretrain."""
import sys

from mometas_ds.config.cli import main

sys.exit(main())

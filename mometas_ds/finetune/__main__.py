"""``python -m mometas_ds.finetune``: mometas-finetune."""
import sys

from mometas_ds.cli.finetune import main

sys.exit(main())

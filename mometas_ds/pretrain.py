"""Entry point: ``deepspeed --module mometas_ds.pretrain --deepspeed_config ds_configs/X.json ...``,
``mometas-pretrain ...``, or ``python -m mometas_ds.pretrain ...`` in a single process."""
from __future__ import annotations

import sys

from .config import ConfigError, parse_args


def main(argv=None) -> int:
    cfg = parse_args(argv)
    from .data import DataError
    from .trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except (ConfigError, DataError) as exc:
        print(f"mometas-pretrain: error: {exc}", file=sys.stderr)
        return 2
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())

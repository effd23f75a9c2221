"""The launchers' path to ``mometas-pretrain`` (mometas_ds.cli.pretrain), with absolute imports so the file also
runs as a script path, as DeepSpeed's slurm launcher needs: ``deepspeed --module mometas_ds.pretrain
--deepspeed_config ds_configs/X.json ...``, or ``python -m mometas_ds.pretrain ...`` in a single process."""
import sys

from mometas_ds.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())

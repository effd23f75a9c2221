"""``mometas-pretrain``: parse the flags, run every check (train.preflight), build the Trainer, train, and map
its errors to exit codes (2: a bad flag, file or config; 1: a damaged checkpoint or non-finite loss).
``mometas_ds.pretrain`` is the launchers' path to it."""
from __future__ import annotations

import os
import sys

# Light: parsing the flags imports no torch, transformers or DeepSpeed, so --help and a bad flag answer at once.
from mometas_ds.config import ConfigError, DataError, parse_args
from mometas_ds.train.signals import ignore_from_now


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the run's own handlers are installed: no work to save yet
        print("mometas-pretrain: interrupted before training started; nothing to save", file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    cfg = parse_args(argv)
    # Heavy (torch, DeepSpeed, transformers, datasets): not for --help.
    from mometas_ds.checkpoint import CheckpointError, tag_for
    from mometas_ds.train.preflight import preflight
    from mometas_ds.train.step import NonFiniteLossError
    from mometas_ds.train.trainer import Trainer

    try:
        trainer = Trainer(cfg, preflight(cfg))  # every check, once, before the trainer builds anything
    except (ConfigError, DataError) as exc:
        print(f"mometas-pretrain: error: {exc}", file=sys.stderr)
        _destroy_process_group()
        return 2
    try:
        result = trainer.train()
    except (ConfigError, DataError) as exc:  # a full disk in the HF export; every rank stops here together
        ignore_from_now()
        print(f"mometas-pretrain: error: rank {trainer.rank}: {exc}", file=sys.stderr)
        _destroy_process_group()
        return 2
    except (CheckpointError, NonFiniteLossError) as exc:  # every rank stops here together
        ignore_from_now()
        print(f"mometas-pretrain: error: rank {trainer.rank}: {exc}", file=sys.stderr)
        _destroy_process_group()
        return 1
    except Exception:
        if trainer.world_size > 1:
            # On the CPU (gloo) a dead peer fails the next collective at once, a hung one after the timeout.
            print(f"mometas-pretrain: error: rank {trainer.rank} stopped at step {trainer.step} by the error below; "
                  f"if another rank died or hangs, this is how the run ends (a collective waits at most "
                  f"--dist_timeout_minutes {trainer.cfg.dist_timeout_minutes}). Restart with --resume to continue "
                  f"from the last complete checkpoint.", file=sys.stderr)
        raise
    ignore_from_now()  # all saved: a signal during the teardown must not turn exit 0 into "killed" (143)
    if result.get("stopped_by_signal") and trainer.rank == 0:
        by = trainer.signals.signal_name or "a signal to another rank"
        saved = os.path.join(cfg.output_dir, "checkpoints", tag_for(result["step"]))
        print(f"mometas-pretrain: stopped by {by} at step {result['step']}: checkpoint {saved} saved; "
              "continue with --resume", file=sys.stderr)
    _destroy_process_group()
    return 0


def _destroy_process_group() -> None:
    # Gloo's threads outliving the interpreter abort the process at exit now and then
    # (SIGABRT, "terminate called without an active exception"): destroy the group first.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        ds_comm = sys.modules.get("deepspeed.comm")
        if ds_comm is not None and ds_comm.is_initialized():
            # DeepSpeed's own teardown also drops the groups it cached (preflight's trial engine made some):
            # a later process group in this interpreter (in-process tests) must not meet them.
            ds_comm.destroy_process_group()
        else:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

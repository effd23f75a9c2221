"""Launcher discovery: one call that sets up torch.distributed however the job was started.

Supported launchers (see docs/cluster.md):
- deepspeed: `deepspeed --hostfile ... --module mometas_ds.pretrain` (local or pdsh/openmpi runners
  that start deepspeed.launcher.launch) sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* itself.
- torchrun: sets the same env:// variables (so does any launcher that exports them).
- srun: one task per GPU. DeepSpeed 0.19 reads no SLURM_* variable, so RANK/WORLD_SIZE/LOCAL_RANK/
  LOCAL_SIZE are derived here from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_NTASKS_PER_NODE;
  MASTER_ADDR/MASTER_PORT come from the batch script (slurm/pretrain_*.sh exports them).
  `deepspeed --launcher slurm` also ends up here: its SlurmRunner runs the script under plain srun.
- mpirun: DeepSpeed's MPI discovery (mpi4py) fills in the variables.
- single: one process without a launcher gets a 1-rank group on localhost.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import socket
from typing import MutableMapping

import torch.distributed as dist

logger = logging.getLogger(__name__)

LAUNCHERS = ("deepspeed", "torchrun", "srun", "mpirun", "single")
DEFAULT_MPI_MASTER_PORT = 29500  # DeepSpeed's TORCH_DISTRIBUTED_DEFAULT_PORT


@dataclasses.dataclass(frozen=True)
class LaunchInfo:
    launcher: str
    rank: int
    world_size: int
    local_rank: int


def detect_launcher(env: MutableMapping[str, str] = os.environ) -> str:
    """Names the launcher that started this process, from its environment variables."""
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "CROSS_RANK" in env and "RANK" in env:  # deepspeed.launcher.launch sets CROSS_RANK/CROSS_SIZE
        return "deepspeed"
    # Before srun: OpenMPI's and MPICH's mpirun start their daemons with srun inside an allocation,
    # so their ranks also see SLURM_STEP_ID/SLURM_PROCID (of the daemon, not the rank).
    if "OMPI_COMM_WORLD_SIZE" in env or "MPI_LOCALNRANKS" in env:
        return "mpirun"
    # The batch script itself has SLURM_PROCID=0 but no SLURM_STEP_ID; srun tasks have both.
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return "srun"
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun"  # some other env:// launcher; its variables are used as they are
    return "single"


def _tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Reads SLURM's compressed per-node task list, e.g. '4(x2),3' -> [4, 4, 3][node_id]."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise ValueError(f"cannot parse SLURM tasks-per-node list {tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node_id]


def _require_master(env: MutableMapping[str, str], launcher: str) -> None:
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} not set for launcher '{launcher}': export them before starting the tasks, e.g. "
            'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1) MASTER_PORT=29500 '
            "(slurm/pretrain_large.sh does this)"
        )
    if not env["MASTER_PORT"].isdigit():
        raise ValueError(f"MASTER_PORT must be a port number, got {env['MASTER_PORT']!r}")


def apply_slurm_env(env: MutableMapping[str, str] = os.environ) -> bool:
    """Under srun, sets RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_SIZE from SLURM's variables.

    Does nothing (returns False) when not launched by srun or when RANK is already set by the
    user or an outer launcher. Raises ValueError when MASTER_ADDR/MASTER_PORT are missing.
    """
    if detect_launcher(env) != "srun" or "RANK" in env:
        return False
    _require_master(env, "srun")
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env["SLURM_LOCALID"]
    if "SLURM_STEP_TASKS_PER_NODE" in env:  # this step's layout; may differ from the job's
        env["LOCAL_SIZE"] = str(_tasks_on_node(env["SLURM_STEP_TASKS_PER_NODE"], int(env.get("SLURM_NODEID", "0"))))
    elif "SLURM_NTASKS_PER_NODE" in env:
        env["LOCAL_SIZE"] = env["SLURM_NTASKS_PER_NODE"]
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_device(local_rank: int) -> None:
    from deepspeed.accelerator import get_accelerator  # heavy; read at call time (tests patch it)

    accel = get_accelerator()
    if accel.device_name() != "cpu" and accel.device_count() > 0:
        accel.set_device(local_rank % accel.device_count())


def _local_rank_to_visible_device(env: MutableMapping[str, str]) -> None:
    """Make LOCAL_RANK a device this task can see.

    DeepSpeed binds each rank to ``cuda:LOCAL_RANK`` (init_process_group's device_id, the engine's
    device). A task that sees fewer GPUs than its node-local rank (``srun --gpus-per-task=1`` or
    ``--gpu-bind``: every task sees its own GPU as cuda:0) would ask for a device it does not have.
    """
    from deepspeed.accelerator import get_accelerator  # heavy; read at call time (tests patch it)

    accel = get_accelerator()
    count = accel.device_count() if accel.device_name() != "cpu" else 0
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if count and local_rank >= count:
        env["LOCAL_RANK"] = str(local_rank % count)
        logger.info("node-local rank %d sees %d device(s): LOCAL_RANK=%s", local_rank, count, env["LOCAL_RANK"])


def init_distributed(timeout_minutes: float, backend: str | None = None) -> LaunchInfo:
    """Detects the launcher, fills in torch.distributed's variables and initializes the process group.

    Call once before deepspeed.initialize. `backend` None lets DeepSpeed pick (nccl on GPU, gloo on CPU).
    """
    if not timeout_minutes > 0:
        raise ValueError(f"dist_timeout_minutes must be > 0, got {timeout_minutes}")
    import deepspeed  # heavy: config imports this module for --help

    env = os.environ
    launcher = detect_launcher(env)
    if launcher == "srun":
        apply_slurm_env(env)
    elif launcher == "single":
        env.setdefault("RANK", "0")
        env.setdefault("WORLD_SIZE", "1")
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    if launcher != "mpirun":
        _require_master(env, launcher)
        _local_rank_to_visible_device(env)
        _set_device(int(env.get("LOCAL_RANK", "0")))

    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=launcher == "mpirun",
        distributed_port=int(env.get("MASTER_PORT", DEFAULT_MPI_MASTER_PORT)),
        timeout=datetime.timedelta(minutes=timeout_minutes),
        verbose=False,
    )
    if launcher == "mpirun":
        _set_device(int(env["LOCAL_RANK"]))

    info = LaunchInfo(
        launcher=launcher,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(env.get("LOCAL_RANK", "0")),
    )
    if info.rank == 0:
        logger.info(
            "launcher=%s world_size=%d master=%s:%s backend=%s",
            launcher, info.world_size, env.get("MASTER_ADDR"), env.get("MASTER_PORT"), dist.get_backend(),
        )
    return info

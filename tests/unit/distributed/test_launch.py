"""Launcher discovery (mometas_ds/distributed/launch.py): env-dict cases, then real single/mpirun/srun process
groups."""

import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from mometas_ds.distributed import launch
from tests.slurm_cluster import clean_launch_env as clean_env, free_port

SRUN_TASK_ENV = {
    "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
    "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "MASTER_ADDR": "node001", "MASTER_PORT": "29501",
}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "single"),
        # sbatch's batch step: SLURM_PROCID=0 but no step id -> a plain process, not an srun task
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "single"),
        (SRUN_TASK_ENV, "srun"),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "CROSS_RANK": "0", "CROSS_SIZE": "1",
          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "deepspeed"),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "none",
          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "torchrun"),
        ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "torchrun"),
        ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}, "mpirun"),
        ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"}, "mpirun"),
        # OpenMPI's mpirun inside an allocation starts its daemons with srun: still mpirun
        ({**SRUN_TASK_ENV, "OMPI_COMM_WORLD_SIZE": "4"}, "mpirun"),
        # a deepspeed launcher started inside an srun step: the inner launcher wins
        ({**SRUN_TASK_ENV, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "CROSS_RANK": "0"}, "deepspeed"),
    ],
)
def test_detect_launcher(env, expected):
    assert launch.detect_launcher(dict(env)) == expected


def test_apply_slurm_env_maps_slurm_variables():
    env = dict(SRUN_TASK_ENV)
    assert launch.apply_slurm_env(env) is True
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_SIZE"]) == ("3", "4", "1", "2")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node001", "29501")


def test_apply_slurm_env_local_size_from_uneven_step_layout():
    env = {**SRUN_TASK_ENV, "SLURM_NTASKS": "11", "SLURM_STEP_TASKS_PER_NODE": "4(x2),3", "SLURM_NODEID": "2",
           "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}
    launch.apply_slurm_env(env)
    assert env["LOCAL_SIZE"] == "3"
    del env["LOCAL_SIZE"], env["SLURM_STEP_TASKS_PER_NODE"], env["RANK"]
    launch.apply_slurm_env(env)
    assert env["LOCAL_SIZE"] == "2"  # falls back to SLURM_NTASKS_PER_NODE


def test_apply_slurm_env_keeps_existing_rank_and_ignores_other_launchers():
    env = {**SRUN_TASK_ENV, "RANK": "0"}
    assert launch.apply_slurm_env(env) is False
    assert env["RANK"] == "0" and "WORLD_SIZE" not in env
    env = {"OMPI_COMM_WORLD_SIZE": "2"}
    assert launch.apply_slurm_env(env) is False and "RANK" not in env


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT"])
def test_apply_slurm_env_missing_master_is_a_clear_error(missing):
    env = dict(SRUN_TASK_ENV)
    del env[missing]
    with pytest.raises(ValueError, match=f"{missing} not set for launcher 'srun'.*scontrol show hostnames"):
        launch.apply_slurm_env(env)
    assert "RANK" not in env


def test_apply_slurm_env_bad_port():
    with pytest.raises(ValueError, match="MASTER_PORT must be a port number"):
        launch.apply_slurm_env({**SRUN_TASK_ENV, "MASTER_PORT": "auto"})


def test_bad_tasks_per_node_list():
    with pytest.raises(ValueError, match="tasks-per-node"):
        launch.apply_slurm_env({**SRUN_TASK_ENV, "SLURM_STEP_TASKS_PER_NODE": "2[x2]"})


def test_init_distributed_rejects_bad_timeout():
    with pytest.raises(ValueError, match="dist_timeout_minutes"):
        launch.init_distributed(0)


# ---- real process groups -------------------------------------------------------------------------
ALLREDUCE_SCRIPT = textwrap.dedent("""\
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    import torch, torch.distributed as dist
    from mometas_ds.distributed import launch
    info = launch.init_distributed(2.0)
    x = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(x)
    print(f"RESULT launcher={info.launcher} rank={info.rank} world={info.world_size} "
          f"local={info.local_rank} sum={x.item():.0f}", flush=True)
    dist.destroy_process_group()
    """)


def results(output: str) -> list[str]:
    # mpirun forwards both ranks' stdout through one pipe: lines can interleave, so match the records
    return sorted(re.findall(r"RESULT launcher=\S+ rank=\d+ world=\d+ local=\d+ sum=\d+", output))


@pytest.fixture
def allreduce_script(tmp_path):
    path = tmp_path / "allreduce.py"
    path.write_text(ALLREDUCE_SCRIPT)
    return path


@pytest.mark.integration
def test_single_process_without_launcher(allreduce_script):
    proc = subprocess.run([sys.executable, str(allreduce_script)], env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results(proc.stdout) == ["RESULT launcher=single rank=0 world=1 local=0 sum=1"]
    assert "launcher=single world_size=1" in proc.stderr  # logged once, by rank 0


@pytest.mark.integration
def test_mpirun_two_ranks_allreduce(allreduce_script):
    assert shutil.which("mpirun"), "mpirun missing: run .ci/install_system_deps.sh"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable, str(allreduce_script)]
    proc = subprocess.run(cmd, env=clean_env(MASTER_PORT=str(free_port())), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results(proc.stdout) == [
        "RESULT launcher=mpirun rank=0 world=2 local=0 sum=3",
        "RESULT launcher=mpirun rank=1 world=2 local=1 sum=3",
    ]
    assert proc.stderr.count("launcher=mpirun world_size=2") == 1


@pytest.mark.integration
def test_srun_two_tasks_allreduce(slurm_cluster, allreduce_script, tmp_path):
    job = tmp_path / "job.sh"
    job.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
        export MASTER_PORT={free_port()}
        srun {sys.executable} {allreduce_script}
        """))
    out = tmp_path / "out.txt"
    job_id = slurm_cluster.sbatch(["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=5",
                                   f"--output={out}", str(job)], env=clean_env())
    result = slurm_cluster.wait(job_id, timeout_s=300)
    log = out.read_text()
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), log
    assert results(log) == [
        "RESULT launcher=srun rank=0 world=2 local=0 sum=3",
        "RESULT launcher=srun rank=1 world=2 local=1 sum=3",
    ]


@pytest.mark.parametrize("local_rank, devices, expected", [("3", 1, "0"), ("5", 4, "1"), ("2", 8, "2"), ("3", 0, "3")])
def test_local_rank_becomes_a_device_the_task_can_see(local_rank, devices, expected, monkeypatch):
    """srun --gpus-per-task=1: every task sees its GPU as cuda:0, while SLURM_LOCALID runs 0..7;
    DeepSpeed binds to cuda:LOCAL_RANK, so LOCAL_RANK must name a visible device."""
    import deepspeed.accelerator

    from mometas_ds.distributed.launch import _local_rank_to_visible_device

    class Accelerator:
        def device_name(self):
            return "cuda" if devices else "cpu"

        def device_count(self):
            return devices

    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: Accelerator())
    env = {"LOCAL_RANK": local_rank}
    _local_rank_to_visible_device(env)
    assert env["LOCAL_RANK"] == expected

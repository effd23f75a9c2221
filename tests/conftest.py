import os

import pytest


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A live one-node SLURM on localhost (see tests/slurm_cluster.py), stopped by PID at session end.

    SLURM_CONF is exported for the session so plain `sbatch`/`squeue`/`srun` subprocesses talk to it.
    """
    from tests.slurm_cluster import LocalSlurm

    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    cluster.start()
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous

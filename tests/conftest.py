"""Shared fixtures. Markers (pytest.ini): `integration` for tests that start pre-training processes, launchers, SLURM
or builds; everything else is a unit test (`make test-fast` runs those). Helpers: tests/pretrain_helpers.py (corpus,
tokenizer, run a pre-training process), tests/slurm_cluster.py (a live one-node SLURM). See docs/development.md."""
import os

import pytest


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A generated corpus and a WordPiece tokenizer trained on it, one per test module (a module may override it)."""
    from tests.pretrain_helpers import make_corpus_and_tokenizer

    root = str(tmp_path_factory.mktemp("pretrain_assets"))
    corpus, tokenizer_dir = make_corpus_and_tokenizer(root)
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer_dir, "cache": os.path.join(root, "cache")}


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


def pytest_collection_modifyitems(config, items):
    """A test that starts the live SLURM is an integration test: refuse to collect one that is not marked so."""
    unmarked = [item.nodeid for item in items if "slurm_cluster" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("tests using the slurm_cluster fixture must be marked @pytest.mark.integration: "
                                + ", ".join(unmarked))

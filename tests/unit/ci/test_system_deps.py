""".ci/install_system_deps.sh, the first step of `make test`, with stand-ins for the system tools on PATH."""
import subprocess
from pathlib import Path

from tests.pretrain_helpers import REPO_ROOT

SCRIPT = Path(REPO_ROOT) / ".ci" / "install_system_deps.sh"
BINARIES = ("make", "munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sacct", "mpirun")
BASH = "/bin/bash"


def run(tmp_path, present=(), uid=0, apt_ok=True, installed=()):
    """Runs the script with PATH holding only stand-ins: `present` binaries, id, dpkg-query, apt-get."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    stubs = {name: "exit 0" for name in present}
    stubs["id"] = f"echo {uid}"
    known = " ".join(installed)
    stubs["dpkg-query"] = (f'for p in {known}; do [ "${{@: -1}}" = "$p" ] && {{ echo -n "install ok installed"; '
                           'exit 0; }; done; exit 1')
    stubs["apt-get"] = f'echo "apt-get $*" >> {calls}; exit {0 if apt_ok else 100}'
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!{BASH}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    proc = subprocess.run([BASH, str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                          timeout=30)
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_does_nothing_when_every_binary_is_there(tmp_path):
    proc, apt = run(tmp_path, present=BINARIES, uid=1000)
    assert (proc.returncode, proc.stdout, proc.stderr, apt) == (0, "", "", [])


def test_without_root_stops_with_the_one_command_to_run(tmp_path):
    proc, apt = run(tmp_path, present=("make", "mpirun"), uid=1000, installed=("make", "openmpi-bin"))
    assert proc.returncode == 1 and apt == []
    assert "the tests need munge slurm-wlm libopenmpi-dev (missing: munged mungekey slurmctld" in proc.stderr
    assert proc.stderr.rstrip().endswith("sudo bash .ci/install_system_deps.sh")


def test_as_root_installs_only_the_missing_packages(tmp_path):
    proc, apt = run(tmp_path, present=("make",), uid=0, installed=("make",))
    assert proc.returncode == 0, proc.stderr
    assert apt == ["apt-get update -q",
                   "apt-get install -y -q --no-install-recommends munge slurm-wlm openmpi-bin libopenmpi-dev"]


def test_a_failed_install_says_what_to_install(tmp_path):
    proc, apt = run(tmp_path, uid=0, apt_ok=False)
    assert proc.returncode == 1 and apt == ["apt-get update -q"]
    assert "apt-get could not install make munge slurm-wlm openmpi-bin libopenmpi-dev" in proc.stderr

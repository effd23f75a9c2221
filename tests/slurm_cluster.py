"""A real one-node SLURM cluster on localhost for tests.

Recipe measured on the CI machine (Debian 12, slurm-wlm 22.05, running as root, no systemd):
- munge: /run/munge owned by munge (0755), key /etc/munge/munge.key owned by munge (0400),
  munged started as the munge user.
- slurm.conf: SlurmctldHost/NodeName = `hostname -s`, CPUs=2, proctrack/linuxproc + task/affinity
  (the cgroup plugins fail here while sbatch/srun still report success, so tests check the
  job's real output), jobcomp/filetxt so `sacct -c` reports State and ExitCode, MailProg=/bin/true;
  state, spool, logs and pid files under a temp dir; slurmctld/slurmd run in the foreground (-D)
  so their PIDs are ours to stop.
- Job completion is found by polling squeue (`sbatch --wait` returns up to 30 s late).

Daemons get free ports so a second cluster (another checkout's tests) cannot collide with this one.
Everything is stopped by PID at the end: the daemons we started, then any process left
whose environment carries this cluster's SLURM_CONF (job steps, slurmstepd).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REQUIRED_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sacct")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")


LAUNCHER_ENV_PREFIXES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_", "CROSS_", "SLURM_", "OMPI_",
                         "PMI", "PMIX", "MPI_LOCAL", "TORCHELASTIC_", "GROUP_RANK", "ROLE_")
REPO_ROOT = Path(__file__).resolve().parents[1]


def clean_launch_env(**extra: str) -> dict:
    """This process's environment without any launcher's variables (so a child sees none), the repo on
    PYTHONPATH and one thread per rank (2 ranks share 2 cores here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_ENV_PREFIXES)}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("TRITON_INTERPRET", None)  # only the kernel tests want Triton's interpreter
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    cred = subprocess.run(["munge", "-n"], capture_output=True)
    if cred.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True).returncode == 0


def _wait_for(predicate, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- " + str(log) + " ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise RuntimeError(f"local SLURM: timed out after {timeout_s:.0f}s waiting for {what}{tail}")


@dataclasses.dataclass
class JobResult:
    job_id: str
    state: str  # from sacct -c (jobcomp/filetxt), e.g. COMPLETED, FAILED, CANCELLED
    exit_code: str  # "rc:signal", e.g. "0:0"


class LocalSlurm:
    """Starts munge (if no working munged is there), slurmctld and slurmd; `stop()` undoes it."""

    def __init__(self, root: Path | None = None, cpus: int = 2):
        missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
        if missing:
            raise RuntimeError(
                f"local SLURM: missing {', '.join(missing)}; run `bash .ci/install_system_deps.sh` as root "
                "(installs munge, slurm-wlm, openmpi-bin, libopenmpi-dev)"
            )
        if os.geteuid() != 0:
            raise RuntimeError("local SLURM: the test cluster runs slurmd, which needs root")
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mometas_slurm_"))
        self.cpus = cpus
        self.hostname = socket.gethostname().split(".")[0]  # = `hostname -s`
        self.conf = self.root / "etc" / "slurm.conf"
        self.jobcomp = self.root / "log" / "jobcomp.txt"
        self._procs: list[subprocess.Popen] = []
        self._munged_pid: int | None = None

    # ---- environment for clients -------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    # ---- bring-up ----------------------------------------------------------------
    def start(self) -> "LocalSlurm":
        try:
            self._start_munge()
            self._write_conf()
            self._start_daemons()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        if _munge_works():
            return  # a munged is already serving; not ours to start or stop
        munge = pwd.getpwnam("munge")
        run_dir = MUNGE_SOCKET.parent
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chown(run_dir, munge.pw_uid, munge.pw_gid)
        run_dir.chmod(0o755)
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"], check=True)
        os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
        MUNGE_KEY.chmod(0o400)
        pid_file = run_dir / "munged.pid"
        pid_file.unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)
        _wait_for(pid_file.exists, 10, "munged pid file")
        self._munged_pid = int(pid_file.read_text().strip())
        _wait_for(_munge_works, 10, "munged to answer")

    def _write_conf(self) -> None:
        for sub in ("etc", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        conf = f"""\
ClusterName=mometas-test
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
MailProg=/bin/true
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=600
KillWait=10
NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)

    def _start_daemons(self) -> None:
        env = self.env()
        log = self.root / "log"
        # -D: foreground, so the Popen PID is the daemon's; -c: fresh state; -i: ignore stale state errors.
        self._procs.append(
            subprocess.Popen(
                ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)],
                env=env, stdout=open(log / "slurmctld.out", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        _wait_for(self._controller_up, 30, "slurmctld", log / "slurmctld.log")
        self._procs.append(
            subprocess.Popen(
                ["slurmd", "-D", "-f", str(self.conf)],
                env=env, stdout=open(log / "slurmd.out", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        _wait_for(self._node_idle, 60, f"node {self.hostname} to be idle", log / "slurmd.log")

    def _controller_up(self) -> bool:
        self._check_alive()
        ping = subprocess.run(["scontrol", "ping"], env=self.env(), capture_output=True, text=True)
        return ping.stdout.count("UP") > 0

    def _node_idle(self) -> bool:
        self._check_alive()
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True, text=True
        ).stdout.strip()
        return out == "idle"

    def _check_alive(self) -> None:
        for p in self._procs:
            if p.poll() is not None:
                name = Path(p.args[0]).name
                out = (self.root / "log" / f"{name}.out").read_text(errors="replace")
                logf = self.root / "log" / f"{name}.log"
                logtxt = logf.read_text(errors="replace") if logf.exists() else ""
                raise RuntimeError(f"local SLURM: {name} exited with {p.returncode}\n{out}\n{logtxt[-3000:]}")

    # ---- jobs ----------------------------------------------------------------------
    def sbatch(self, args: list[str], env: dict | None = None, cwd: str | Path | None = None) -> str:
        """Submits `sbatch --parsable ARGS` and returns the job id."""
        out = subprocess.run(
            ["sbatch", "--parsable", *args], env=self.env(env), cwd=cwd, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out.stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str:
        """The live state from the controller (PENDING, RUNNING, COMPLETED, ...), '' once purged."""
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], env=self.env(), capture_output=True, text=True
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    def wait_running(self, job_id: str, timeout_s: float = 60) -> None:
        _wait_for(lambda: self.job_state(job_id) == "RUNNING", timeout_s, f"job {job_id} to run",
                  self.root / "log" / "slurmctld.log")

    def wait(self, job_id: str, timeout_s: float = 300) -> JobResult:
        """Polls squeue until the job leaves the queue, then reads State/ExitCode from `sacct -c`."""
        active = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
                  "STAGE_OUT"}
        try:
            _wait_for(lambda: self.job_state(job_id) not in active, timeout_s, f"job {job_id} to finish",
                      self.root / "log" / "slurmctld.log")
        except RuntimeError:
            subprocess.run(["scancel", job_id], env=self.env(), capture_output=True)
            raise
        return self._completion_record(job_id)

    def _completion_record(self, job_id: str) -> JobResult:
        def record() -> list[str] | None:
            out = subprocess.run(
                ["sacct", "-c", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode"],
                env=self.env(), capture_output=True, text=True,
            ).stdout
            # A requeued job has a record per run: the last one is the run that just ended.
            rows = [line.split("|") for line in out.splitlines() if line.split("|")[0] == job_id]
            return rows[-1] if rows else None

        _wait_for(lambda: record() is not None, 20, f"job {job_id} in {self.jobcomp}")
        _, state, exit_code = record()
        return JobResult(job_id=job_id, state=state.split()[0], exit_code=exit_code)

    # ---- tear-down -------------------------------------------------------------------
    def stop(self) -> None:
        env = self.env()
        if self._procs and all(p.poll() is None for p in self._procs):
            subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for p in reversed(self._procs):  # slurmd first, then slurmctld
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs.clear()
        self._kill_leftovers()
        if self._munged_pid is not None:
            try:
                os.kill(self._munged_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._munged_pid = None

    def _kill_leftovers(self) -> None:
        """Job tasks and slurmstepd outlive slurmd; they carry our SLURM_CONF in their environment."""
        marker = f"SLURM_CONF={self.conf}".encode()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                comm = (entry / "comm").read_text().strip()
                is_job = any(v.startswith(b"SLURM_JOB_ID=") for v in environ) or comm == "slurmstepd"
                if marker in environ and is_job:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

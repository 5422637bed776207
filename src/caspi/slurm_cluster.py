"""A real SLURM cluster of one node (or a few) in a folder, started and stopped from Python: for tests and benchmarks.

`SlurmCluster(root).start()` runs Debian's `slurm-wlm` daemons as this (root) user: `munged` (as the munge user, with
its own key and socket), `slurmctld` and `slurmd -N node1`, each in the foreground under this process so that
`stop()` ends them by PID. Everything they write (slurm.conf, state, spool, logs) lies under `root`; only munged's
folder is elsewhere (a fresh folder under the system's temp dir), because munged refuses a socket whose parent folders
are not searchable by everyone, and pytest's temp folders are private to root.

Clients need `SLURM_CONF`: run them with `cluster.env` (or `cluster.run([...])`); a job inherits it from `sbatch`.
The configuration is the one ../shared/REFERENCE.md ("A one-node SLURM cluster") measured: the node on 127.0.0.1 with
the CPUs `slurmd -C` reports, `RealMemory` set (else every `--mem` is rejected), linuxproc process tracking, no
accounting, `JobRequeue=1`, and `AuthInfo=cred_expire=5` with a one-second scheduler so that a requeued job restarts in
seconds rather than after the default two minutes. Memory is not a consumable resource here (`CR_Core`), so jobs
share the node's memory and only CPUs limit how many run at once.

`SlurmCluster(root, nodes=2)` runs one `slurmd -N nodeK` per node on this host (measured with Debian's 22.05.8, which
is not built with --enable-multiple-slurmd: the per-node `Port=` and `%n` in the slurmd paths work all the same):
node K on 127.0.0.K (all of 127/8 is loopback on Linux) with its own port, spool folder, pid file and log, each
declaring the CPUs of the whole machine. Real clusters resolve their node names, and jobs rely on it (torchrun's
rendezvous on the first node of `$SLURM_JOB_NODELIST`), so each slurmd runs in a private mount namespace
(`unshare --mount`, needs CAP_SYS_ADMIN) where /etc/hosts is this machine's file plus `127.0.0.K nodeK`: its jobs
resolve the node names, nothing else on the machine sees them.

Unlike a cluster that tracks processes by cgroup, linuxproc finds a step's processes by parentage: one whose parent
died (a trainer orphaned by its torchrun) escapes it, and the step's end does not SIGKILL it here. A job that loses its
launcher can therefore look fine on this cluster: check the launcher itself (its log lines, its exit) in tests.

Needs root and the packages `scripts/ensure-slurm` installs; imports only the standard library and caspi.errors.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from caspi.errors import DependencyError, SchedulerError

NODE = "node1"
PARTITION = "debug"
PROGRAMS = {  # program → the Debian package that has it (scripts/ensure-slurm installs both)
    "munged": "munge",
    "slurmctld": "slurm-wlm",
    "slurmd": "slurm-wlm",
    "sbatch": "slurm-wlm",
    "scontrol": "slurm-wlm",
    "squeue": "slurm-wlm",
    "scancel": "slurm-wlm",
    "unshare": "util-linux",  # only for several nodes (their slurmds' mount namespaces)
}
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")  # where Debian puts the daemons (not on every user's PATH)
# States a job does not leave by itself: waiting for another one of them is pointless.
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                             "BOOT_FAIL", "DEADLINE", "PREEMPTED"})
LOG_TAIL_LINES = 15


def find_program(name: str) -> str:
    """The path of a SLURM or munge program, or DependencyError naming the package to install."""
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        raise DependencyError(f"{name} is not installed (Debian package {PROGRAMS.get(name, 'slurm-wlm')}); run "
                              "scripts/ensure-slurm as root, or: apt-get install -y slurm-wlm munge")
    return found


def node_hardware() -> dict[str, int]:
    """What `slurmd -C` reports for this machine: CPUs, Boards, SocketsPerBoard, CoresPerSocket, ThreadsPerCore,
    RealMemory (MB)."""
    out = subprocess.run([find_program("slurmd"), "-C"], capture_output=True, text=True, timeout=30)
    fields = dict(re.findall(r"(\w+)=(\d+)\b", out.stdout.splitlines()[0] if out.stdout else ""))
    wanted = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    missing = [key for key in wanted if key not in fields]
    if out.returncode != 0 or missing:
        raise SchedulerError(f"`slurmd -C` (exit {out.returncode}) did not report {', '.join(missing) or 'cleanly'}: "
                             f"{out.stdout.strip()} {out.stderr.strip()}")
    return {key: int(fields[key]) for key in wanted}


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol show -o` record ("JobId=3 JobName=wrap JobState=RUNNING ...") as a dict. A value with spaces
    (rare: a command's arguments) keeps only its first word."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][\w/:]*)=(\S*)", line))


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it): two clusters, or a system slurmctld, do not clash."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"--- {path}: (not written)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path} (last {len(text)} lines):\n" + "\n".join(text)


class SlurmCluster:
    """One node (`node1`, partition `debug`) on 127.0.0.1 whose files lie under `root`; with `nodes=N`, the nodes
    node1 … nodeN on 127.0.0.1 … 127.0.0.N, all in partition `debug` (see the module docstring).

    `cpus` and `memory_mb` (per node) default to what `slurmd -C` reports; fewer (or more) CPUs may be declared, e.g.
    to run several jobs at once on few cores. Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int | None = None, nodes: int = 1):
        if not 1 <= nodes <= 254:
            raise SchedulerError(f"a SLURM test cluster has 1 to 254 nodes (127.0.0.1 to .254), not {nodes}")
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.nodes = [f"node{k}" for k in range(1, nodes + 1)]  # node K listens on 127.0.0.K
        self.conf = self.root / "slurm.conf"
        self.log_dir = self.root / "log"
        self.munge_dir: Path | None = None
        self._procs: dict[str, subprocess.Popen] = {}  # daemon name → its process, in start order

    # -- start -------------------------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with SLURM_CONF pointing at the cluster: pass it to every SLURM client."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        """Start munged, slurmctld and slurmd (one per node), and return once the nodes are idle (SchedulerError
        after `timeout` s, with the daemons' log tails)."""
        if self._procs:
            raise SchedulerError(f"the cluster under {self.root} is already running")
        if os.geteuid() != 0:
            raise DependencyError("a SLURM test cluster needs root (slurmd runs jobs as their user, munged as munge)")
        programs = {name: find_program(name) for name in PROGRAMS if name != "unshare" or len(self.nodes) > 1}
        spools = ["spool"] if len(self.nodes) == 1 else [f"spool-{node}" for node in self.nodes]  # slurm.conf's
        for sub in ("state", "log", "run", *spools):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)  # daemons outlive a crashed test session otherwise
        try:
            socket_path = self._start_munged(programs["munged"])
            self._write_conf(socket_path)
            self._spawn("slurmctld", [programs["slurmctld"], "-D", "-f", str(self.conf)])
            if len(self.nodes) == 1:
                self._spawn("slurmd", [programs["slurmd"], "-D", "-N", NODE, "-f", str(self.conf)])
            else:
                hosts = self._write_hosts(programs["unshare"])
                for node in self.nodes:
                    # unshare execs sh, which execs slurmd: the PID stop() signals is slurmd's
                    self._spawn(f"slurmd-{node}", [
                        programs["unshare"], "--mount", "--propagation", "private", "sh", "-c",
                        'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
                        programs["slurmd"], "-D", "-N", node, "-f", str(self.conf)])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munged(self, munged: str) -> Path:
        """munged as the munge user (it refuses to run as root) with a fresh key; its socket path once it exists."""
        try:
            munge_user = pwd.getpwnam("munge")
        except KeyError:
            raise DependencyError("there is no `munge` user: install Debian's munge (scripts/ensure-slurm)") from None
        self.munge_dir = Path(tempfile.mkdtemp(prefix="caspi-munge-"))
        self.munge_dir.chmod(0o755)  # munged wants every folder above its socket searchable by all
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))  # this cluster's own key: nothing shared with a system munged
        key.chmod(0o400)
        for path in (self.munge_dir, key):
            os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
        sock = self.munge_dir / "munge.socket"
        self._spawn("munged", [munged, "--foreground", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={self.munge_dir / 'munged.pid'}",
                               f"--log-file={self.munge_dir / 'munged.log'}",
                               f"--seed-file={self.munge_dir / 'munged.seed'}"],
                    user=munge_user.pw_uid, group=munge_user.pw_gid, extra_groups=[])
        self._wait_for(lambda: sock.exists(), 10.0, "munged to create its socket")
        return sock

    def _write_hosts(self, unshare: str) -> Path:
        """This machine's /etc/hosts plus a line per node: the file the slurmds' mount namespaces see. DependencyError
        when no mount namespace can be made here (a container without CAP_SYS_ADMIN)."""
        probe = subprocess.run([unshare, "--mount", "--propagation", "private", "true"],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            raise DependencyError(f"a SLURM test cluster of {len(self.nodes)} nodes runs each slurmd in a private "
                                  "mount namespace (so that jobs resolve the node names), and `unshare --mount` failed "
                                  "here "
                                  f"(exit {probe.returncode}: {probe.stderr.strip()}); it needs CAP_SYS_ADMIN")
        hosts = self.root / "run" / "hosts"
        nodes = "".join(f"127.0.0.{k} {node}\n" for k, node in enumerate(self.nodes, start=1))
        hosts.write_text(Path("/etc/hosts").read_text().rstrip("\n") + "\n# caspi test cluster nodes\n" + nodes)
        return hosts

    def _write_conf(self, munge_socket: Path) -> None:
        hw = node_hardware()
        cpus = self.cpus or hw["CPUs"]
        if cpus == hw["CPUs"]:
            layout = " ".join(f"{k}={hw[k]}" for k in ("Boards", "SocketsPerBoard", "CoresPerSocket",
                                                      "ThreadsPerCore"))
        else:  # a declared count: one socket of `cpus` cores, and slurmd told to trust the file over the hardware
            layout = f"Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1"
        memory = self.memory_mb or hw["RealMemory"]
        r = self.root
        slurmd_port = free_port()
        several = len(self.nodes) > 1  # several slurmd on this host: a port each, per node (%n) spool, pid file, log
        per_node = "-%n" if several else ""
        node_lines = "\n".join(
            f"NodeName={node} NodeAddr=127.0.0.{k}"
            + (f" Port={slurmd_port if k == 1 else free_port()}" if several else "")
            + f" CPUs={cpus} {layout} RealMemory={memory} State=UNKNOWN" for k, node in enumerate(self.nodes, start=1))
        self.conf.write_text(f"""\
# A test cluster of {len(self.nodes)} node(s) written by caspi.slurm_cluster (see its docstring and
# ../shared/REFERENCE.md).
ClusterName=caspi
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits for its credential to expire before it may start again: 5 s instead of 120 s.
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool{per_node}
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd{per_node}.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd{per_node}.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobRequeue=1
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# A finished job stays visible to `scontrol show job` for an hour (the tests read its final state and restarts).
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
{"SlurmdParameters=config_overrides" if cpus != hw["CPUs"] else ""}
{node_lines}
PartitionName={PARTITION} Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str], **popen) -> None:
        out = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115 (the daemon holds it; closed with the process)
        try:
            # A session of its own: a Ctrl-C meant for pytest does not reach the daemons before stop() does.
            self._procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                                 env=self.env, start_new_session=True, **popen)
        finally:
            out.close()

    def _wait_idle(self, timeout: float) -> None:
        def idle() -> bool:
            out = self.run(["scontrol", "show", "node", ",".join(self.nodes), "-o"], check=False)
            states = [parse_record(line).get("State", "").split("+")[0] for line in out.stdout.splitlines()]
            return out.returncode == 0 and states == ["IDLE"] * len(self.nodes)

        self._wait_for(idle, timeout, f"node(s) {','.join(self.nodes)} to become idle")

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [f"{name} exited with {proc.returncode}" for name, proc in self._procs.items()
                    if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = "; ".join(dead) if dead else f"still waiting after {timeout:.0f} s"
                raise SchedulerError(f"SLURM test cluster under {self.root}: waiting for {what}: {why}\n"
                                     + self.log_tails())
            time.sleep(0.1)

    def log_tails(self) -> str:
        """The last lines of every daemon's log: what an error about the cluster shows."""
        slurmds = ["slurmd"] if len(self.nodes) == 1 else [f"slurmd-{node}" for node in self.nodes]
        paths = [self.log_dir / f"{name}.log" for name in ("slurmctld", *slurmds)]
        paths += [self.log_dir / f"{name}.out" for name in self._procs]
        if self.munge_dir is not None:
            paths.append(self.munge_dir / "munged.log")
        return "\n".join(tail(path) for path in paths)

    # -- use ---------------------------------------------------------------------------------------------------

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60.0,
            cwd: Path | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM client (`["sbatch", "--parsable", ...]`) against this cluster, its output captured as text;
        with `check`, a failure raises SchedulerError with the command and its stderr. `env` adds to `self.env`."""
        full_env = {**self.env, **(env or {})}
        try:
            out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise SchedulerError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from None
        if check and out.returncode != 0:
            raise SchedulerError(f"`{' '.join(cmd)}` failed (exit {out.returncode}): {out.stderr.strip()}")
        return out

    def job(self, job_id: int | str) -> dict[str, str]:
        """The job's record as `scontrol show job -o` prints it (JobState, Restarts, ExitCode, StdOut, ...)."""
        return parse_record(self.run(["scontrol", "show", "job", str(job_id), "-o"]).stdout)

    def wait_job(self, job_id: int | str, states: Iterable[str] = ("COMPLETED",), timeout: float = 60.0,
                 poll: float = 0.2) -> dict[str, str]:
        """Wait until the job is in one of `states` (e.g. {"RUNNING"}, {"COMPLETED"}) and return its record.
        SchedulerError when it ends in another state, or after `timeout` s; the message has the job's record."""
        wanted = {s.upper() for s in states}
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            state = record.get("JobState", "")
            if state in wanted:
                return record
            if state in TERMINAL_STATES or time.monotonic() > deadline:
                why = f"ended {state}" if state in TERMINAL_STATES else f"still {state} after {timeout:.0f} s"
                log = Path(record.get("StdOut", ""))
                raise SchedulerError(f"job {job_id} {why}, not {'/'.join(sorted(wanted))} "
                                     f"(Reason={record.get('Reason')}, ExitCode={record.get('ExitCode')}, "
                                     f"Restarts={record.get('Restarts')})"
                                     + (f"\n{tail(log)}" if log.is_file() else ""))
            time.sleep(poll)

    def job_ids(self) -> list[str]:
        """The ids of the jobs still queued or running."""
        return self.run(["squeue", "-h", "-o", "%i"]).stdout.split()

    # -- stop --------------------------------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job and wait for them to end, then stop slurmd, slurmctld and munged by PID (SIGTERM, then
        SIGKILL after `timeout` s). Safe to call twice, or after a failed start."""
        atexit.unregister(self.stop)
        slurmds = [name for name in self._procs if name.startswith("slurmd")]
        if self._alive("slurmctld") and slurmds and all(map(self._alive, slurmds)):
            try:
                jobs = self.job_ids()
                if jobs:
                    self.run(["scancel", *jobs], check=False)
                    deadline = time.monotonic() + timeout
                    while self.job_ids() and time.monotonic() < deadline:
                        time.sleep(0.2)
            except SchedulerError:
                pass  # a controller that no longer answers: its jobs end with slurmd below
        for name in (*slurmds, "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

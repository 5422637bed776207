"""`caspi slurm` without a cluster: the script's text for 1 × 1 CPU, 1 × 2 and 2 × 8 GPUs, `bash -n` on each, the
recipe's `slurm:` section, `submit` against a fake sbatch, and the script run for real outside SLURM with fake
`caspi` (and for the multi-node case fake `torch.distributed.run`, `srun`, `scontrol`) processes that record every
signal they get: the trainers must get USR1/TERM once, whichever arrives and however often (caspi.slurm's docstring
has what was measured on torchrun and srun). The 1 × 2 case runs the real torchrun.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caspi.cli import main as cli_main
from caspi.config import Recipe, load_recipe, validate_recipe_dict
from caspi.config.schema import slurm_time_seconds
from caspi.errors import ConfigError, DependencyError, SchedulerError
from caspi.slurm import job_script, submit, write_script

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
HALF = ["train.micro_batch=8"]  # demo-cpu.yaml's effective batch (16) over 2 processes


def _script(name: str, overrides=(), **kw) -> str:
    path = RECIPES / name
    return job_script(load_recipe(path, list(overrides)), path, "/runs/r", list(overrides), **kw)


def _sbatch(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]


def _bash_n(text: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(text, encoding="utf-8")
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------------------------ the script's text


def test_one_cpu_process_execs_the_trainer(tmp_path):
    text = _script("demo-cpu.yaml", ["train.max_steps=5"], workdir="/work")
    assert _sbatch(text) == ["--job-name=caspi-demo-cpu", "--nodes=1", "--ntasks-per-node=1", "--requeue",
                             "--signal=B:USR1@120", "--open-mode=append", "--output=/runs/r/slurm-%j.log",
                             "--error=/runs/r/slurm-%j.log"]
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail\n" in text
    assert 'exec "$PY" -m caspi train --recipe "$RECIPE" --out "$RUN" train.max_steps=5\n' in text
    assert f"RECIPE={RECIPES / 'demo-cpu.yaml'}\n" in text and "RUN=/runs/r\n" in text and "cd /work\n" in text
    assert f"PY={sys.executable}\n" in text
    assert '"$PY" -m caspi doctor --recipe "$RECIPE" --out "$RUN" train.max_steps=5 || rc=$?' in text
    assert '"$PY" -m caspi plan --recipe "$RECIPE" train.max_steps=5 ||' in text  # plan has no --out
    assert "torch.distributed.run" not in text.split("caspi_traps  #")[1] and "srun" not in text
    _bash_n(text, tmp_path)


def test_one_node_two_gpus_runs_torchrun_standalone_behind_the_forwarder(tmp_path):
    text = _script("round2-2xa100.yaml", partition="gpu", time="12:00:00")
    assert _sbatch(text) == ["--job-name=caspi-round2-2xa100", "--nodes=1", "--ntasks-per-node=1", "--gres=gpu:2",
                             "--partition=gpu", "--time=12:00:00", "--requeue", "--signal=B:USR1@120",
                             "--open-mode=append", "--output=/runs/r/slurm-%j.log", "--error=/runs/r/slurm-%j.log"]
    assert ('export CASPI_SLURM_REQUEUE=script  # the trainers leave the requeue to this shell\nrc=0\n'
            'caspi_run TERM "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 2 -m caspi train '
            '--recipe "$RECIPE" --out "$RUN" || rc=$?\n'
            'if [ "$rc" -ne 0 ]; then caspi_requeue_if_warned; fi\nexit "$rc"\n') in text
    assert "hardware." not in text  # the recipe already says 1 × 2: no overrides
    assert "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}" in text
    assert "exec " not in text and "srun" not in text
    _bash_n(text, tmp_path)


def test_two_nodes_of_eight_gpus_srun_one_torchrun_per_node_with_c10d(tmp_path):
    overrides = ["slurm.cpus_per_task=64", "slurm.mem=0", "slurm.grace_seconds=300", "slurm.extra=[--qos=high]",
                 "slurm.setup=[module load cuda/12.4]"]
    text = _script("round2-8xa100.yaml", overrides, nodes=2, partition="gpu", account="asr", time="1-00:00:00")
    assert _sbatch(text) == ["--job-name=caspi-round2-8xa100", "--nodes=2", "--ntasks-per-node=1", "--gres=gpu:8",
                             "--cpus-per-task=64", "--mem=0", "--partition=gpu", "--account=asr",
                             "--time=1-00:00:00", "--requeue", "--signal=B:USR1@300", "--open-mode=append",
                             "--output=/runs/r/slurm-%j.log", "--error=/runs/r/slurm-%j.log", "--qos=high"]
    assert "\nmodule load cuda/12.4\n" in text
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300" in text
    # --nodes 2 differs from the recipe's hardware.nodes (1): every command gets the override.
    assert text.count(" hardware.nodes=2") == 3 and "hardware.gpus_per_node" not in text
    assert 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)\n' in text
    assert "PORT=${CASPI_RDZV_PORT:-$(( 15000 + SLURM_JOB_ID % 15000 ))}\n" in text
    launch = text[text.index("caspi_run USR1"):]
    assert launch == (
        "caspi_run USR1 srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=64 \\\n"
        '  bash -c "$(declare -f caspi_pass caspi_traps caspi_run caspi_no_usr1); caspi_traps; '
        'caspi_run TERM caspi_no_usr1 \\"\\$@\\"" caspi-node \\\n'
        '  "$PY" -m torch.distributed.run --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\\n'
        '  --rdzv_endpoint "$HEAD:$PORT" --rdzv_id "$SLURM_JOB_ID" \\\n'
        "  -m caspi train --recipe \"$RECIPE\" --out \"$RUN\" slurm.cpus_per_task=64 slurm.mem=0 "
        "slurm.grace_seconds=300 'slurm.extra=[--qos=high]' 'slurm.setup=[module load cuda/12.4]' "
        'hardware.nodes=2 || rc=$?\nif [ "$rc" -ne 0 ]; then caspi_requeue_if_warned; fi\nexit "$rc"\n')
    assert "\nexport CASPI_SLURM_REQUEUE=script  # the trainers leave the requeue to this shell\nrc=0\ncaspi_run USR1" \
        in text
    _bash_n(text, tmp_path)


def test_flags_override_the_recipe_and_are_checked_like_it():
    text = _script("demo-cpu.yaml", ["slurm.partition=cpu", "slurm.time=60"], partition="long", time="2:00:00")
    assert "--partition=long" in _sbatch(text) and "--time=2:00:00" in _sbatch(text)
    with pytest.raises(ConfigError, match=r"slurm\.time: '2h' is not a SLURM time limit"):
        _script("demo-cpu.yaml", time="2h")
    with pytest.raises(ConfigError, match=r"slurm\.grace_seconds: 120 s is not shorter than slurm\.time '1'"):
        _script("demo-cpu.yaml", time="1")
    with pytest.raises(ConfigError, match=r"train\.effective_batch: 64 is not a multiple .* \(2 × 6 = 12\)"):
        _script("round2-2xa100.yaml", nodes=3)
    text = _script("demo-cpu.yaml", ["train.micro_batch=8"], gpus_per_node=2)  # CPU: processes, no --gres
    assert not any(line.startswith("--gres") for line in _sbatch(text))
    assert "--standalone --nnodes 1 --nproc_per_node 2" in text and text.count(" hardware.gpus_per_node=2") == 3


# ------------------------------------------------------------------------------------------ the recipe's slurm section


def test_every_shipped_recipe_has_the_default_slurm_section():
    for path in sorted(RECIPES.glob("*.yaml")):
        s = load_recipe(path).slurm
        assert (s.partition, s.account, s.time, s.grace_seconds, s.extra, s.setup) == (None, None, None, 120, [], [])


def test_slurm_section_reports_every_bad_value_by_field():
    bad = {"time": "2h", "mem": "2GB", "grace_seconds": 5, "extra": ["--time=5", "qos", "--qos=high"],
           "setup": ["a\nb"], "cpus_per_task": 0}
    with pytest.raises(ConfigError) as raised:
        validate_recipe_dict({"name": "x", "slurm": bad})
    assert sorted(p.split(":")[0] for p in raised.value.problems) == [
        "slurm.cpus_per_task", "slurm.extra.0", "slurm.extra.1", "slurm.grace_seconds", "slurm.mem",
        "slurm.setup.0", "slurm.time"]
    assert "slurm.extra.0: --time is set by slurm.time (or --time)" in raised.value.problems
    with pytest.raises(ConfigError, match="slurm.partitio"):
        validate_recipe_dict({"name": "x", "slurm": {"partitio": "gpu"}})  # unknown keys are refused
    assert validate_recipe_dict({"name": "x", "slurm": {"time": "UNLIMITED", "mem": "64000"}}).slurm.mem == "64000"


def test_slurm_time_forms():
    assert [slurm_time_seconds(t) for t in ("90", "90:30", "2:00:00", "1-12", "1-12:30", "3-00:00:00")] == [
        5400, 5430, 7200, 129600, 131400, 259200]
    assert slurm_time_seconds("UNLIMITED") is None
    with pytest.raises(ValueError):
        slurm_time_seconds("1:2:3:4")


def test_the_slurm_section_never_changes_the_fingerprint():
    plain = Recipe(name="x")
    moved = validate_recipe_dict({"name": "x", "slurm": {"partition": "other", "time": "10", "grace_seconds": 30}})
    assert moved.fingerprint() == plain.fingerprint()
    assert validate_recipe_dict({"name": "x", "train": {"seed": 3}}).fingerprint() != plain.fingerprint()
    # A run started before the section existed stored a fingerprint without it: `without=["slurm"]` (what
    # caspi.train.state.added_at_default finds for a section at its defaults) gives that one back.
    old = {k: v for k, v in plain.to_dict().items() if k not in ("slurm",)}
    for key in ("budget_usd", "over_budget"):
        del old["hardware"][key]
    assert moved.fingerprint(without=["slurm"]) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------- submission


def _fake_program(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body, encoding="utf-8")
    path.chmod(0o755)


def test_submit_returns_the_job_id_and_reports_sbatch_errors(tmp_path):
    script = write_script("#!/bin/bash\ntrue\n", tmp_path / "run" / "job.sbatch", run_dir=tmp_path / "run")
    assert os.access(script, os.X_OK)
    bin_ok, bin_bad, empty = tmp_path / "ok", tmp_path / "bad", tmp_path / "empty"
    _fake_program(bin_ok, "sbatch", f'echo "$@" > {tmp_path}/args; echo "4242;cluster1"\n')
    _fake_program(bin_bad, "sbatch", 'echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1\n')
    empty.mkdir()
    assert submit(script, env={"PATH": str(bin_ok)}) == "4242"
    assert (tmp_path / "args").read_text().split() == ["--parsable", str(script)]
    with pytest.raises(SchedulerError, match="exit 1.*invalid partition specified: gpu"):
        submit(script, env={"PATH": str(bin_bad)})
    with pytest.raises(DependencyError, match="sbatch not found"):
        submit(script, env={"PATH": str(empty)})


def test_cli_writes_the_script_and_with_submit_prints_only_the_job_id(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = ["slurm", "--recipe", str(RECIPES / "demo-cpu.yaml"), "--out", str(run), "train.max_steps=3"]
    assert cli_main(args + ["--partition", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out == f"wrote {run / 'job.sbatch'}\n  submit it with: sbatch {run / 'job.sbatch'}\n"
    text = (run / "job.sbatch").read_text()
    assert "--partition=cpu" in _sbatch(text) and "train.max_steps=3 || rc=$?" in text
    _fake_program(tmp_path / "bin", "sbatch", 'echo 77\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert cli_main(args + ["--submit", "--script", str(tmp_path / "elsewhere.sbatch")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "77\n" and "submitted job 77" in captured.err
    assert (tmp_path / "elsewhere.sbatch").is_file()
    assert cli_main(args + ["--time", "soon"]) == 2
    assert "slurm.time: 'soon'" in capsys.readouterr().err


# -------------------------------------------------------------------------------- the script run, with fake programs

# A fake process: records its argv and every TERM/USR1 in FAKE_LOG/<kind>-<rank>-<pid>.log (and its
# CASPI_SLURM_REQUEUE in FAKE_LOG/requeue-by-<kind>-<rank>-<pid>), marks itself ready once
# its handlers are in, waits for a signal (FAKE_WAIT_S), "saves" for FAKE_SAVE_S (more signals may come meanwhile)
# and exits AFTER_SIGNAL, as the trainer (143) or torchrun (1) does.
_FAKE = '''import json, os, signal, sys, time
KIND, AFTER_SIGNAL = {kind!r}, {after}
kind = KIND or sys.argv[1]
log = os.environ["FAKE_LOG"]
me = f"{{kind}}-{{os.environ.get('RANK', os.environ.get('SLURM_NODEID', '0'))}}-{{os.getpid()}}"
def write(line):
    with open(os.path.join(log, me + ".log"), "a") as f:
        f.write(line + "\\n")
write("argv " + json.dumps(sys.argv[1:]))
with open(os.path.join(log, "requeue-by-" + me), "w") as f:
    f.write(os.environ.get("CASPI_SLURM_REQUEUE", "-"))
if kind == "doctor":
    sys.exit(int(os.environ.get("FAKE_DOCTOR_EXIT", "0")))
if kind == "plan":
    print("fake plan summary")
    sys.exit(0)
got = []
def handle(signum, frame):
    got.append(signum)
    write(signal.Signals(signum).name)
for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, handle)
open(os.path.join(log, "ready-" + me), "w").close()
deadline = time.monotonic() + float(os.environ.get("FAKE_WAIT_S", "30"))
while not got and time.monotonic() < deadline:
    time.sleep(0.02)
if not got:
    sys.exit(0)
time.sleep(float(os.environ.get("FAKE_SAVE_S", "0.5")))
write(f"exit {{AFTER_SIGNAL}}")
sys.exit(AFTER_SIGNAL)
'''

# srun as Slurm's source has it (caspi.slurm docstring): USR1 goes to every task, TERM becomes SIGKILL. Two tasks
# (nodes) on this machine, each with its SLURM_NODEID.
_FAKE_SRUN = '''echo "srun $*" >> "$FAKE_LOG/srun.args"
while [ "${1#--}" != "$1" ]; do shift; done
pids=()
for node in 0 1; do SLURM_NODEID=$node "$@" & pids+=($!); done
trap 'echo USR1 >> "$FAKE_LOG/srun.signals"; kill -USR1 "${pids[@]}"' USR1
trap 'echo TERM >> "$FAKE_LOG/srun.signals"; kill -KILL "${pids[@]}"' TERM
rc=0
for p in "${pids[@]}"; do
  while :; do wait "$p"; s=$?; kill -0 "$p" 2>/dev/null || break; done
  [ "$s" -gt "$rc" ] && rc=$s
done
exit "$rc"
'''


@pytest.fixture
def fakes(tmp_path):
    """(fake python path for the caspi commands, a second one that also fakes torch.distributed.run, bin folder
    with srun and scontrol, log folder)."""
    caspi_only, with_torch, log = tmp_path / "fake-caspi", tmp_path / "fake-torch", tmp_path / "log"
    log.mkdir()
    for root in (caspi_only, with_torch):
        (root / "caspi").mkdir(parents=True)
        (root / "caspi" / "__init__.py").write_text("")
        (root / "caspi" / "__main__.py").write_text(_FAKE.format(kind="", after=143))
    (with_torch / "torch" / "distributed").mkdir(parents=True)
    (with_torch / "torch" / "__init__.py").write_text("")
    (with_torch / "torch" / "distributed" / "__init__.py").write_text("")
    (with_torch / "torch" / "distributed" / "run.py").write_text(_FAKE.format(kind="torchrun", after=1))
    bin_ = tmp_path / "bin"
    _fake_program(bin_, "srun", _FAKE_SRUN)
    _fake_program(bin_, "scontrol", 'echo "scontrol $*" >> "$FAKE_LOG/scontrol.args"\n'
                                    '[ "$1" = show ] && printf "localhost\\nnode2\\n"; exit 0\n')
    return caspi_only, with_torch, bin_, log


def _start(text: str, tmp_path: Path, pythonpath: Path, bin_: Path, log: Path, **env) -> subprocess.Popen:
    script = tmp_path / "job.sbatch"
    script.write_text(text, encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCH_ELASTIC", "PYTHONPATH"))}
    full = {**base, "PATH": f"{bin_}:{os.environ['PATH']}", "PYTHONPATH": str(pythonpath), "FAKE_LOG": str(log),
            "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[1-2]", **env}
    out = open(tmp_path / "job.log", "w")
    return subprocess.Popen(["bash", str(script)], env=full, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ready(log: Path, kind: str, n: int, proc: subprocess.Popen, timeout: float = 60.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = sorted(log.glob(f"ready-{kind}-*"))
        if len(ready) >= n:
            return ready
        assert proc.poll() is None, f"the job ended ({proc.returncode}) before {n} {kind} process(es) were ready"
        time.sleep(0.05)
    raise AssertionError(f"{n} {kind} process(es) not ready in {timeout} s")


def _records(log: Path, kind: str) -> list[list[str]]:
    """Each `kind` process's recorded lines after its argv, in rank order."""
    return [p.read_text().splitlines()[1:] for p in sorted(log.glob(f"{kind}-*.log"))]


def _requeues(log: Path) -> list[str]:
    """The `scontrol requeue` calls the job made (the fake scontrol logs every call)."""
    path = log / "scontrol.args"
    return [line for line in path.read_text().splitlines() if " requeue " in line] if path.exists() else []


def _requeue_by(log: Path, kind: str) -> list[str]:
    """Each `kind` process's CASPI_SLURM_REQUEUE ("-": unset), in rank order."""
    return [p.read_text() for p in sorted(log.glob(f"requeue-by-{kind}-*"))]


def _finish(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _job_text(recipe: str, tmp_path: Path, overrides=(), **kw) -> str:
    path = RECIPES / recipe
    return job_script(load_recipe(path, list(overrides)), path, tmp_path / "run", list(overrides),
                      python=sys.executable, workdir=tmp_path, **kw)


def test_single_process_gets_usr1_itself_and_the_job_ends_143(tmp_path, fakes):
    caspi_only, _, bin_, log = fakes
    proc = _start(_job_text("demo-cpu.yaml", tmp_path), tmp_path, caspi_only, bin_, log)
    _wait_ready(log, "train", 1, proc)
    os.kill(proc.pid, signal.SIGUSR1)  # --signal=B:USR1 reaches the job shell, which is the trainer now (exec)
    assert _finish(proc) == 143
    assert _records(log, "train") == [["SIGUSR1", "exit 143"]]
    argv = json.loads((next(log.glob("train-*.log"))).read_text().splitlines()[0].removeprefix("argv "))
    assert argv == ["train", "--recipe", str(RECIPES / "demo-cpu.yaml"), "--out", str(tmp_path / "run")]
    job_log = (tmp_path / "job.log").read_text()
    assert "caspi job 1234: start 0 (SLURM_RESTART_COUNT=unset)" in job_log and "fake plan summary" in job_log
    # The trainer itself asks for the requeue on a USR1 (caspi.train.preempt), the shell is gone (exec).
    assert _requeue_by(log, "train") == ["-"] and _requeues(log) == []


def test_two_processes_under_real_torchrun_each_get_one_term(tmp_path, fakes):
    """USR1 twice and a TERM to the job shell: torchrun gets one TERM and passes it once to each trainer."""
    caspi_only, _, bin_, log = fakes
    proc = _start(_job_text("demo-cpu.yaml", tmp_path, HALF, gpus_per_node=2), tmp_path, caspi_only, bin_, log,
                  FAKE_SAVE_S="1.5")
    _wait_ready(log, "train", 2, proc)
    for sig in (signal.SIGUSR1, signal.SIGUSR1, signal.SIGTERM):
        os.kill(proc.pid, sig)
        time.sleep(0.2)
    assert _finish(proc) == 143  # torchrun exits 1 after a stop; the forwarder reports the trainers' 143
    assert _records(log, "train") == [["SIGTERM", "exit 143"], ["SIGTERM", "exit 143"]]
    assert [p.name.split("-")[1] for p in sorted(log.glob("train-*.log"))] == ["0", "1"]  # RANK 0 and 1
    job_log = (tmp_path / "job.log").read_text()
    assert job_log.count("passing SIGTERM to pid") == 1
    # A TERM came too: a cancel (or SLURM's own requeue). Nobody asks for a requeue; the trainers leave it to the
    # shell, which knows what came.
    assert _requeues(log) == [] and _requeue_by(log, "train") == ["script", "script"]


def test_a_warned_torchrun_job_is_requeued_by_its_shell_once_the_trainers_stopped(tmp_path, fakes):
    """USR1 alone (the time-limit warning): torchrun's trainers get TERM and cannot tell; the shell requeues once,
    after torchrun has exited."""
    caspi_only, _, bin_, log = fakes
    proc = _start(_job_text("demo-cpu.yaml", tmp_path, HALF, gpus_per_node=2), tmp_path, caspi_only, bin_, log)
    _wait_ready(log, "train", 2, proc)
    os.kill(proc.pid, signal.SIGUSR1)
    assert _finish(proc) == 143
    assert _records(log, "train") == [["SIGTERM", "exit 143"], ["SIGTERM", "exit 143"]]
    assert _requeues(log) == ["scontrol requeue 1234"]
    job_log = (tmp_path / "job.log").read_text()
    assert job_log.index("warned (SIGUSR1) before the time limit: requeueing job 1234") > \
        job_log.index("passing SIGTERM to pid")


def test_two_nodes_srun_gets_usr1_and_each_node_torchrun_one_term(tmp_path, fakes):
    _, with_torch, bin_, log = fakes
    text = _job_text("demo-cpu.yaml", tmp_path, [*HALF, "slurm.cpus_per_task=2"], nodes=2)
    proc = _start(text, tmp_path, with_torch, bin_, log, SLURM_RESTART_COUNT="1")
    _wait_ready(log, "torchrun", 2, proc)
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR1):
        os.kill(proc.pid, sig)
        time.sleep(0.2)
    assert _finish(proc) == 143
    assert (log / "srun.signals").read_text() == "USR1\n"  # never TERM: srun would SIGKILL the tasks
    assert _records(log, "torchrun") == [["SIGTERM", "exit 1"], ["SIGTERM", "exit 1"]]
    assert (log / "srun.args").read_text().startswith("srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=2 bash -c ")
    argv = json.loads(next(log.glob("torchrun-*.log")).read_text().splitlines()[0].removeprefix("argv "))
    assert argv[:11] == ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
                         f"localhost:{15000 + 1234}", "--rdzv_id", "1234", "-m"]
    assert argv[11:] == ["caspi", "train", "--recipe", str(RECIPES / "demo-cpu.yaml"), "--out", str(tmp_path / "run"),
                         "train.micro_batch=8", "slurm.cpus_per_task=2", "hardware.nodes=2"]
    job_log = (tmp_path / "job.log").read_text()
    assert "start 1 (SLURM_RESTART_COUNT=1)" in job_log and "fake plan summary" not in job_log  # plan: start 0 only
    assert _requeues(log) == []  # a TERM came: not requeued by the shell


def test_a_doctor_fail_ends_the_job_with_its_code_before_training(tmp_path, fakes):
    caspi_only, _, bin_, log = fakes
    proc = _start(_job_text("demo-cpu.yaml", tmp_path), tmp_path, caspi_only, bin_, log, FAKE_DOCTOR_EXIT="1")
    assert _finish(proc) == 1
    assert not list(log.glob("train-*")) and not list(log.glob("plan-*"))
    assert "caspi doctor found a FAIL (exit 1): not training" in (tmp_path / "job.log").read_text()


def test_a_finished_run_exits_0_without_doctor_or_training(tmp_path, fakes):
    caspi_only, _, bin_, log = fakes
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "event", "step": 4, "event": "finished",
                                                   "message": "finished at step 4, epoch 1"}) + "\n")
    proc = _start(_job_text("demo-cpu.yaml", tmp_path), tmp_path, caspi_only, bin_, log)
    assert _finish(proc) == 0
    assert not list(log.glob("*.log"))
    assert "already finished; nothing to train" in (tmp_path / "job.log").read_text()


@pytest.mark.parametrize("stop, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_a_warning_before_the_trainers_start_requeues_the_job_a_cancel_does_not(tmp_path, fakes, stop, requeued):
    caspi_only, _, bin_, log = fakes
    text = _job_text("demo-cpu.yaml", tmp_path)
    # The doctor is slow here: the signal comes while it runs (bash runs the trap once it returns).
    slow = text.replace('"$PY" -m caspi doctor', 'sleep 1; "$PY" -m caspi doctor', 1)
    proc = _start(slow, tmp_path, caspi_only, bin_, log, FAKE_WAIT_S="0")
    time.sleep(0.5)
    os.kill(proc.pid, stop)
    assert _finish(proc) == 143
    assert not list(log.glob("train-*"))
    assert _requeues(log) == (["scontrol requeue 1234"] if requeued else [])


def test_the_launcher_exit_code_passes_through_without_a_signal(tmp_path, fakes):
    caspi_only, _, bin_, log = fakes
    text = _job_text("demo-cpu.yaml", tmp_path, HALF, gpus_per_node=2)
    launch = next(line for line in text.splitlines() if line.startswith("caspi_run TERM"))
    for code, cmd in ((0, "true"), (3, "bash -c 'exit 3'"), (127, "no-such-launcher-here")):
        proc = _start(text.replace(launch, f"caspi_run TERM {cmd} || rc=$?"), tmp_path, caspi_only, bin_, log)
        assert _finish(proc) == code

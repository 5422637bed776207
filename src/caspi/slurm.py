"""`caspi slurm`: the sbatch script that runs a recipe under SLURM, requeues itself when warned or preempted, and
resumes; and its submission.

    from caspi.config import load_recipe
    from caspi.slurm import job_script, submit, write_script

    recipe = load_recipe("recipes/round2-8xa100.yaml", ["train.max_steps=1000"])
    text = job_script(recipe, "recipes/round2-8xa100.yaml", "runs/round2", ["train.max_steps=1000"], nodes=2,
                      partition="gpu", time="1-00:00:00")
    path = write_script(text, "runs/round2/job.sbatch", run_dir="runs/round2")
    job_id = submit(path)                        # `sbatch --parsable`; env= for another SLURM_CONF

What the script does, each start: says which start it is (`SLURM_RESTART_COUNT`, unset the first time = start 0);
exits 0 when the run already finished (`RUN/final/` and a "finished" event in `RUN/metrics.jsonl`, which a resume
truncates back to its checkpoint); runs `caspi doctor` (a FAIL ends the job with doctor's exit code: a job that exits
non-zero is not requeued, so a broken set-up cannot loop); prints `caspi plan` on start 0 (a plan that fails is only
reported); then starts the trainer:

    1 node × 1 process   exec python -m caspi train ...            (the job shell becomes the trainer)
    1 node × G           torchrun --standalone --nproc_per_node G -m caspi train ...
    N nodes × G          srun (one task per node) → bash → torchrun --nnodes N --rdzv_backend c10d
                         --rdzv_endpoint <first node>:<port> --rdzv_id $SLURM_JOB_ID -m caspi train ...

(`torchrun` is `python -m torch.distributed.run` of the same interpreter.) The flags' nodes and GPUs, where they
differ from the recipe's hardware block, become `hardware.nodes=` / `hardware.gpus_per_node=` overrides of every
command, so doctor, plan and the trainer's run.json see the hardware the job really has.

Signals. `#SBATCH --signal=B:USR1@<slurm.grace_seconds>` warns the job shell (only it: `B:`) before the time limit,
which SLURM does not requeue by itself; `scontrol requeue`, `scancel` and preemption send TERM. The trainers save on
either (`caspi.train.preempt`). Only the warning asks for a requeue (`scontrol requeue $SLURM_JOB_ID`, once per job):
a TERM is a cancel, which must stay cancelled, or a requeue or preemption that SLURM carries out itself. With one
process the trainer, which the job shell became, sees the USR1 and requeues; under torchrun it sees only the TERM the
shell turns the warning into, so the script exports `CASPI_SLURM_REQUEUE=script` and the job shell requeues
(`caspi_requeue_if_warned`) once the launcher has exited non-zero after a USR1 and no TERM. What the
What the
launchers do with those signals was measured here (torch 2.13, `torchrun --standalone --nproc_per_node 2` on CPU,
a worker that records each signal, sleeps as a save would and exits 143):

- torchrun on TERM passes TERM to every worker at once (each got it exactly once), waits for them, then exits **1**
  (a `SignalException` traceback) whatever they returned (143 here). A second TERM during that wait is passed on
  again (each worker then got it twice) and torchrun still waits.
- torchrun on USR1 (without `--signals-to-handle`, new in recent torch) dies at once (exit 138) and its workers are
  orphaned without any signal: USR1 must never reach torchrun.
- It waits `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds for the workers (default 30), then SIGKILLs them: a worker
  saving for 35 s was killed at 30 s; with the variable at 60 it finished and exited 143. The script sets it to the
  grace (unless already set); older torch ignores it and keeps 30 s.
- Signalling the workers directly instead: they exit 143, torchrun reports `ChildFailedError` and exits 1.
- srun (from Slurm's source, `_srun_signal_mgr`): USR1 and USR2 are passed to every task; TERM and HUP become SIGKILL
  of every task ("forcing job termination"). So the job shell must pass USR1, never TERM, to srun.
- A signal srun passes on reaches every process of the step, not just the task: slurmstepd signals the step's whole
  process container (measured on a two-node test cluster, `caspi.slurm_cluster`): torchrun got srun's USR1 and died,
  its trainers ran on as orphans, and the task ended at once, which on a cluster that tracks processes by cgroup
  SIGKILLs those trainers mid-save. So the per-node bash starts torchrun with USR1 ignored (`caspi_no_usr1`: an
  ignored signal stays ignored through exec; the trainer's own handler replaces it in the trainers).

Hence `caspi_run SIGNAL COMMAND...` in the script: it runs the launcher in the background, traps USR1 and TERM,
passes the first one on once as SIGNAL (TERM to torchrun, USR1 to srun, whose per-node bash passes TERM to its
torchrun), ignores later ones, `wait`s until the launcher has really ended (a trapped signal cuts `wait` short) and
returns its exit code, except that after a passed-on stop a failure is reported as 143 (torchrun's 1 hides the
trainers' 143). `tests/slurm/test_script.py` runs it with a recording fake launcher: one signal, whichever arrives
and however many times. The trainers' own TERMs from SLURM (requeue and preemption signal every process of the job)
come on top; the trainer's handler only records a flag, so more than one is harmless.

Limits: a multi-node job that SLURM itself stops without a grace (`scancel`, an administrator's `scontrol requeue`)
could lose the srun tasks at once (srun turns its TERM into SIGKILL). On the two-node test cluster (Slurm 22.05.8)
it did not: srun's SIGKILL came after the job had left RUNNING and never reached the tasks, which had slurmd's TERM
and saved within KillWait (tests/slurm/test_jobs.py). The time-limit warning, the trainer's own requeue and
partition preemption with a `GraceTime` (srun's tasks get TERM first) all save. A stop that arrives while the
trainers are still starting (before their handlers are installed) ends them unsaved; a warning then still requeues
the job under torchrun (the job shell asks), not with one process (the trainer that would ask has died of it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from caspi import __version__
from caspi.config import Recipe
from caspi.config.schema import SlurmConfig
from caspi.errors import ConfigError, DependencyError, SchedulerError
from caspi.train.preempt import EXIT_REQUEUE, REQUEUE_BY_ENV

SCRIPT_NAME = "job.sbatch"  # RUN/job.sbatch unless --script says otherwise
LOG_NAME = "slurm-%j.log"  # stdout and stderr of every start, appended (%j: the job id, the same after a requeue)
EXIT_PREEMPTED = EXIT_REQUEUE  # 143: what the trainer exits with after a preemption save
RDZV_PORT_BASE, RDZV_PORT_SPAN = 15000, 15000  # c10d port: 15000 + job id mod 15000, below Linux's ephemeral range

# The signal forwarding every launcher line uses (see the module docstring). Bash, no GNU extensions; `|| ...` keeps
# `set -e` from ending the job shell when `wait` returns a signal's status.
_FORWARDING = r'''# caspi_pass NAME: the trap of USR1 and TERM. The first one is passed on once to the running launcher
# as $CASPI_AS; later ones are not (its trainers need one, and torchrun passes on every TERM it gets).
caspi_pass() {
  CASPI_WOKEN=1
  CASPI_GOT="${CASPI_GOT:-} $1"
  if [ -n "${CASPI_STOP:-}" ]; then return 0; fi
  CASPI_STOP=$1
  if [ -n "${CASPI_CHILD:-}" ]; then
    echo "caspi job: got SIG$1; passing SIG$CASPI_AS to pid $CASPI_CHILD once (the trainers save and stop)" >&2
    kill -s "$CASPI_AS" "$CASPI_CHILD" 2>/dev/null || true
  else
    echo "caspi job: got SIG$1 before the trainers started" >&2
  fi
}
caspi_traps() {
  trap 'caspi_pass USR1' USR1
  trap 'caspi_pass TERM' TERM
}
# caspi_run SIGNAL COMMAND...: run COMMAND, pass it the first USR1/TERM as SIGNAL, wait until it has ended, return
# its exit code (143 for a failure after a passed-on stop: torchrun exits 1 however its trainers ended).
caspi_run() {
  CASPI_AS=$1
  shift
  "$@" &
  CASPI_CHILD=$!
  local rc=0 status again=
  while :; do
    CASPI_WOKEN=
    wait "$CASPI_CHILD" && status=0 || status=$?
    # A trap cuts `wait` short (status 128+n) and the launcher runs on: wait again. 127 on a second wait: the first
    # one had already collected the launcher's own status, just before the signal came.
    if [ -z "$again" ] || [ "$status" -ne 127 ]; then rc=$status; fi
    [ -n "$CASPI_WOKEN" ] || break
    again=1
  done
  if [ -n "${CASPI_STOP:-}" ] && [ "$rc" -ne 0 ]; then rc=143; fi
  return "$rc"
}
# caspi_requeue_if_warned: requeue the job when the time-limit warning (USR1) came and no TERM did: a TERM is a
# `scancel` (it stays cancelled) or a requeue or preemption SLURM carries out itself.
caspi_requeue_if_warned() {
  case " ${CASPI_GOT:-} " in *" TERM "*) return 0 ;; *" USR1 "*) ;; *) return 0 ;; esac
  echo "caspi job: warned (SIGUSR1) before the time limit: requeueing job ${SLURM_JOB_ID:-?}" >&2
  scontrol requeue "${SLURM_JOB_ID:-}" || echo "caspi job: scontrol requeue failed; submit the job again to resume" >&2
}
'''


# The torchrun layouts: the trainers cannot tell the warning from a cancel (both reach them as TERM), so the job
# shell, which knows, requeues once they have stopped.
_SHELL_REQUEUES = [f"export {REQUEUE_BY_ENV}=script  # the trainers leave the requeue to this shell"]
_REQUEUE_AFTER = ['if [ "$rc" -ne 0 ]; then caspi_requeue_if_warned; fi', 'exit "$rc"']


def _q(value: str | Path) -> str:
    return shlex.quote(str(value))


def resources(recipe: Recipe, *, nodes: int | None = None, gpus_per_node: int | None = None) -> tuple[int, int, str]:
    """(nodes, processes per node, accelerator): the recipe's hardware block, overridden by the flags; ConfigError
    when the effective batch cannot be split over that many processes."""
    hw = recipe.hardware
    n, g = nodes if nodes is not None else hw.nodes, gpus_per_node if gpus_per_node is not None else hw.gpus_per_node
    for name, value in (("--nodes", n), ("--gpus-per-node", g)):
        if value < 1:
            raise ConfigError(f"caspi slurm: {name} must be at least 1, got {value}")
    recipe.train.grad_accumulation(n * g)  # ConfigError naming train.effective_batch
    return n, g, hw.accelerator


def slurm_settings(recipe: Recipe, **flags) -> SlurmConfig:
    """The recipe's slurm section with the flags that are not None in place of its values; ConfigError listing
    every bad value (a flag's is named like the recipe field it replaces)."""
    settings = recipe.slurm.model_copy(update={k: v for k, v in flags.items() if v is not None})
    problems = settings.problems()
    if problems:
        raise ConfigError("caspi slurm: the job's settings are not valid", problems)
    return settings


def job_script(recipe: Recipe, recipe_path: str | Path, run_dir: str | Path, overrides: Sequence[str] = (), *,
               nodes: int | None = None, gpus_per_node: int | None = None, partition: str | None = None,
               account: str | None = None, time: str | None = None, python: str | None = None,
               workdir: str | Path | None = None) -> str:
    """The sbatch script (text) that trains `recipe_path` with `overrides` into `run_dir` (see the module
    docstring). `recipe` is that file loaded with those overrides: its hardware and slurm sections give the
    resources and job settings, which the keyword arguments override. The job runs in `workdir` (default: here),
    where the recipe's relative paths (manifests, init_from) are found and against which `recipe_path` and `run_dir`
    are made absolute; `python` (default: slurm.python, else this interpreter) must exist on the nodes."""
    n, g, accelerator = resources(recipe, nodes=nodes, gpus_per_node=gpus_per_node)
    settings = slurm_settings(recipe, partition=partition, account=account, time=time, python=python)
    hw_overrides = ([f"hardware.nodes={n}"] if n != recipe.hardware.nodes else []) + (
        [f"hardware.gpus_per_node={g}"] if g != recipe.hardware.gpus_per_node else [])
    every = [str(o) for o in overrides] + hw_overrides
    workdir = Path(workdir or Path.cwd()).absolute()
    run, recipe_file = workdir / run_dir, workdir / recipe_path  # absolute paths stay as they are
    py = settings.python or sys.executable
    args = " ".join(_q(o) for o in every)
    common = '--recipe "$RECIPE" --out "$RUN"' + (f" {args}" if args else "")
    plan = '--recipe "$RECIPE"' + (f" {args}" if args else "")  # plan writes nothing: no --out
    unit = "GPU(s)" if accelerator == "cuda" else "CPU process(es)"

    lines = [
        "#!/bin/bash",
        f"# Caspi {__version__} training job, written by `caspi slurm`: recipe {recipe.name} on {n} node(s) × {g} "
        f"{unit} into {run}.",
        f"# Submit: sbatch {_q(run / SCRIPT_NAME)} (or this file). Warned {settings.grace_seconds} s before the "
        "time limit (USR1), the trainers save",
        "# and the job requeues itself; on TERM (scancel, scontrol requeue, preemption) they save and SLURM decides"
        " whether it",
        "# comes back. Each start resumes from the run's latest checkpoint.",
        f"#SBATCH --job-name={_q('caspi-' + recipe.name)}",
        f"#SBATCH --nodes={n}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if accelerator == "cuda":
        lines.append(f"#SBATCH --gres=gpu:{g}")
    if settings.cpus_per_task is not None:
        lines.append(f"#SBATCH --cpus-per-task={settings.cpus_per_task}")
    if settings.mem is not None:
        lines.append(f"#SBATCH --mem={settings.mem}")
    for name in ("partition", "account", "time"):
        value = getattr(settings, name)
        if value is not None:
            lines.append(f"#SBATCH --{name}={_q(value)}")
    lines += [
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{settings.grace_seconds}",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={_q(run / LOG_NAME)}",
        f"#SBATCH --error={_q(run / LOG_NAME)}",
        *(f"#SBATCH {line}" for line in settings.extra),
        "",
        "set -euo pipefail",
        "",
        f"PY={_q(py)}",
        f"RECIPE={_q(recipe_file)}",
        f"RUN={_q(run)}",
        "START=${SLURM_RESTART_COUNT:-0}  # 0 the first time; SLURM counts the requeues",
        "# torchrun gives its trainers this long to save after a stop before it SIGKILLs them (its default: 30 s)",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${{TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-{settings.grace_seconds}}}",
        f"cd {_q(workdir)}",
        *settings.setup,
        "",
        _FORWARDING.rstrip("\n"),
        "caspi_traps  # from here on: a stop before the trainers start is recorded, then ends the job below",
        "",
        'echo "caspi job ${SLURM_JOB_ID:-?}: start $START (SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-unset})'
        ' on $(hostname), nodes ${SLURM_JOB_NODELIST:-?}, $(date \'+%F %T %z\')"',
        'if [ -d "$RUN/final" ] && grep -qs \'"event": "finished"\' "$RUN/metrics.jsonl"; then',
        '  echo "caspi job: $RUN already finished; nothing to train"',
        "  exit 0",
        "fi",
        "",
        "rc=0",
        f'"$PY" -m caspi doctor {common} || rc=$?',
        'if [ "$rc" -ne 0 ]; then',
        '  echo "caspi job: caspi doctor found a FAIL (exit $rc): not training. The job ends here and is not'
        ' requeued; fix what it says and submit again." >&2',
        '  exit "$rc"',
        "fi",
        'if [ "$START" -eq 0 ]; then',
        f'  "$PY" -m caspi plan {plan} || echo "caspi job: caspi plan failed (exit $?); training anyway" >&2',
        "fi",
        'if [ -n "${CASPI_STOP:-}" ]; then',
        '  echo "caspi job: stopped by SIG$CASPI_STOP before training" >&2',
        "  caspi_requeue_if_warned",
        f"  exit {EXIT_PREEMPTED}",
        "fi",
        "",
    ]
    train = f"-m caspi train {common}"
    if n == 1 and g == 1:
        lines += ["# One process: the job shell becomes the trainer, which gets USR1/TERM itself.",
                  f'exec "$PY" {train}']
    elif n == 1:
        lines += [f"# {g} processes on this node: torchrun passes TERM on to them (USR1 would kill it).",
                  *_SHELL_REQUEUES,
                  "rc=0",
                  f'caspi_run TERM "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node {g} '
                  f"{train} || rc=$?",
                  *_REQUEUE_AFTER]
    else:
        cpus = f" --cpus-per-task={settings.cpus_per_task}" if settings.cpus_per_task is not None else ""
        lines += [
            f"# {n} nodes: srun starts one bash per node, which runs torchrun ({g} processes) and turns srun's USR1",
            "# into TERM for it (torchrun, which gets srun's USR1 too, ignores that); c10d rendezvous on the first",
            "# node (CASPI_RDZV_PORT overrides the port).",
            'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
            f"PORT=${{CASPI_RDZV_PORT:-$(( {RDZV_PORT_BASE} + SLURM_JOB_ID % {RDZV_PORT_SPAN} ))}}",
            'echo "caspi job: rendezvous on $HEAD:$PORT"',
            "# caspi_no_usr1 COMMAND...: exec COMMAND with USR1 ignored (torchrun keeps that; a trainer installs its",
            "# own handler): srun passes USR1 to every process of its step, and USR1 kills torchrun.",
            "caspi_no_usr1() {",
            "  trap '' USR1",
            '  exec "$@"',
            "}",
            *_SHELL_REQUEUES,
            "rc=0",
            f"caspi_run USR1 srun --nodes={n} --ntasks-per-node=1{cpus} \\",
            '  bash -c "$(declare -f caspi_pass caspi_traps caspi_run caspi_no_usr1); caspi_traps; '
            'caspi_run TERM caspi_no_usr1 \\"\\$@\\"" '
            "caspi-node \\",
            f'  "$PY" -m torch.distributed.run --nnodes {n} --nproc_per_node {g} --rdzv_backend c10d \\',
            '  --rdzv_endpoint "$HEAD:$PORT" --rdzv_id "$SLURM_JOB_ID" \\',
            f"  {train} || rc=$?",
            *_REQUEUE_AFTER,
        ]
    return "\n".join(lines) + "\n"


def write_script(script: str, path: str | Path, *, run_dir: str | Path | None = None) -> Path:
    """Write the script (executable) and create `run_dir`, where SLURM opens the job's log before the script runs
    (a missing folder fails the job without a word)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(script, encoding="utf-8")
    path.chmod(0o755)
    return path


def submit(script_path: str | Path, env: Mapping[str, str] | None = None, *, timeout: float = 60.0) -> str:
    """Submit with `sbatch --parsable`; the job id. `env` is added to this process's environment (e.g. the
    SLURM_CONF of a test cluster). DependencyError without sbatch, SchedulerError when it refuses, with its stderr."""
    full_env = {**os.environ, **(env or {})}
    sbatch = shutil.which("sbatch", path=full_env.get("PATH"))
    if sbatch is None:
        raise DependencyError("sbatch not found: submit from a SLURM login node (or put SLURM's bin folder on PATH); "
                              f"the script is {script_path}")
    try:
        out = subprocess.run([sbatch, "--parsable", str(script_path)], capture_output=True, text=True, env=full_env,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"`sbatch --parsable {script_path}` did not answer in {timeout:.0f} s") from None
    if out.returncode != 0:
        raise SchedulerError(f"`sbatch --parsable {script_path}` failed (exit {out.returncode}): "
                             f"{out.stderr.strip() or out.stdout.strip() or 'no message'}")
    job_id = out.stdout.strip().splitlines()[-1].split(";")[0] if out.stdout.strip() else ""
    if not job_id.isdigit():
        raise SchedulerError(f"`sbatch --parsable {script_path}` printed no job id: {out.stdout.strip()!r}")
    return job_id

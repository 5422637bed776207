"""The one-node SLURM cluster the tests in this folder submit real jobs to (`caspi.slurm_cluster`).

The session fixture `slurm_cluster` first runs scripts/ensure-slurm (installs Debian's slurm-wlm and munge as root).
Where they cannot be installed, or the cluster cannot run (not root), the tests skip with the reason; under CI
(CI=true) they fail instead: CI must run them (.ci/run calls scripts/ensure-slurm).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from caspi.errors import DependencyError
from caspi.slurm_cluster import SlurmCluster

REPO = Path(__file__).resolve().parents[2]


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason}; required under CI=true", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster (node1, partition debug) for the whole session; stopped at its end. It declares at
    least 4 CPUs, more than a small CI machine has: a job that mostly waits (test_jobs.py's time-limit probe) must
    not keep a 2-process job from starting."""
    ensure = subprocess.run([str(REPO / "scripts" / "ensure-slurm")], capture_output=True, text=True)
    if ensure.returncode != 0:
        _skip_or_fail(f"SLURM is not installed and scripts/ensure-slurm could not install it: "
                      f"{ensure.stderr.strip() or ensure.stdout.strip()}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=max(4, os.cpu_count() or 1))
    try:
        cluster.start()
    except DependencyError as e:
        _skip_or_fail(f"cannot run a SLURM test cluster here: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()

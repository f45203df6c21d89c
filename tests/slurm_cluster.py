"""A one-node SLURM cluster for the tests, started by ``scripts/slurm-local.sh``.

The script holds the cluster's configuration (one place, readable by users who
want the same cluster by hand); this module starts and stops it for pytest.
The ``slurm_cluster`` fixture in ``conftest.py`` yields a :class:`SlurmCluster`.

Interface for tests (FireWorks' ``qlaunch``, jobflow-remote's SLURM worker)::

    cluster.conf       Path of slurm.conf (SLURM_CONF)
    cluster.env        os.environ (as it is at the call) plus SLURM_CONF and PATH with
                       SLURM's commands: pass it to every subprocess that talks to the cluster
    cluster.partition  the partition jobs go to ("debug", the default)
    cluster.dir        the cluster's folder: state, daemon logs (slurmctld.log, slurmd.log)
    cluster.run(cmd)   run a command (list or string) in ``env``, check it, return stdout
    cluster.jobs()     {job id: state} of the jobs in the queue (squeue), e.g. {"3": "RUNNING"}
    cluster.wait_until(predicate, timeout, what)   poll, fail the test with ``what`` on timeout

    cluster.start() / .stop() / .daemon_pids()   what the fixture uses

What a job sees: it runs as the submitting user on this host, in the
environment of the ``sbatch`` process (SLURM's default ``--export=ALL``), so
pass ``cluster.env`` plus your variables to whatever calls sbatch. A
``#!/bin/bash -l`` script (FireWorks' SLURM template) is a login shell whose
``/etc/profile`` resets PATH: activate the virtual environment in the script.
slurmctld keeps each job's environment in ``dir/state/hash.*/job.*/environment``
(mode 0600): a test grepping for a password exported to jobs must allow for it.
SLURM's time-limit check runs every 30 s, so a job killed at its walltime ends
up to 30 s after the limit (then SIGTERM, and SIGKILL 2 s later: ``KillWait=2``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local.sh"
SBIN = ("/usr/sbin", "/usr/bin")  # Debian puts the daemons in /usr/sbin


def slurm_missing() -> str | None:
    """Why no cluster can start here, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    for command in ("slurmctld", "slurmd", "sbatch"):
        if shutil.which(command, path=path) is None:
            return (f"{command} not found: install SLURM (`apt-get install slurm-wlm`, "
                    "which `make test` does as root) to test the cluster path")
    return None


class SlurmCluster:
    """slurmctld and slurmd on this host, configured under ``dir``."""

    partition = "debug"

    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir)
        self.conf = self.dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """os.environ as it is now (a test's monkeypatched variables too), plus the cluster."""
        path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])  # the venv's python first
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def _script(self, action: str) -> None:
        out = subprocess.run(["bash", str(SCRIPT), action, str(self.dir)], env=self.env,
                             capture_output=True, text=True, timeout=90)
        if out.returncode != 0:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}"
                           for p in sorted(self.dir.glob("*.log")))
            raise RuntimeError(f"slurm-local.sh {action} failed: {out.stderr.strip()}{logs}")

    def start(self) -> SlurmCluster:
        self._script("start")
        return self

    def stop(self) -> None:
        self._script("stop")

    def daemon_pids(self) -> list[int]:
        """Processes of this cluster still alive: daemons and job steps (carry its SLURM_CONF)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                name = (proc / "comm").read_text().strip()
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if name in ("slurmctld", "slurmd", "slurmstepd") and mine in environ:
                pids.append(int(proc.name))
        return pids

    def run(self, cmd: list[str] | str, check: bool = True, env: dict | None = None) -> str:
        """Run a command against this cluster (in ``env``, default ``self.env``); its stdout."""
        out = subprocess.run(cmd, shell=isinstance(cmd, str), env=env or self.env,
                             capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def jobs(self) -> dict[str, str]:
        """Job id -> state (PENDING, RUNNING, COMPLETING, ...) of every job in the queue."""
        lines = self.run(["squeue", "-h", "-o", "%i %T"]).split("\n")
        return dict(line.split() for line in lines if line.strip())

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str,
                   every: float = 1.0):
        """Poll ``predicate`` until it returns something true; fail the test after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        pytest.fail(f"{what} within {timeout:.0f} s (queue: {self.jobs()})")


if __name__ == "__main__":  # python tests/slurm_cluster.py DIR: start, print, wait for Ctrl-C
    import sys

    cluster = SlurmCluster(Path(sys.argv[1])).start()
    print(f"export SLURM_CONF={cluster.conf}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()

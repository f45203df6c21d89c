"""scripts/slurm-local.sh: a one-node SLURM cluster runs a batch job and stops without a trace.

The SLURM tests of the workflow engines rely on this: a job still running when
the cluster stops (a test that failed half-way) must not outlive it.
"""

from __future__ import annotations

import os
from pathlib import Path

from slurm_cluster import SlurmCluster


def test_cluster_runs_a_job_and_stop_leaves_no_process(tmp_path, slurm_cluster):
    # the module's fixture is up: a job runs on it, with the submitter's environment
    out = tmp_path / "hello.out"
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/bash\necho \"$SLURM_JOB_ID on $SLURM_JOB_PARTITION: $XTALLOOP_HELLO\"\n")
    env = {**slurm_cluster.env, "XTALLOOP_HELLO": "exported"}
    job = slurm_cluster.run(["sbatch", "--parsable", "-o", str(out), str(script)],
                            env=env).strip()
    slurm_cluster.wait_until(lambda: job not in slurm_cluster.jobs() and out.exists(), 30,
                             f"job {job} did not run")
    assert out.read_text().strip() == f"{job} on {slurm_cluster.partition}: exported"

    # a second cluster with a job still running when it stops: nothing of it survives
    other = SlurmCluster(tmp_path / "other").start()
    try:
        pid_file = tmp_path / "sleeper.pid"
        sleeper = tmp_path / "sleeper.sh"
        sleeper.write_text(f"#!/bin/bash\necho $$ > {pid_file}\nexec sleep 600\n")
        job = other.run(["sbatch", "--parsable", "-o", "/dev/null", str(sleeper)]).strip()
        other.wait_until(lambda: other.jobs().get(job) == "RUNNING" and pid_file.exists(), 30,
                         f"job {job} did not start")
        assert other.daemon_pids()  # slurmctld, slurmd, the job's slurmstepd
    finally:
        other.stop()
    assert other.daemon_pids() == []
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()
    assert not (other.dir / "slurmctld.pid").exists()
    assert slurm_cluster.jobs() == {}  # the fixture's cluster is not disturbed
    assert os.environ.get("SLURM_CONF") is None  # nothing leaks into the test process

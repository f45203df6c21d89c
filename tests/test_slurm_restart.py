"""A MongoDB server restart under jobs running in a real SLURM: nothing lost, nothing twice.

Both engines run a tiny EMT run through the one-node SLURM cluster
(``slurm_cluster``) as their SLURM tests do (FireWorks' ``qlaunch``,
jobflow-remote's SLURM worker and runner); the CuAu "DFT" hangs while a flag
file exists, so the test knows that a SLURM job is inside a calculation, with
part of the run done, when it stops the SecantusDB server. The server stays
away for longer than a few of FireWorks' pings (1 s in the test) and less than
``store.retry_seconds``, then comes back on the same port with the same data.
Whatever the jobs and the runner made of the outage (waited, failed, went
silent), ``xtalloop rerun-failed`` and one more round of workers complete the
run with every composition's validated structure stored exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from pymongo.errors import ConnectionFailure

from mongodb_server import PASSWORD, PASSWORD_ENV
from test_fireworks import assert_nothing_duplicated, cli
from test_jobflow_remote import jobflow_remote, write_config  # noqa: F401 (fixture)
from test_slurm_fireworks import HANG_ENV, LOST_AFTER_SECS, Cluster, HangingEmtMaker
from test_slurm_jobflow_remote import (  # noqa: F401 (fixture)
    PROJECT,
    WORKER,
    RunnerThread,
    assert_no_password_written,
    queue_jobs,
    slurm_project,
)
from xtalloop.config import load_config
from xtalloop.hpc.submit import run_status, submit

OUTAGE_SECS = 4  # > a few pings (PING_SECS = 1), << store.retry_seconds (120)


def restart_server(mongodb_server) -> None:
    """The database goes away under the running SLURM jobs, then comes back."""
    mongodb_server.stop()
    time.sleep(OUTAGE_SECS)
    mongodb_server.start(auth=True)


def finish_runner(runner: RunnerThread) -> None:
    """Join jobflow-remote's runner; one that died of the outage is started again.

    The runner's daemon (``jf runner start``) logs a failed step and retries it;
    ``run_all_jobs``, which the test thread runs, stops at the first connection
    error: a user would start the runner again, as this does.
    """
    if not runner.is_alive() and runner.ident is None:
        runner.start()
    try:
        runner.finish()
    except ConnectionFailure:
        runner = RunnerThread()
        runner.start()
        runner.finish()


def assert_run_complete_once(config, run_id: str) -> None:
    state = run_status(config, run_id)
    assert state["counts"]["failed"] == state["counts"]["waiting"] == 0, state["counts"]
    assert state["counts"]["running"] == 0, state["counts"]
    assert state["run"]["status"] == "completed", state["run"]
    docs = assert_nothing_duplicated(config)
    assert sorted(d["formula"] for d in docs) == ["Cu", "CuAu"]  # each exactly once
    assert all(d["found_in_runs"] == [run_id] for d in docs)


def test_fireworks_slurm_jobs_survive_a_server_restart(tmp_path, slurm_cluster, mongo_config,
                                                      mongodb_server):
    run_id = "slurm-restart"
    cluster = Cluster(tmp_path, slurm_cluster, mongo_config, run_id)
    submit(cluster.config, run_id=run_id,
           relax_maker=HangingEmtMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    cluster.flag.touch()
    job = cluster.qlaunch()
    marker = Path(f"{cluster.flag}.{job}")
    slurm_cluster.wait_until(marker.exists, 240, f"queue job {job} did not reach the CuAu DFT")
    assert run_status(cluster.config, run_id)["counts"]["completed"] >= 1

    restart_server(mongodb_server)  # under a SLURM job inside a calculation
    cluster.flag.unlink()  # the calculation ends after the restart and stores its results
    slurm_cluster.wait_until(lambda: job not in slurm_cluster.jobs(), 240,
                             f"queue job {job} did not end after the restart")

    # a job whose worker went silent (its ping thread died) or failed in the outage is
    # requeued, then run; here the job usually waited the outage out (pymongo's server
    # selection outlasts it) and completed the run itself
    running = lambda: run_status(cluster.config, run_id)["running"]
    slurm_cluster.wait_until(lambda: all(r["last_seen"] > LOST_AFTER_SECS + 1
                                         for r in running()), 60, "a dead job kept pinging")
    requeued = cluster.xtalloop("rerun-failed", "--lost-after", str(LOST_AFTER_SECS))
    if run_status(cluster.config, run_id)["counts"]["waiting"]:
        assert "requeued" in requeued, requeued
        last = cluster.qlaunch()
        slurm_cluster.wait_until(lambda: last not in slurm_cluster.jobs(), 240,
                                 f"queue job {last} did not finish the run")
    assert_run_complete_once(cluster.config, run_id)
    assert f"run {run_id} (fireworks): completed" in cluster.xtalloop("status")
    cluster.assert_no_password_written(tmp_path, slurm_cluster.dir)


@pytest.mark.slow  # about 2 min (every job is an sbatch'd process): make test-slow
def test_jobflow_remote_slurm_jobs_survive_a_server_restart(tmp_path, mongo_config,
                                                            mongodb_server, slurm_cluster,
                                                            slurm_project):  # noqa: F811
    run_id = "jfr-restart"
    path = write_config(tmp_path, mongo_config, project=PROJECT)
    data = yaml.safe_load(path.read_text())
    data["submit"]["worker"] = WORKER
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    env = slurm_cluster.env
    assert env[PASSWORD_ENV] == PASSWORD
    flag = Path(env[HANG_ENV])
    flag.touch()
    record = submit(config, run_id=run_id,
                    relax_maker=HangingEmtMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    flow_uuid = record["submission"]["flow_uuid"]

    runner = RunnerThread()
    runner.start()
    slurm_cluster.wait_until(lambda: next(tmp_path.glob("hang.*"), None), 240,
                             "no SLURM job reached the CuAu DFT")
    assert run_status(config, run_id)["counts"]["completed"] >= 1
    restart_server(mongodb_server)  # under the runner and a SLURM job inside a calculation
    flag.unlink()
    finish_runner(runner)

    out = cli("rerun-failed", str(path), "--run", run_id, env=env)
    assert out.returncode == 0, out.stderr
    if "requeued" in out.stdout:
        finish_runner(RunnerThread())
    assert_run_complete_once(config, run_id)
    jobs = queue_jobs(flow_uuid)
    assert all(j.state.value == "COMPLETED" for j in jobs), [(j.name, j.state) for j in jobs]
    assert_no_password_written(tmp_path, slurm_cluster.dir)

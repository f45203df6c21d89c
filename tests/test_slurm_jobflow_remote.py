"""jobflow-remote through a real SLURM: the runner sbatches every job, a scancel is survived.

A one-node SLURM cluster (``slurm_cluster`` fixture, ``scripts/slurm-local.sh``)
runs the jobs of a jobflow-remote project made from the example
``configs/jobflow-remote/xtalloop.yaml`` with test values: its ``type: local``
worker with ``scheduler_type: slurm`` writes each job's script from qtoolkit's
SLURM template and submits it with ``sbatch``; the queue and the job outputs are
on the SecantusDB server. jobflow-remote's own ``Runner`` runs in a thread of
this process (``jf runner start`` runs it in a daemon) whose environment holds
the MongoDB password; sbatch exports that environment to the jobs (SLURM's
default ``--export=ALL``), the only way the password travels: the test greps
every file it, jobflow-remote and SLURM wrote for it. EMT stands in for the ML
model and for DFT, and the CuAu "DFT" hangs while a flag file exists, so the
test knows which SLURM job to cancel and when.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest
import yaml

from mongodb_server import PASSWORD, PASSWORD_ENV
from test_fireworks import assert_nothing_duplicated, cli
from test_jobflow_remote import EXAMPLE, jobflow_remote, write_config  # noqa: F401 (fixture)
from test_slurm_fireworks import HANG_ENV, HangingEmtMaker
from xtalloop.config import load_config
from xtalloop.hpc.jobflow_remote import project_stores
from xtalloop.hpc.submit import run_status, submit

TESTS = Path(__file__).parent
BIN = Path(sys.executable).parent
PROJECT = "xtalloop-slurm-test"
WORKER = "cluster"  # the example's worker


@pytest.fixture
def slurm_project(jobflow_remote, tmp_path, mongo_config, slurm_cluster, monkeypatch) -> dict:
    """The example project with this host's SLURM, the test server and a fast runner.

    Returns the project as written (``projects folder/<PROJECT>.yaml``). The
    environment of this process (the runner's) gets SLURM_CONF, the test makers'
    PYTHONPATH and the hang flag's variable, which sbatch hands to the jobs with
    the password's variable (set by the ``mongo_password`` fixture).
    """
    example = yaml.safe_load(EXAMPLE.read_text())
    worker = example["workers"][WORKER]
    assert worker["type"] == "local" and worker["scheduler_type"] == "slurm"
    folder = tmp_path / "jfremote"
    folder.mkdir()
    test_worker = {
        **worker,
        "work_dir": str(tmp_path / "work"),
        "pre_run": worker["pre_run"].replace("~/xtalloop/.venv/bin/activate",
                                             f"{BIN}/activate"),
        "resources": {**worker["resources"], "partition": slurm_cluster.partition,
                      "account": "xtalloop-test", "ntasks_per_node": 1, "time": "00:10:00"},
    }
    assert f"source {BIN}/activate" in test_worker["pre_run"]
    assert test_worker["resources"].keys() == worker["resources"].keys()
    project = {
        **example,
        "name": PROJECT,
        "base_dir": str(folder / PROJECT),
        "workers": {WORKER: test_worker},
        **project_stores(mongo_config),  # the example's sections, for the test server
        # the Runner polls every second instead of every 30 s
        "runner": {"delay_checkout": 1, "delay_check_run_status": 1,
                   "delay_advance_status": 1, "delta_retry": [1, 2, 5]},
    }
    assert project.keys() == example.keys() | {"base_dir"}
    project_file = folder / f"{PROJECT}.yaml"
    project_file.write_text(yaml.safe_dump(project))
    assert PASSWORD not in project_file.read_text()

    for name in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(name, slurm_cluster.env[name])
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the jobs import the test makers
    monkeypatch.setenv(HANG_ENV, str(tmp_path / "hang"))
    # jobflow-remote reads its settings once, at import: point them to the temporary
    # folder here, and through the environment in the processes this test starts
    monkeypatch.setenv("JFREMOTE_PROJECTS_FOLDER", str(folder))
    monkeypatch.setenv("JFREMOTE_CONFIG_FILE", str(folder / "none.yaml"))
    monkeypatch.setattr(jobflow_remote.SETTINGS, "projects_folder", str(folder))
    monkeypatch.setattr(jobflow_remote.SETTINGS, "project", None)
    controller = jobflow_remote.JobController.from_project_name(PROJECT)
    try:
        controller.reset(max_limit=0)  # what `jf admin reset` does on a new database
    finally:
        controller.close()
    return project


class RunnerThread(threading.Thread):
    """jobflow-remote's Runner advancing every job to a final state, beside the test."""

    def __init__(self, max_seconds: int = 300) -> None:
        super().__init__(daemon=True)
        self.max_seconds, self.error = max_seconds, None

    def run(self) -> None:
        from jobflow_remote.jobs.runner import Runner

        try:
            runner = Runner(project_name=PROJECT)
            try:
                runner.run_all_jobs(max_seconds=self.max_seconds)
            finally:
                runner.job_controller.close()
        except BaseException as exc:  # noqa: BLE001 (re-raised by finish)
            self.error = exc

    def finish(self) -> None:
        self.join(self.max_seconds + 30)
        assert not self.is_alive(), "the runner did not stop"
        if self.error is not None:
            raise self.error


def queue_jobs(flow_uuid: str) -> list:
    """jobflow-remote's view of the run's jobs: state, SLURM id (remote.process_id), error."""
    import jobflow_remote

    controller = jobflow_remote.JobController.from_project_name(PROJECT)
    try:
        return controller.get_jobs_info(flow_ids=[flow_uuid])
    finally:
        controller.close()


def assert_no_password_written(*folders: Path) -> None:
    """No file holds the password: project, job scripts and outputs, SLURM's logs.

    Except one, which no environment route avoids: slurmctld keeps each batch
    job's exported environment in its state folder (``job.N/environment``,
    mode 0600, SlurmUser's) until it forgets the job (``MinJobAge``).
    """
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "submit.sh" for p in files)  # the job scripts are here
    assert any(p.name == "queue.out" for p in files) and any(p.name == "slurmd.log"
                                                             for p in files)
    leaks = [p for p in files if PASSWORD.encode() in p.read_bytes()]
    slurm_state = [p for p in leaks if p.name == "environment" and p.parent.name.startswith(
        "job.") and p.parent.parent.parent.name == "state"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in slurm_state), slurm_state
    assert not set(leaks) - set(slurm_state), leaks


@pytest.mark.slow  # about 3 min (every job is an sbatch'd process): make test-slow
def test_slurm_jobs_run_the_flow_and_a_scancelled_one_is_rerun(tmp_path, mongo_config,
                                                               slurm_cluster, slurm_project):
    path = write_config(tmp_path, mongo_config, project=PROJECT)
    data = yaml.safe_load(path.read_text())
    data["submit"]["worker"] = WORKER
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    env = slurm_cluster.env  # the shell that submits and runs the runner: the password is in it
    assert env[PASSWORD_ENV] == PASSWORD
    flag = Path(env[HANG_ENV])
    flag.touch()
    record = submit(config, run_id="jfr-slurm",
                    relax_maker=HangingEmtMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    flow_uuid = record["submission"]["flow_uuid"]
    assert record["submission"]["worker"] == WORKER and record["submission"]["n_jobs"] == 6

    def xtalloop(*args: str) -> str:
        out = cli(*args, str(path), "--run", "jfr-slurm", env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    runner = RunnerThread()
    runner.start()
    # the CuAu DFT hangs in its SLURM job: jobflow-remote saw that job start, then scancel
    marker = slurm_cluster.wait_until(lambda: next(tmp_path.glob("hang.*"), None), 240,
                                      "no SLURM job reached the CuAu DFT")
    slurm_id = marker.name.split(".", 1)[1]
    assert slurm_id in slurm_cluster.jobs()

    def hanging_job():
        return next((j for j in queue_jobs(flow_uuid) if j.remote.process_id == slurm_id
                     and j.state.value == "RUNNING"), None)

    job = slurm_cluster.wait_until(hanging_job, 30, "jobflow-remote did not see the job run")
    assert job.name == "CuAu pick 1 DFT relax" and job.worker == WORKER
    status = xtalloop("status")
    assert "run jfr-slurm (jobflow-remote): submitted" in status
    assert re.search(r"^jobs: .*\b[1-9] running", status, re.M), status
    slurm_cluster.run(["scancel", slurm_id])
    runner.finish()  # the runner saw the SLURM job end without a result; the rest ran

    [killed] = [j for j in queue_jobs(flow_uuid) if j.db_id == job.db_id]
    assert killed.state.value == "FAILED", (killed.state, killed.error, killed.remote.error)
    status = xtalloop("status")
    assert "run jfr-slurm (jobflow-remote): completed with failures" in status
    assert "1 failed" in status and "failed: CuAu pick 1 DFT relax: " in status, status
    assert "killed" in status, status  # jobflow-remote's "The job was likely killed ..."
    assert "validated structures: 1" in status  # Cu's branch went on

    flag.unlink()
    assert "requeued 1 failed jobs" in xtalloop("rerun-failed")
    assert run_status(config, "jfr-slurm")["counts"]["failed"] == 0
    runner = RunnerThread()
    runner.start()
    runner.finish()

    state = run_status(config, "jfr-slurm")
    assert state["counts"]["failed"] == state["counts"]["waiting"] == 0, state["counts"]
    assert state["counts"]["running"] == state["counts"]["cancelled"] == 0, state["counts"]
    assert state["run"]["status"] == "completed"
    status = xtalloop("status")
    assert "run jfr-slurm (jobflow-remote): completed" in status
    assert "validated structures: 2" in status, status
    docs = assert_nothing_duplicated(config)
    assert sorted(d["formula"] for d in docs) == ["Cu", "CuAu"]
    assert all(d["found_in_runs"] == ["jfr-slurm"] for d in docs)
    # every job went through sbatch: slurmctld took it, SLURM wrote its output files
    submitted = (slurm_cluster.dir / "slurmctld.log").read_text()
    jobs = queue_jobs(flow_uuid)
    assert len(jobs) >= 6 and slurm_id not in {j.remote.process_id for j in jobs}  # rerun
    for j in [*jobs, job]:
        assert f"_slurm_rpc_submit_batch_job: JobId={j.remote.process_id} " in submitted, j
    assert all((Path(j.run_dir) / "queue.out").is_file() for j in jobs)
    assert_no_password_written(tmp_path, slurm_cluster.dir)

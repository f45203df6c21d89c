"""Runs submitted to jobflow-remote, queue and outputs on a real MongoDB-wire-protocol server.

EMT stands in for the ML model and for DFT (the physics has its own tests);
everything else is real: a jobflow-remote project whose queue store and job
store are on the SecantusDB test server, a ``local`` worker with the ``shell``
scheduler that runs every job as ``jf execution run`` in its own process, and
jobflow-remote's own ``Runner`` (in this process, instead of the daemon that
``jf runner start`` would launch).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import (
    FLAG_ENV,
    FlakyEmtMaker,
    assert_two_round_loop_done,
    with_two_round_loop,
)
from mongodb_server import PASSWORD
from xtalloop.config import StoreConfig, load_config
from xtalloop.errors import ConfigError, StoreError, XtalloopError
from xtalloop.hpc.jobflow_remote import project_stores
from xtalloop.hpc.submit import rerun_failed, run_status, submit
from xtalloop.store.results import open_results

TESTS = Path(__file__).parent
EXAMPLE = TESTS.parent / "configs" / "jobflow-remote" / "xtalloop.yaml"
PROJECT = "xtalloop-test"


@pytest.fixture(scope="module")
def jobflow_remote():
    """Skip without jobflow-remote on a workstation; fail in CI, where it is installed."""
    if importlib.util.find_spec("jobflow_remote") is None:
        if os.environ.get("CI"):
            pytest.fail("jobflow-remote is not installed (pip install jobflow-remote)")
        pytest.skip("jobflow-remote is not installed: `pip install jobflow-remote` to test "
                    "`xtalloop submit` with engine jobflow-remote")
    import jobflow_remote

    return jobflow_remote


@pytest.fixture
def jfr_project(jobflow_remote, tmp_path, mongo_config, monkeypatch) -> str:
    """A jobflow-remote project in a temporary projects folder, its queue database reset.

    Queue and job outputs are on the test server, in the run's database; the
    project file names the password's environment variable, never the password.
    """
    folder = tmp_path / "jfremote"
    folder.mkdir()
    jf = Path(sys.executable).parent / "jf"  # the worker's python environment is this one
    project = {
        "name": PROJECT,
        "base_dir": str(folder / PROJECT),
        **project_stores(mongo_config),
        "workers": {
            "local": {
                "type": "local",
                "scheduler_type": "shell",
                "work_dir": str(tmp_path / "work"),
                # the test makers live in conftest.py; the password is inherited from
                # this process's environment (only the variable name travels with the jobs)
                "pre_run": f"export PYTHONPATH={TESTS}${{PYTHONPATH:+:$PYTHONPATH}}",
                "execution_cmd": f"{jf} -fe execution run {{}}",
                "timeout_execute": 120,
            },
        },
        # the Runner polls every second instead of every 30 s
        "runner": {"delay_checkout": 1, "delay_check_run_status": 1,
                   "delay_advance_status": 1, "delta_retry": [1, 2, 5]},
    }
    project_file = folder / f"{PROJECT}.yaml"
    project_file.write_text(yaml.safe_dump(project))
    assert PASSWORD not in project_file.read_text()
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
    return PROJECT


def write_config(tmp_path: Path, mongo_config, project: str = PROJECT,
                 compositions=("Cu", "CuAu")) -> Path:
    data = {
        "name": "emt-jfr",
        "compositions": list(compositions),
        "generate": {"seed": 3, "max_atoms": 4, "sources": [{"n": 4}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 100},
        "store": mongo_config.model_dump(exclude_none=True),
        "submit": {"engine": "jobflow-remote", "project": project, "worker": "local"},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_all_jobs(project: str, max_seconds: int = 300) -> None:
    """Advance every job of the project to a final state, as the runner daemon would."""
    from jobflow_remote.jobs.runner import Runner

    runner = Runner(project_name=project)
    try:
        runner.run_all_jobs(max_seconds=max_seconds)
    finally:
        runner.job_controller.close()  # (Runner.cleanup also closes a job store never opened)


def test_submit_run_then_rerun_its_failed_job(tmp_path, mongo_config, jfr_project, monkeypatch):
    path = write_config(tmp_path, mongo_config)
    config = load_config(path)
    flag = tmp_path / "fail"
    flag.touch()
    monkeypatch.setenv(FLAG_ENV, str(flag))  # the worker's jobs inherit it: CuAu's DFT fails
    record = submit(config, run_id="jfr-run",
                    relax_maker=FlakyEmtMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    submission = record["submission"]
    assert submission["engine"] == "jobflow-remote" and submission["project"] == jfr_project
    assert submission["worker"] == "local" and submission["n_jobs"] == 6
    waiting = run_status(config, "jfr-run")
    assert waiting["counts"]["waiting"] == 6 and waiting["counts"]["completed"] == 0
    assert waiting["run"]["status"] == "submitted"

    run_all_jobs(jfr_project)

    state = run_status(config, "jfr-run")
    assert state["counts"]["failed"] == 1, state
    assert state["counts"]["waiting"] == state["counts"]["running"] == 0
    assert state["run"]["status"] == "completed with failures"
    [failure] = state["failed"]
    assert failure["name"] == "CuAu pick 1 DFT relax"
    assert failure["error"] == "RuntimeError: SCF did not converge in 100 iterations"
    assert [d["formula"] for d in state["validated"]] == ["Cu"]  # the sibling went on

    flag.unlink()
    assert rerun_failed(config, "jfr-run") == 1
    with open_results(config.store) as db:
        assert db.get_run("jfr-run")["status"] == "submitted"
    run_all_jobs(jfr_project)

    state = run_status(config, "jfr-run")
    assert state["counts"]["failed"] == 0, state["failed"]
    assert state["counts"]["waiting"] == state["counts"]["running"] == 0
    assert state["counts"]["cancelled"] == 0 and state["counts"]["completed"] >= 6
    assert state["run"]["status"] == "completed"
    with open_results(config.store) as db:
        docs = db.find_validated()
    assert sorted(d["formula"] for d in docs) == ["Cu", "CuAu"]
    assert all(d["found_in_runs"] == ["jfr-run"] for d in docs)
    assert all(d["e_above_hull"] is not None for d in docs)
    assert rerun_failed(config, "jfr-run") == 0
    for file in (tmp_path / "work").rglob("*"):  # what the jobs got: no password
        assert not file.is_file() or PASSWORD not in file.read_text(errors="replace"), file

    # the command line, in a fresh process, finds the project through $JFREMOTE_PROJECTS_FOLDER
    out = subprocess.run([sys.executable, "-m", "xtalloop.cli", "status", str(path), "--run",
                          "jfr-run"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "run jfr-run (jobflow-remote): completed" in out.stdout
    assert "0 failed" in out.stdout and "validated structures: 2" in out.stdout


def test_unknown_project_is_one_line(tmp_path, mongo_config, jfr_project, jobflow_remote,
                                    emt_dft_maker):
    config = load_config(write_config(tmp_path, mongo_config, project="no-such-project",
                                      compositions=("Cu",)))
    with pytest.raises(StoreError) as error:
        submit(config, run_id="lost", relax_maker=emt_dft_maker)
    message = str(error.value)
    assert "no-such-project" in message and "\n" not in message
    assert PASSWORD not in message
    with open_results(config.store) as db:
        assert db.get_run("lost") is None  # nothing recorded for a run never submitted

    # a run submitted to a project that later disappears: status says so in one line
    config = load_config(write_config(tmp_path, mongo_config, compositions=("Cu",)))
    submit(config, run_id="moved", relax_maker=emt_dft_maker)
    assert run_status(config, "moved")["counts"]["waiting"] == 3
    project_file = Path(jobflow_remote.SETTINGS.projects_folder) / f"{jfr_project}.yaml"
    project_file.rename(project_file.with_suffix(".bak"))
    for action in (run_status, rerun_failed):
        with pytest.raises(XtalloopError) as error:
            action(config, "moved")
        message = str(error.value)
        assert f"project {jfr_project!r}" in message and "\n" not in message, message
        assert PASSWORD not in message


def test_example_project_file_is_a_valid_project(jobflow_remote, tmp_path, monkeypatch):
    from jobflow_remote.config.base import Project

    monkeypatch.setattr(jobflow_remote.SETTINGS, "projects_folder", str(tmp_path))
    project = Project.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    assert project.name == "xtalloop"
    [worker] = project.workers.values()
    assert worker.type == "local" and worker.get_scheduler_io().__class__.__name__ == "SlurmIO"
    assert "--time=04:00:00" in worker.get_scheduler_io().generate_header(worker.resources)
    # its stores are xtalloop's, with the password from the environment: not in the file
    assert type(project.get_queue_store()).__name__ == "XtalloopMongoStore"
    jobstore = project.get_jobstore()
    assert type(jobstore.docs_store).__name__ == "XtalloopMongoStore"
    assert set(jobstore.additional_stores) == {"data"}
    assert "password:" not in EXAMPLE.read_text()


def test_project_stores_need_a_mongodb_store(tmp_path):
    with pytest.raises(ConfigError, match="store.backend: mongodb"):
        project_stores(StoreConfig(path=str(tmp_path / "s")))


@pytest.mark.slow  # the local worker starts a process per job: about 10 minutes here
def test_loop_rounds_run_through_jobflow_remote(tmp_path, mongo_config, jfr_project,
                                                emt_dft_maker):
    path = write_config(tmp_path, mongo_config, compositions=("Cu", "Au", "CuAu"))
    with_two_round_loop(path)
    config = load_config(path)

    record = submit(config, run_id="jfr-loop", relax_maker=emt_dft_maker)
    assert record["kind"] == "loop" and record["submission"]["n_jobs"] == 1
    # each round job adds its round's jobs and the next round job
    run_all_jobs(jfr_project, max_seconds=1500)

    assert_two_round_loop_done(config, "jfr-loop", run_status(config, "jfr-loop"))

"""FireWorks through a real SLURM: qlaunch queues jobs, the scheduler kills some, nothing is lost.

A one-node SLURM cluster (``slurm_cluster`` fixture, ``scripts/slurm-local.sh``)
runs the queue jobs that FireWorks' own ``qlaunch`` submits with the project's
queue adapter (``configs/fireworks/my_qadapter.yaml`` with test values); the
LaunchPad and the stores live on the SecantusDB server. EMT stands in for the
ML model and for DFT, and the CuAu "DFT" hangs like a long calculation while a
flag file exists, so the test knows which queue job to kill and when. The
MongoDB password reaches qlaunch and the jobs through the environment only
(sbatch exports it); the test greps every file it and SLURM wrote for it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import EmtRelaxAsDftMaker
from mongodb_server import PASSWORD, PASSWORD_ENV, USER
from test_fireworks import assert_nothing_duplicated, cli, write_config
from xtalloop.config import load_config
from xtalloop.errors import StoreError
from xtalloop.hpc.fireworks import launchpad_for
from xtalloop.hpc.submit import run_status, submit

TESTS = Path(__file__).parent
FIREWORKS_CONFIGS = TESTS.parent / "configs" / "fireworks"
BIN = Path(sys.executable).parent
HANG_ENV = "XTALLOOP_TEST_HANG_FLAG"
PING_SECS, LOST_AFTER_SECS = 1, 5  # FW_config of the test: a dead job is lost 5 s after its kill


@dataclass
class HangingEmtMaker(EmtRelaxAsDftMaker):
    """EMT "DFT" that hangs on CuAu while the file named by $XTALLOOP_TEST_HANG_FLAG exists.

    A hanging worker first touches ``<flag>.<SLURM job id>``: the test then
    knows that this queue job is inside a calculation, the moment to kill it.
    """

    def calculator_for(self, structure, remedy=None):
        flag = os.environ.get(HANG_ENV)
        if structure.composition.reduced_formula == "CuAu" and flag and Path(flag).exists():
            Path(f"{flag}.{os.environ.get('SLURM_JOB_ID', 'none')}").touch()
            while Path(flag).exists():
                time.sleep(0.5)
        return super().calculator_for(structure, remedy)


class Cluster:
    """The FireWorks side of one test: config files, qlaunch, the run's state."""

    def __init__(self, tmp_path: Path, slurm, mongo_config, run_id: str) -> None:
        self.slurm, self.run_id = slurm, run_id
        self.path = write_config(tmp_path, mongo_config)
        self.config = load_config(self.path)
        self.flag = tmp_path / "hang"
        self.launches = tmp_path / "launches"
        self.launches.mkdir()
        fw = tmp_path / "fw"
        fw.mkdir()
        # the project's files, with this server and test values; no password anywhere
        launchpad = yaml.safe_load((FIREWORKS_CONFIGS / "my_launchpad.yaml").read_text())
        port = mongo_config.uri.rsplit(":", 1)[1]
        launchpad.update(host=f"mongodb://{USER}@127.0.0.1:{port}/?authSource=admin",
                         name=self.config.submit.launchpad_database, strm_lvl="ERROR",
                         mongoclient_kwargs={"password_env": PASSWORD_ENV})
        (fw / "my_launchpad.yaml").write_text(yaml.safe_dump(launchpad))
        (fw / "my_fworker.yaml").write_text((FIREWORKS_CONFIGS / "my_fworker.yaml").read_text())
        fw_config = yaml.safe_load((FIREWORKS_CONFIGS / "FW_config.yaml").read_text())
        fw_config.update(PING_TIME_SECS=PING_SECS, RUN_EXPIRATION_SECS=LOST_AFTER_SECS)
        (fw / "FW_config.yaml").write_text(yaml.safe_dump(fw_config))
        self.fw = fw
        self.qadapter = yaml.safe_load((FIREWORKS_CONFIGS / "my_qadapter.yaml").read_text())
        self.env = {**slurm.env, "FW_CONFIG_FILE": str(fw / "FW_config.yaml"),
                    "PYTHONPATH": str(TESTS), HANG_ENV: str(self.flag)}
        assert self.env[PASSWORD_ENV] == PASSWORD  # exported in the submitting shell, nowhere else

    def qlaunch(self, walltime: str = "00:10:00") -> str:
        """One queue job through FireWorks' qlaunch and the project's adapter; its SLURM id."""
        qadapter = {**self.qadapter, "queue": self.slurm.partition, "account": "xtalloop-test",
                    "walltime": walltime, "ntasks_per_node": 1, "job_name": "xtalloop-test",
                    "logdir": str(self.launches),
                    "rocket_launch": f"rlaunch -l {self.fw}/my_launchpad.yaml "
                                     f"-w {self.fw}/my_fworker.yaml rapidfire --max_loops 1",
                    "pre_rocket": f"source {BIN}/activate\nexport OMP_NUM_THREADS=1"}
        assert qadapter.keys() == self.qadapter.keys()
        (self.fw / "my_qadapter.yaml").write_text(yaml.safe_dump(qadapter))
        before = set(self.slurm.jobs())
        out = self.slurm.run([str(BIN / "qlaunch"), "-l", f"{self.fw}/my_launchpad.yaml",
                              "-w", f"{self.fw}/my_fworker.yaml",
                              "-q", f"{self.fw}/my_qadapter.yaml", "--launch_dir",
                              str(self.launches), "rapidfire", "--nlaunches", "1"],
                             env=self.env)
        new = set(self.slurm.jobs()) - before
        assert len(new) == 1, out
        return new.pop()

    def xtalloop(self, *args: str) -> str:
        out = cli(*args, str(self.path), "--run", self.run_id, env=self.env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def kill_inside_a_calculation(self, job: str, how: str) -> None:
        """Wait until ``job`` hangs in the CuAu DFT, end it (``scancel`` or its walltime)."""
        marker = Path(f"{self.flag}.{job}")
        self.slurm.wait_until(marker.exists, 240, f"queue job {job} did not reach the CuAu DFT")
        status = self.xtalloop("status")
        assert re.search(r"running: CuAu .*DFT relax on \S+", status), status
        if how == "scancel":
            self.slurm.run(["scancel", job])
        self.slurm.wait_until(lambda: job not in self.slurm.jobs(), 150,
                              f"queue job {job} did not end ({how})")

    def requeue_lost(self) -> None:
        """The dead job's FireWork is RUNNING until it is lost; then rerun-failed requeues it."""
        assert "1 running" in self.xtalloop("status")
        running = lambda: run_status(self.config, self.run_id)["running"]  # noqa: E731
        self.slurm.wait_until(lambda: running()[0]["last_seen"] > LOST_AFTER_SECS + 1,
                              60, "the killed job's FireWork kept pinging")
        assert "requeued 1 failed jobs" in self.xtalloop("rerun-failed")
        assert "0 running" in self.xtalloop("status")

    def finish(self) -> None:
        """A last queue job runs the rest: the run completes, every structure stored once."""
        self.flag.unlink()
        job = self.qlaunch()
        self.slurm.wait_until(lambda: job not in self.slurm.jobs(), 240,
                              f"queue job {job} did not finish the run")
        state = run_status(self.config, self.run_id)
        assert state["counts"]["failed"] == state["counts"]["waiting"] == 0, state["counts"]
        assert state["counts"]["running"] == 0 and state["run"]["status"] == "completed"
        assert f"run {self.run_id} (fireworks): completed" in self.xtalloop("status")
        docs = assert_nothing_duplicated(self.config)
        assert sorted(d["formula"] for d in docs) == ["Cu", "CuAu"]
        assert all(d["found_in_runs"] == [self.run_id] for d in docs)

    def assert_no_password_written(self, *folders: Path) -> None:
        """No file holds the password: job scripts, outputs, FireWorks' files, SLURM's logs.

        Except one, which no environment route avoids: slurmctld keeps each batch
        job's exported environment in its state folder (``job.N/environment``,
        mode 0600, SlurmUser's) until it forgets the job (``MinJobAge``).
        """
        files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
        assert any(p.name.startswith("FW_submit") for p in files)  # the job scripts are here
        assert any(p.name == "slurmctld.log" for p in files)
        leaks = [p for p in files if PASSWORD.encode() in p.read_bytes()]
        slurm_state = [p for p in leaks if p.name == "environment" and p.parent.name.startswith(
            "job.") and p.parent.parent.parent.name == "state"]
        assert all(p.stat().st_mode & 0o077 == 0 for p in slurm_state), slurm_state
        assert not set(leaks) - set(slurm_state), leaks


def test_scancelled_job_is_requeued_and_run_completes(tmp_path, slurm_cluster, mongo_config):
    cluster = Cluster(tmp_path, slurm_cluster, mongo_config, "slurm-scancel")
    submit(cluster.config, run_id=cluster.run_id,
           relax_maker=HangingEmtMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    cluster.flag.touch()
    job = cluster.qlaunch()
    cluster.kill_inside_a_calculation(job, "scancel")
    cluster.requeue_lost()
    cluster.finish()
    cluster.assert_no_password_written(tmp_path, slurm_cluster.dir)


@pytest.mark.slow  # SLURM's walltime is at least a minute, checked every 30 s: ~2.5 min
def test_job_killed_at_walltime_is_requeued_and_run_completes(tmp_path, slurm_cluster,
                                                              mongo_config):
    cluster = Cluster(tmp_path, slurm_cluster, mongo_config, "slurm-walltime")
    submit(cluster.config, run_id=cluster.run_id,
           relax_maker=HangingEmtMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    cluster.flag.touch()
    job = cluster.qlaunch(walltime="00:01:00")
    cluster.kill_inside_a_calculation(job, "walltime")
    [out] = cluster.launches.rglob(f"xtalloop-test-{job}.error")
    assert "DUE TO TIME LIMIT" in out.read_text()
    cluster.requeue_lost()
    cluster.finish()
    cluster.assert_no_password_written(tmp_path, slurm_cluster.dir)


def test_launchpad_file_names_the_password_variable(tmp_path, mongo_config, emt_dft_maker,
                                                    monkeypatch):
    """FireWorks' lpad and xtalloop connect with a passwordless my_launchpad.yaml, or say why not."""
    config = load_config(write_config(tmp_path, mongo_config))
    submit(config, run_id="lpad", relax_maker=emt_dft_maker)
    fw = tmp_path / "fw"
    fw.mkdir()
    launchpad = yaml.safe_load((FIREWORKS_CONFIGS / "my_launchpad.yaml").read_text())
    launchpad.update(host=f"{mongo_config.uri}/?authSource=admin", strm_lvl="ERROR",
                     name=config.submit.launchpad_database,
                     mongoclient_kwargs={"password_env": PASSWORD_ENV,
                                         "serverSelectionTimeoutMS": 5000})
    (fw / "my_launchpad.yaml").write_text(yaml.safe_dump(launchpad))
    env = {**os.environ, "FW_CONFIG_FILE": str(FIREWORKS_CONFIGS / "FW_config.yaml")}
    lpad = [str(BIN / "lpad"), "-l", str(fw / "my_launchpad.yaml"), "get_wflows", "-d", "count"]
    out = subprocess.run(lpad, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr[-2000:]

    with_file = config.model_copy(update={"submit": config.submit.model_copy(
        update={"launchpad_file": str(fw / "my_launchpad.yaml")})})  # `submit --launchpad`
    assert launchpad_for(with_file).workflows.count_documents({}) == 1  # without FW_config

    del env[PASSWORD_ENV]
    out = subprocess.run(lpad, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert f"${PASSWORD_ENV} is not set" in out.stderr, out.stderr[-2000:]
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(StoreError, match=f"{PASSWORD_ENV} .*is not set"):
        launchpad_for(with_file)

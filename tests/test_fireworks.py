"""Runs submitted to FireWorks on a real MongoDB-wire-protocol server (SecantusDB).

EMT stands in for the ML model and for DFT (the physics has its own tests);
everything else is real: the LaunchPad and the job store on the server,
FireWorks' own ``rlaunch`` as the cluster's worker, ``xtalloop`` commands in
fresh processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from conftest import (
    FLAG_ENV,
    FlakyEmtMaker,
    assert_two_round_loop_done,
    with_two_round_loop,
)
from mongodb_server import PASSWORD, PASSWORD_ENV, USER, free_port
from xtalloop.config import RunConfig, load_config
from xtalloop.hpc.fireworks import launchpad_for, recover_lost_fireworks
from xtalloop.hpc.submit import rerun_failed, run_status, submit
from xtalloop.store import job_store
from xtalloop.store.results import open_results

TESTS = Path(__file__).parent


def write_config(tmp_path: Path, mongo_config, compositions=("Cu", "CuAu")) -> Path:
    data = {
        "name": "emt-fw",
        "compositions": list(compositions),
        "generate": {"seed": 3, "max_atoms": 4, "sources": [{"n": 4}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 100},
        "store": mongo_config.model_dump(exclude_none=True),
        "submit": {"engine": "fireworks", "launchpad_database": f"{mongo_config.database}_fw"},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtalloop.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def rapidfire_here(config: RunConfig, where: Path) -> None:
    """Run every ready job in this process, as one worker would."""
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    where.mkdir(parents=True, exist_ok=True)
    rapidfire(launchpad_for(config), FWorker(), m_dir=str(where), strm_lvl="ERROR")


def assert_nothing_duplicated(config: RunConfig) -> list[dict]:
    """No validated structure twice, no job output stored twice; returns the structures."""
    with open_results(config.store) as db:
        docs = db.find_validated()
    matcher = StructureMatcher()
    for i, a in enumerate(docs):
        for b in docs[i + 1:]:
            if a["formula"] == b["formula"]:
                assert not matcher.fit(Structure.from_dict(a["structure"]),
                                       Structure.from_dict(b["structure"])), (a["uuid"], b["uuid"])
    store = job_store(config.store)
    store.connect()
    try:
        keys = [(d["uuid"], d["index"]) for d in store.docs_store.query({}, ["uuid", "index"])]
    finally:
        store.close()
    assert len(keys) == len(set(keys))
    return docs


def test_submit_run_with_rlaunch_then_query(tmp_path, mongo_config, emt_dft_maker):
    path = write_config(tmp_path, mongo_config)
    config = load_config(path)

    # the command line submits the real (GPAW) flow and reports it waiting
    out = cli("submit", str(path))
    assert out.returncode == 0, out.stderr
    assert "submitted run emt-fw-" in out.stdout and "jobs to start with (fireworks)" in out.stdout
    status = cli("status", str(path), "--format", "json")
    assert status.returncode == 0, status.stderr
    waiting = json.loads(status.stdout)
    assert waiting["counts"]["waiting"] == 6 and waiting["counts"]["completed"] == 0
    assert waiting["run"]["status"] == "submitted"
    assert PASSWORD not in out.stdout + status.stdout
    launchpad_for(config).defuse_wf(waiting["run"]["submission"]["workflow_id"])  # no GPAW here

    # the same run with EMT as "DFT", run by FireWorks' own worker command
    record = submit(config, run_id="fw-run", relax_maker=emt_dft_maker)
    assert record["submission"]["engine"] == "fireworks"
    launchpad_file = tmp_path / "my_launchpad.yaml"
    launchpad_file.write_text(yaml.safe_dump({
        "host": f"mongodb://{USER}:{PASSWORD}@127.0.0.1:{mongo_config.uri.rsplit(':', 1)[1]}"
                "/?authSource=admin",
        "uri_mode": True, "name": config.submit.launchpad_database,
    }))
    worker = tmp_path / "worker"
    worker.mkdir()
    env = {**os.environ, PASSWORD_ENV: PASSWORD, "PYTHONPATH": str(TESTS)}
    rlaunch = Path(sys.executable).parent / "rlaunch"
    done = subprocess.run([str(rlaunch), "-l", str(launchpad_file), "-s", "rapidfire"],
                          cwd=worker, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    state = run_status(config, "fw-run")
    assert state["counts"]["failed"] == 0 and state["counts"]["waiting"] == 0
    assert state["counts"]["running"] == 0 and state["counts"]["completed"] >= 6
    assert state["run"]["status"] == "completed"
    assert {d["formula"] for d in state["validated"]} == {"Cu", "CuAu"}

    query = cli("query", "--uri", mongo_config.uri, "--database", mongo_config.database,
                "--password-env", PASSWORD_ENV, "--formula", "CuAu", "--format", "json",
                env={**os.environ, PASSWORD_ENV: PASSWORD})
    assert query.returncode == 0, query.stderr
    docs = json.loads(query.stdout)
    assert docs and docs[0]["found_in_runs"] == ["fw-run"]
    assert docs[0]["e_above_hull"] is not None
    status = cli("status", str(path), "--run", "fw-run")
    assert status.returncode == 0, status.stderr
    assert "run fw-run (fireworks): completed" in status.stdout
    assert "0 failed" in status.stdout and "validated structures: 2" in status.stdout
    assert_nothing_duplicated(config)


def test_failed_job_is_reported_and_rerun(tmp_path, mongo_config, monkeypatch):
    path = write_config(tmp_path, mongo_config)
    config = load_config(path)
    flag = tmp_path / "fail"
    flag.touch()
    monkeypatch.setenv(FLAG_ENV, str(flag))
    submit(config, run_id="flaky", relax_maker=FlakyEmtMaker(steps=50))
    rapidfire_here(config, tmp_path / "w1")

    state = run_status(config, "flaky")
    assert state["counts"]["failed"] == 1
    assert state["run"]["status"] == "completed with failures"
    [failure] = state["failed"]
    assert "CuAu pick 1 DFT relax" in failure["name"]
    assert "SCF did not converge" in failure["error"]
    assert {d["formula"] for d in state["validated"]} == {"Cu"}  # the sibling went on
    status = cli("status", str(path), "--run", "flaky")
    assert "failed: CuAu pick 1 DFT relax" in status.stdout and "SCF did not converge" in status.stdout

    flag.unlink()
    requeue = cli("rerun-failed", str(path), "--run", "flaky")
    assert requeue.returncode == 0, requeue.stderr
    assert "requeued 1 failed jobs" in requeue.stdout
    rapidfire_here(config, tmp_path / "w2")
    state = run_status(config, "flaky")
    assert state["counts"]["failed"] == 0 and state["run"]["status"] == "completed"
    assert {d["formula"] for d in state["validated"]} == {"Cu", "CuAu"}
    assert_nothing_duplicated(config)


def test_server_restart_mid_run_resumes_and_loses_nothing(
    tmp_path, mongo_config, mongodb_server, emt_dft_maker
):
    path = write_config(tmp_path, mongo_config)
    config = load_config(path)
    submit(config, run_id="restart", relax_maker=emt_dft_maker)

    worker_script = tmp_path / "worker.py"
    worker_script.write_text(
        "import sys\n"
        "from fireworks import FWorker\n"
        "from fireworks.core.rocket_launcher import rapidfire\n"
        "from xtalloop.config import load_config\n"
        "from xtalloop.hpc.fireworks import launchpad_for\n"
        "rapidfire(launchpad_for(load_config(sys.argv[1])), FWorker(), strm_lvl='ERROR')\n")
    (tmp_path / "worker").mkdir()
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    worker = subprocess.Popen([sys.executable, str(worker_script), str(path)], cwd=tmp_path / "worker",
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until part of the run is done
            if run_status(config, "restart")["counts"]["completed"] >= 2:
                break
            assert worker.poll() is None, worker.stdout.read().decode()[-2000:]
            time.sleep(1)
        else:
            pytest.fail("the worker completed no job within 300 s")
        mongodb_server.stop()  # the database goes away under a running worker
        time.sleep(2)
        mongodb_server.start(auth=True)
        try:  # the worker may carry on, crash, or hang on a dead connection ...
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if worker.poll() is None:  # ... in which case it goes, like a node that died
            worker.kill()
            worker.wait()

    # whatever the worker was doing when the server vanished is requeued, then finished
    recover_lost_fireworks(config, "restart", expiration_secs=0)
    rerun_failed(config, "restart")
    rapidfire_here(config, tmp_path / "w2")

    state = run_status(config, "restart")
    assert state["counts"]["waiting"] == state["counts"]["running"] == 0
    assert state["counts"]["failed"] == 0, state["failed"]
    assert state["run"]["status"] == "completed"
    docs = assert_nothing_duplicated(config)
    assert {d["formula"] for d in docs} == {"Cu", "CuAu"}
    assert all(d["found_in_runs"] == ["restart"] for d in docs)


def test_submit_needs_a_server_the_cluster_reaches(tmp_path):
    path = tmp_path / "local.yaml"
    path.write_text("compositions: [NaCl]\nstore: {path: " + str(tmp_path / "s") + "}\n")
    out = cli("submit", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "store.backend: mongodb" in lines[0], out.stderr


def test_submit_to_an_unreachable_server_is_one_line(tmp_path, mongo_password):
    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "compositions": ["NaCl"],
        "store": {"backend": "mongodb", "uri": f"mongodb://{USER}@127.0.0.1:{port}",
                  "password_env": PASSWORD_ENV},
    }))
    start = time.monotonic()
    out = cli("submit", str(path))
    # well under pymongo's 30 s default server selection: the store's own short timeout
    # decides (10 s was too tight for a CLI process's start on a loaded 2-core machine)
    assert time.monotonic() - start < 20
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], out.stderr
    assert PASSWORD not in out.stderr + out.stdout


def test_loop_rounds_run_through_fireworks(tmp_path, mongo_config, emt_dft_maker):
    path = write_config(tmp_path, mongo_config, compositions=("Cu", "Au", "CuAu"))
    with_two_round_loop(path)
    config = load_config(path)

    record = submit(config, run_id="fw-loop", relax_maker=emt_dft_maker)
    assert record["kind"] == "loop" and record["submission"]["n_jobs"] == 1
    rapidfire_here(config, tmp_path / "w1")  # the round jobs add the rounds as they run

    assert_two_round_loop_done(config, "fw-loop", run_status(config, "fw-loop"))
    assert_nothing_duplicated(config)

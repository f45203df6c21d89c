"""Runs that survive faults and say what happened.

A MongoDB server (SecantusDB) that stops in the middle of a run, a run killed
with SIGKILL, a job that raises, a run folder that cannot be created and a
store that cannot be reached: each ends with a record that says what happened,
and running again completes what is missing without duplicating anything.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EmtRelaxAsDftMaker
from mongodb_server import free_port
from xtalloop.cli import app
from xtalloop.config import RunConfig, StoreConfig, load_config
from xtalloop.errors import ConfigError, StoreError
from xtalloop.hpc.submit import run_status
from xtalloop.retry import StoreUnavailableError
from xtalloop.run_record import STOPPED_FILE
from xtalloop.runner import execute, unfinished_run
from xtalloop.store.results import open_results

COMPOSITIONS = ("Cu", "Au", "CuAu")


def fault_config(tmp_path, store: StoreConfig | dict, compositions=COMPOSITIONS) -> RunConfig:
    return RunConfig.model_validate({
        "name": "faults", "compositions": list(compositions),
        "generate": {"seed": 3, "max_atoms": 2, "sources": [{"n": 3}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 30},
        "store": store if isinstance(store, dict) else store.model_dump(),
        "output_dir": str(tmp_path / "runs"),
    })


def assert_complete_once(config: RunConfig, run_id: str) -> None:
    """Every composition has one result, and every validated structure one document."""
    with open_results(config.store) as db:
        record = db.get_run(run_id)
        results = db.composition_results(run_id)
        docs = db.find_validated()
    assert record["status"] == "completed", record
    assert not record["missing"] and not record["failed_jobs"]
    assert sorted(r["formula"] for r in results) == sorted(COMPOSITIONS)
    assert {d["formula"] for d in docs} == set(COMPOSITIONS)
    uuids = [d["uuid"] for d in docs]
    assert len(uuids) == len(set(uuids))
    recorded = [v["uuid"] for r in results for v in r["validated"]]
    assert sorted(recorded) == sorted(uuids)  # nothing stored twice, nothing unrecorded
    assert all(d["found_in_runs"] == [run_id] for d in docs)


# -- a MongoDB outage in the middle of a run ----------------------------------------

OUTAGE: dict = {}


@dataclass
class OutageMaker(EmtRelaxAsDftMaker):
    """EMT "DFT" that stops the MongoDB server when it starts relaxing Au.

    ``OUTAGE["restart_after"]`` seconds later (``None``: never) the server
    starts again on the same port and storage.
    """

    def calculator_for(self, structure, remedy=None):
        server = OUTAGE.get("server")
        if server is not None and structure.composition.reduced_formula == "Au":
            OUTAGE.pop("server")
            server.stop()
            if OUTAGE.get("restart_after") is not None:
                threading.Timer(OUTAGE["restart_after"], server.start, kwargs={"auth": True}
                                ).start()
        return super().calculator_for(structure, remedy)


@pytest.fixture
def outage(mongodb_server):
    yield OUTAGE
    OUTAGE.clear()
    for _ in range(100):  # a restart timer may still be pending
        if mongodb_server.process is not None:
            break
        time.sleep(0.2)
    if mongodb_server.process is None:
        mongodb_server.start(auth=True)


def test_a_mongodb_restart_mid_run_is_waited_out(tmp_path, mongo_config, outage,
                                                  mongodb_server, caplog, monkeypatch):
    outage.update(server=mongodb_server, restart_after=8)
    config = fault_config(tmp_path, mongo_config)
    caplog.set_level(logging.WARNING, logger="xtalloop")
    # a library's logging.config earlier in the session may have disabled existing loggers
    monkeypatch.setattr(logging.getLogger("xtalloop.retry"), "disabled", False)
    result = execute(config, progress=False, relax_maker=OutageMaker(steps=30))
    assert "server" not in outage  # the server did stop during the run
    assert any("does not answer" in r.getMessage() for r in caplog.records)  # and was waited for
    assert result.missing == [] and result.failed_jobs == []
    assert_complete_once(config, result.run_id)


def test_a_long_outage_stops_with_one_line_and_a_rerun_completes(tmp_path, mongo_config,
                                                                 outage, mongodb_server):
    outage.update(server=mongodb_server, restart_after=None)
    store = mongo_config.model_copy(update={"retry_seconds": 3})
    config = fault_config(tmp_path, store)
    with pytest.raises(StoreUnavailableError) as info:
        execute(config, progress=False, relax_maker=OutageMaker(steps=30))
    message = str(info.value)
    assert "\n" not in message and "store.retry_seconds" in message and "run it again" in message
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "did not answer" in (run_dir / STOPPED_FILE).read_text()

    mongodb_server.start(auth=True)
    previous = unfinished_run(config)  # the record says running; the note says why it stopped
    assert previous is not None and previous["id"] == run_dir.name
    assert previous["status"] == "interrupted" and "did not answer" in previous["stopped_by"]
    with open_results(config.store) as db:
        done = [r["formula"] for r in db.composition_results(run_dir.name)]
    assert done == ["Cu"]

    result = execute(config, progress=False, relax_maker=OutageMaker(steps=30))
    assert result.run_id == run_dir.name and result.resumed
    assert [c["formula"] for c in result.compositions] == list(COMPOSITIONS)
    assert not (run_dir / STOPPED_FILE).exists()
    assert_complete_once(config, result.run_id)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [c["formula"] for c in summary["compositions"]] == list(COMPOSITIONS)
    assert len(list((run_dir / "cifs").glob("*.cif"))) == len(result.validated)


# -- failures come from the store, not from log text ----------------------------------


@dataclass
class BrokenSettings(EmtRelaxAsDftMaker):
    """CuAu's validate job raises (before any DFT): the composition gets no result."""

    def settings_for(self, structure):
        if structure.composition.reduced_formula == "CuAu":
            raise ValueError("no pseudopotential for this\nCuAu cell")
        return super().settings_for(structure)


def test_failed_jobs_are_read_from_the_store_and_a_rerun_completes_them(tmp_path):
    config = fault_config(tmp_path, {"path": str(tmp_path / "store")})
    jobflow_log = logging.getLogger("jobflow")
    jobflow_log.disabled = True  # no log text to scrape
    try:
        first = execute(config, progress=False, relax_maker=BrokenSettings(steps=30))
    finally:
        jobflow_log.disabled = False
    assert first.missing == ["CuAu"]
    assert first.failed_jobs == ["CuAu validate: ValueError: CuAu cell"]
    state = run_status(config, first.run_id)
    assert state["run"]["status"] == "completed with failures"
    assert [(f["name"], f["error"]) for f in state["failed"]] == [
        ("CuAu validate", "ValueError: CuAu cell")]

    out = CliRunner().invoke(app, ["status", str(_yaml(tmp_path, config)), "--run",
                                   first.run_id])
    assert "failed: CuAu validate: ValueError: CuAu cell" in out.output
    assert "no result for: CuAu" in out.output

    second = execute(config, progress=False, relax_maker=EmtRelaxAsDftMaker(steps=30))
    assert second.run_id == first.run_id and second.resumed and second.missing == []
    assert_complete_once(config, first.run_id)


def _yaml(tmp_path: Path, config: RunConfig) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    return path


# -- a killed run ---------------------------------------------------------------------

HANG_ENV = "XTALLOOP_TEST_HANG_FLAG"


@dataclass
class HangingMaker(EmtRelaxAsDftMaker):
    """EMT "DFT" that creates $XTALLOOP_TEST_HANG_FLAG and hangs when it starts on Au."""

    def calculator_for(self, structure, remedy=None):
        flag = os.environ.get(HANG_ENV)
        if flag and structure.composition.reduced_formula == "Au":
            Path(flag).touch()
            time.sleep(600)
        return super().calculator_for(structure, remedy)


def test_a_killed_run_is_marked_interrupted_and_resumed(tmp_path):
    config = fault_config(tmp_path, {"path": str(tmp_path / "store")})
    config_file = _yaml(tmp_path, config)
    flag = tmp_path / "hanging"
    script = ("import sys\nfrom test_run_faults import HangingMaker\n"
              "from xtalloop.config import load_config\nfrom xtalloop.runner import execute\n"
              "execute(load_config(sys.argv[1]), progress=False, "
              "relax_maker=HangingMaker(steps=30))\n")
    env = {**os.environ, HANG_ENV: str(flag),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    child = subprocess.Popen([sys.executable, "-c", script, str(config_file)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never reached Au"
            time.sleep(0.2)
        with open_results(config.store) as db:
            (record,) = [r for r in [db.latest_run("faults")] if r]
        assert record["status"] == "running" and record["process"]["pid"] == child.pid
        assert run_status(config)["run"]["status"] == "running"  # alive: left alone
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    out = CliRunner().invoke(app, ["status", str(config_file)])
    assert out.exit_code == 0, out.output
    assert f"run {record['id']} (local): interrupted" in out.output
    assert f"its process {child.pid}" in out.output and "ended without finishing" in out.output
    result = execute(config, progress=False, relax_maker=EmtRelaxAsDftMaker(steps=30))
    assert result.run_id == record["id"] and result.resumed
    assert_complete_once(config, record["id"])


# -- litter and bad input -----------------------------------------------------------


def test_output_dir_under_a_file_is_one_line_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    config = fault_config(tmp_path, {"path": str(tmp_path / "store")})
    config = config.model_copy(update={"output_dir": str(tmp_path / "afile" / "runs")})
    with pytest.raises(ConfigError, match=r"^output_dir: .*afile/runs is under .*afile, "
                                          r"which is a file, not a folder$"):
        execute(config, progress=False, relax_maker=EmtRelaxAsDftMaker())
    out = CliRunner().invoke(app, ["run", str(_yaml(tmp_path, config))])
    assert out.exit_code == 2 and out.output.startswith("error: output_dir: ")
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()  # no work, not even the store was opened


def test_a_store_that_cannot_be_reached_leaves_no_run_folder(tmp_path):
    store = StoreConfig(backend="mongodb", uri=f"mongodb://127.0.0.1:{free_port()}")
    config = fault_config(tmp_path, store)
    with pytest.raises(StoreError, match="no answer within"):
        execute(config, progress=False, relax_maker=EmtRelaxAsDftMaker())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(("seed", "reason"), [(2**70, "less than"), (-1, "greater than or equal")])
def test_a_seed_out_of_range_is_refused_at_load(tmp_path, seed, reason):
    path = tmp_path / "c.yaml"
    path.write_text(f"compositions: [NaCl]\ngenerate: {{seed: {seed}}}\n")
    with pytest.raises(ConfigError, match=rf"generate\.seed.*{reason}") as info:
        load_config(path)
    assert "\n" not in str(info.value)

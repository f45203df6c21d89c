"""The MongoDB backend against a real MongoDB-wire-protocol server (SecantusDB).

The server runs in a subprocess (``mongodb_server`` in ``conftest.py``) with
authentication on; the tests connect as a user whose password comes from an
environment variable. Without SecantusDB the tests are skipped, except on CI
(``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from conftest import rocksalt, zincblende
from mongodb_server import PASSWORD, PASSWORD_ENV, USER, free_port
from xtalloop.config import RunConfig, StoreConfig, load_config
from xtalloop.errors import ConfigError, StoreError
from xtalloop.runner import execute
from xtalloop.store import job_store
from xtalloop.store.backends import TIMEOUT_MS, XtalloopMongoStore
from xtalloop.store.results import open_results


def validated_doc(structure, energy: float, run_id: str = "r1") -> dict:
    return {
        "formula": structure.composition.reduced_formula, "chemsys": "Cl-Na",
        "structure": structure.as_dict(), "energy_per_atom": energy, "e_above_hull": 0.0,
        "nsites": len(structure), "space_group": "Fm-3m", "space_group_number": 225,
        "generator": {"generator": "test"},
        "dft": {"settings_key": "k", "converged": True}, "run": {"id": run_id},
    }


# -- configuration (no server) ---------------------------------------------------


def test_mongodb_backend_needs_a_uri_and_no_password_in_it():
    with pytest.raises(ValidationError, match="uri"):
        StoreConfig(backend="mongodb")
    with pytest.raises(ValidationError, match="password_env or password_file"):
        StoreConfig(backend="mongodb", uri=f"mongodb://u:{PASSWORD}@host")
    with pytest.raises(ValidationError, match="mongodb://"):
        StoreConfig(backend="mongodb", uri="http://host")


def test_config_file_without_uri_is_one_line_naming_store_uri(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("compositions: [NaCl]\nstore: {backend: mongodb}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: store.uri: required with backend mongodb")
    assert "\n" not in str(info.value)


def test_redacted_dump_masks_a_uri_password():
    config = StoreConfig.model_construct(backend="mongodb", uri=f"mongodb://u:{PASSWORD}@h:1/db",
                                         password_env=None)
    assert PASSWORD not in json.dumps(config.redacted_dump())


# -- against the server ------------------------------------------------------------


def test_results_db_insert_merge_and_query(mongo_config):
    nacl = rocksalt("Na", "Cl", 5.6)
    with open_results(mongo_config) as db:
        uid, outcome = db.add_validated(validated_doc(nacl, -3.0))
        assert outcome == "new"
        assert db.add_validated(validated_doc(nacl.copy(), -3.0, "r2")) == (uid, "duplicate")
        assert db.add_validated(validated_doc(nacl.copy(), -3.2, "r3")) == (uid, "improved")
        assert db.add_validated(validated_doc(nacl.copy(), -3.2, "r2")) == (uid, "duplicate")
        db.add_validated(validated_doc(zincblende("Na", "Cl", 6.0), -1.0))
        docs = db.find_validated(formula="Na2Cl2")
        assert [d["energy_per_atom"] for d in docs] == [-3.2, -1.0]
        assert docs[0]["found_in_runs"] == ["r1", "r2", "r3"]
        assert docs[0]["previous_results"][0]["energy_per_atom"] == -3.0
        assert db.find_validated(chemsys="Na-Cl", max_e_above_hull=0.1)
        db.set_e_above_hull({uid: 0.5})
        assert [d["uuid"] for d in db.find_validated(max_e_above_hull=0.1)] != [uid]
        indexes = db.store("validated")._collection.index_information()
    assert {"formula_1", "chemsys_1", "e_above_hull_1", "dft.settings_key_1",
            "uuid_1"} <= set(indexes)


def test_job_store_puts_large_data_in_gridfs(mongo_config):
    store = job_store(mongo_config)
    assert type(store.additional_stores["data"]).__name__ == "XtalloopGridFSStore"
    store.connect()
    try:
        assert store.docs_store.count() == 0
    finally:
        store.close()


def test_store_serialisation_holds_no_password(mongo_config):
    store = XtalloopMongoStore(database="x", collection_name="c", uri=mongo_config.uri,
                               password_env=PASSWORD_ENV)
    store.connect()
    store.close()
    assert PASSWORD not in json.dumps(store.as_dict(), default=str)
    assert PASSWORD not in store.name


def test_wrong_password_is_one_line_naming_the_host(mongo_config, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    with pytest.raises(StoreError) as info, open_results(mongo_config) as db:
        db.find_validated()
    message = str(info.value)
    assert "\n" not in message and "127.0.0.1" in message and "authentication" in message
    assert "wrong-password" not in message


def test_missing_password_variable_is_named(mongo_config, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(StoreError, match=PASSWORD_ENV), open_results(mongo_config) as db:
        db.find_validated()


def test_unreachable_server_fails_fast_in_one_line(mongo_password):
    # The CLI's own start-up (imports) is timed apart, so that a loaded CI machine
    # cannot fail the test: what is checked is the wait for the server, which must be
    # the client's timeout, not pymongo's 30 s default or a retry loop.
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "xtalloop.cli", "query", "--help"],
                   capture_output=True, check=True, timeout=120)
    startup = time.monotonic() - start
    port = free_port()  # nothing listens there
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "xtalloop.cli", "query", "--uri", f"mongodb://{USER}@127.0.0.1:{port}",
         "--password-env", PASSWORD_ENV],
        capture_output=True, text=True, timeout=120,
    )
    waited = time.monotonic() - start - startup
    assert out.returncode == 2, out.stderr
    assert waited < TIMEOUT_MS / 1000 + 5, (waited, startup)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert PASSWORD not in out.stderr + out.stdout


def test_run_on_mongodb_then_query_from_a_fresh_process(mongo_config, tmp_path, emt_dft_maker):
    config = RunConfig.model_validate({
        "name": "emt-mongo",
        "compositions": ["Cu"],
        "generate": {"seed": 7, "max_atoms": 4, "sources": [{"n": 4}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 100},
        "store": mongo_config.model_dump(),
        "output_dir": str(tmp_path / "runs"),
    })
    result = execute(config, progress=False, run_id="mongo-run", relax_maker=emt_dft_maker)
    assert result.validated, result.failed_jobs

    with open_results(mongo_config) as db:
        run = db.get_run("mongo-run")
        assert run["status"] == "completed"
        assert run["config"]["store"]["password_env"] == PASSWORD_ENV
        assert PASSWORD not in json.dumps(run, default=str)
    assert PASSWORD not in (result.run_dir / "config.json").read_text()
    store = job_store(mongo_config)
    store.connect()
    try:
        assert store.docs_store.count() > 0
        assert store.additional_stores["data"].count() > 0  # trajectories, in GridFS
        assert PASSWORD not in json.dumps(list(store.docs_store.query()), default=str)
    finally:
        store.close()

    out = subprocess.run(
        [sys.executable, "-m", "xtalloop.cli", "query", "--uri", mongo_config.uri,
         "--database", mongo_config.database, "--password-env", PASSWORD_ENV,
         "--formula", "Cu", "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    docs = json.loads(out.stdout)
    assert docs and all(d["formula"] == "Cu" for d in docs)
    assert "trajectory" not in docs[0]
    assert PASSWORD not in out.stdout + out.stderr

"""The results store never loses nor duplicates data, and fails loudly without deleting anything.

Concurrency tests use real processes (``fork``) writing into the embedded
store and into a real MongoDB-wire server (SecantusDB); documents carry
pymatgen structures but no calculator runs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from queue import Empty

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from conftest import rocksalt, zincblende
from xtalloop.config import StoreConfig
from xtalloop.errors import StoreError
from xtalloop.store.documents import VALIDATED_KEPT, is_better, merge_result
from xtalloop.store.results import ResultsDB, open_results


def cscl(a_el: str, b_el: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]])


#: five structures, pairwise different for StructureMatcher, in two formulas
PROTOTYPES = {
    "NaCl-rocksalt": lambda s: rocksalt("Na", "Cl", 5.6 * s),
    "NaCl-zincblende": lambda s: zincblende("Na", "Cl", 6.0 * s),
    "NaCl-cscl": lambda s: cscl("Na", "Cl", 3.4 * s),
    "MgO-rocksalt": lambda s: rocksalt("Mg", "O", 4.2 * s),
    "MgO-zincblende": lambda s: zincblende("Mg", "O", 4.6 * s),
}


def result_doc(structure: Structure, energy: float, run_id: str, converged: bool = True,
               tag: str = "", key: str = "emt-k") -> dict:
    """A validated-structure document with every result field, values marked by ``tag``."""
    n = len(structure)
    return json.loads(json.dumps({  # as stored: lists, not tuples
        "formula": structure.composition.reduced_formula,
        "structure": structure.as_dict(),
        "initial_structure": structure.as_dict(),
        "space_group": f"SG{tag}", "space_group_number": 225,
        "energy": energy * n, "energy_per_atom": energy,
        "forces": [[0.01 * len(tag), 0.0, 0.0]] * n,
        "stress_kbar": [[1.0 + len(tag), 0, 0], [0, 1.0, 0], [0, 0, 1.0]],
        "trajectory": [{"structure": structure.as_dict(), "energy": energy * n,
                        "forces": [[0.0, 0.0, 0.0]] * n, "step": tag}],
        "e_above_hull": None,
        "dft": {"settings_key": key, "converged": converged, "code": "emt",
                "code_version": tag or "0", "n_ionic_steps": len(tag)},
        "generator": {"generator": f"gen{tag}", "seed": 7, "index": 0},
        "prefilter": {"energy_model": {"name": "emt", "version": tag}, "rank": 0},
        "run": {"id": run_id},
    }))


# -- concurrency ------------------------------------------------------------------


def _validate_worker(config_dump: dict, worker: int, rounds: int, barrier, queue) -> None:
    """Add every prototype ``rounds`` times (strained, random order and energy) as run ``w<i>``."""
    rng = random.Random(worker)
    added = []
    with open_results(StoreConfig(**config_dump)) as db:
        barrier.wait()
        for _ in range(rounds):
            names = list(PROTOTYPES)
            rng.shuffle(names)
            for name in names:
                energy = round(rng.uniform(-4.0, -3.0), 4)
                converged = rng.random() < 0.7
                structure = PROTOTYPES[name](1 + rng.uniform(-0.01, 0.01))
                uuid, _ = db.add_validated(result_doc(structure, energy, f"w{worker}",
                                                      converged))
                added.append((name, uuid, energy, converged))
    queue.put(added)


def _run_workers(target, args_of, n: int) -> list:
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_of(i), barrier, queue)) for i in range(n)]
    for p in procs:
        p.start()
    results: list = []
    deadline = time.monotonic() + 120
    while len(results) < n:
        try:
            results.append(queue.get(timeout=0.5))
        except Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not failed and time.monotonic() < deadline, f"workers failed: {failed}"
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _assert_one_document_per_structure(config: StoreConfig, results: list, n: int) -> None:
    added = [row for rows in results for row in rows]
    with open_results(config) as db:
        docs = {d["uuid"]: d for d in db.find_validated()}
    assert len(docs) == len(PROTOTYPES)  # exactly one document per structure
    uuid_of = {}
    for name, uuid, _, _ in added:  # every writer of a structure got the same document
        assert uuid_of.setdefault(name, uuid) == uuid
    for name, uuid in uuid_of.items():
        doc = docs[uuid]
        assert set(doc["found_in_runs"]) == {f"w{i}" for i in range(n)}
        assert len(doc["found_in_runs"]) == n  # a set: no run twice
        converged = [e for nm, _, e, c in added if nm == name and c]
        if converged:  # the lowest converged energy won, whatever the order
            assert doc["energy_per_atom"] == min(converged)
            assert doc["dft"]["converged"]
        history = [r["energy_per_atom"] for r in doc.get("previous_results", [])]
        assert len(history) + 1 <= len([nm for nm, *_ in added if nm == name])


@pytest.mark.parametrize("backend", ["embedded", "mongodb"])
def test_concurrent_writers_end_with_one_document_per_structure(backend, store_config, request):
    config = store_config if backend == "embedded" else request.getfixturevalue("mongo_config")
    n = 4
    results = _run_workers(_validate_worker, lambda i: (config.model_dump(), i, 2), n)
    _assert_one_document_per_structure(config, results, n)


def _id_worker(config_dump: dict, worker: int, barrier, queue) -> None:
    from xtalloop.learn.registry import ModelRegistry

    with open_results(StoreConfig(**config_dump)) as db:
        registry = ModelRegistry(db)
        barrier.wait()
        queue.put([(registry._next_number(), registry._next_promotion()) for _ in range(5)])


@pytest.mark.parametrize("backend", ["embedded", "mongodb"])
def test_registry_ids_are_unique_under_concurrency(backend, store_config, request):
    config = store_config if backend == "embedded" else request.getfixturevalue("mongo_config")
    with open_results(config) as db:  # a registry written before the counters existed
        db.store("models").update([{"model_id": "mace-3", "number": 3, "promoted": True,
                                    "promotion": 2}], key="model_id")
    results = _run_workers(_id_worker, lambda i: (config.model_dump(), i), 4)
    numbers = sorted(a for rows in results for a, _ in rows)
    promotions = sorted(b for rows in results for _, b in rows)
    assert numbers == list(range(4, 24))  # never mace-3 again, never twice the same
    assert promotions == list(range(3, 23))


# -- merging from the schema ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["embedded", "mongodb"])
def test_an_improvement_replaces_every_result_field_and_keeps_the_old(backend, store_config,
                                                                      request):
    config = store_config if backend == "embedded" else request.getfixturevalue("mongo_config")
    first = dict(result_doc(rocksalt("Na", "Cl", 5.6), -3.0, "r1", tag="old"), magmoms=[1, 1])
    better = result_doc(rocksalt("Na", "Cl", 5.65), -3.2, "r2", tag="newer")
    with open_results(config) as db:
        uuid, _ = db.add_validated(first)
        created = db.find_validated()[0]["created_at"]
        assert db.add_validated(better) == (uuid, "improved")
        [doc] = db.find_validated()
    for field in ("structure", "initial_structure", "energy", "energy_per_atom", "forces",
                  "stress_kbar", "trajectory", "space_group", "dft", "generator", "prefilter",
                  "run"):
        assert doc[field] == better[field], field
    assert "magmoms" not in doc  # a result field the new result lacks is not left stale
    assert doc["uuid"] == uuid and doc["created_at"] == created
    assert doc["found_in_runs"] == ["r1", "r2"]
    [old] = doc["previous_results"]
    for field in ("structure", "energy", "energy_per_atom", "forces", "stress_kbar",
                  "trajectory", "dft", "run", "magmoms"):
        assert old[field] == first[field], field
    assert not VALIDATED_KEPT & set(old)  # identity and bookkeeping are not a result


def test_merge_invariants_over_random_orders():
    """Property-style: any order of results of one structure: the same winner, nothing lost."""
    rng = random.Random(1234)
    for _ in range(500):
        results = [{"energy_per_atom": round(rng.uniform(-2, -1), rng.choice([1, 3])),
                    "dft": {"converged": rng.random() < 0.6, "settings_key": "k"},
                    "run": {"id": f"r{rng.randrange(4)}"}, "tag": i,
                    **({"extra": i} if rng.random() < 0.5 else {})}
                   for i in range(rng.randint(1, 7))]
        doc = dict(results[0], found_in_runs=[results[0]["run"]["id"]], uuid="u")
        improved = 0
        for new in results[1:]:
            better = is_better(new, doc)
            doc, _ = merge_result(doc, new, VALIDATED_KEPT, better, "t")
            improved += better
        converged = [r["energy_per_atom"] for r in results if r["dft"]["converged"]]
        # the lowest converged energy wins; with none converged, the first result stays
        winner = min(converged) if converged else results[0]["energy_per_atom"]
        assert doc["energy_per_atom"] == winner
        assert doc["dft"]["converged"] == bool(converged)
        assert sorted(doc["found_in_runs"]) == sorted({r["run"]["id"] for r in results})
        kept = doc.get("previous_results", [])
        assert len(kept) == improved
        # nothing lost: the current result and the replaced ones are exactly the results
        # that were ever stored, each whole (its extra field too, when it had one)
        stored = [*kept, {k: v for k, v in doc.items() if k not in VALIDATED_KEPT}]
        for entry in stored:
            assert entry == {k: v for k, v in results[entry["tag"]].items()}
        assert [e["tag"] for e in stored] == sorted(e["tag"] for e in stored)


def test_merge_through_the_store_matches_the_pure_rule(store_config):
    rng = random.Random(7)
    with ResultsDB(store_config) as db:
        for trial in range(6):
            energies = [(round(rng.uniform(-2, -1), 2), rng.random() < 0.6) for _ in range(4)]
            key = f"k{trial}"
            for i, (energy, converged) in enumerate(energies):
                db.add_validated(result_doc(rocksalt("Na", "Cl", 5.6), energy, f"r{i}",
                                            converged, tag=str(i), key=key))
            [doc] = db.find_validated(settings_key=key)
            converged = [e for e, c in energies if c]
            best = min(converged) if converged else energies[0][0]
            winner = next(i for i, (e, c) in enumerate(energies)
                          if e == best and (c or not converged))
            assert doc["energy_per_atom"] == best
            assert doc["dft"]["code_version"] == str(winner)  # the whole result is the winner's
            assert doc["found_in_runs"] == ["r0", "r1", "r2", "r3"]
            history = [int(r["dft"]["code_version"]) for r in doc.get("previous_results", [])]
            assert history == sorted(history) and winner not in history


def test_a_document_missing_a_required_field_is_one_line(store_config):
    doc = result_doc(rocksalt("Na", "Cl", 5.6), -3.0, "r1")
    del doc["dft"]["converged"]
    with ResultsDB(store_config) as db, pytest.raises(StoreError, match="dft.converged"):
        db.add_validated(doc)


def test_a_reference_replacement_keeps_the_whole_old_result(store_config):
    structure = rocksalt("Na", "Na", 4.2).as_dict()
    with ResultsDB(store_config) as db:
        db.add_reference({"element": "Na", "settings_key": "k", "energy_per_atom": -1.3,
                          "structure": structure, "trajectory": [{"step": 0}],
                          "run": {"id": "r1"}})
        db.add_reference({"element": "Na", "settings_key": "k", "energy_per_atom": -1.4,
                          "structure": structure, "run": {"id": "r2"}})
        ref = db.get_reference("Na", "k")
    assert ref["energy_per_atom"] == -1.4 and "trajectory" not in ref
    assert ref["previous_results"][0]["trajectory"] == [{"step": 0}]
    assert ref["previous_results"][0]["run"] == {"id": "r1"}


# -- locks ------------------------------------------------------------------------------


def test_a_live_mongodb_lease_blocks_and_an_expired_one_is_taken_over(mongo_config):
    from datetime import datetime, timedelta, timezone

    from xtalloop.store.locking import mongo_lease

    with open_results(mongo_config) as db:
        coll = db.store("locks")._collection
        with mongo_lease(coll, "g"), pytest.raises(StoreError, match="held by"), \
                mongo_lease(coll, "g", wait_s=0.3):
            pass
        assert coll.count_documents({"_id": "g"}) == 0  # released
        coll.insert_one({"_id": "g", "owner": "a dead worker",
                         "expires_at": datetime.now(timezone.utc) - timedelta(seconds=1)})
        with mongo_lease(coll, "g", wait_s=0.3):
            assert coll.find_one({"_id": "g"})["owner"] != "a dead worker"


# -- a store that fails loudly and never deletes a file -----------------------------------


def _stored(tmp_path) -> StoreConfig:
    config = StoreConfig(path=str(tmp_path / "store"))
    with ResultsDB(config) as db:
        db.add_validated(result_doc(rocksalt("Na", "Cl", 5.6), -3.0, "r1"))
        db.save_run({"id": "r1", "name": "t", "status": "completed"})
    return config


def _damage(path, how: str) -> None:
    if how == "zero-bytes":
        path.write_bytes(b"")
    elif how == "truncated":
        os.truncate(path, path.stat().st_size // 2 + 100)
    elif how == "overwritten":
        path.write_text("{'not': 'a database'}\n")
    else:  # a page in the middle overwritten
        with open(path, "r+b") as handle:
            handle.seek(4096)
            handle.write(b"\xff" * 4096)


def _cli(*args: str):
    from xtalloop.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("how", ["zero-bytes", "truncated", "overwritten", "damaged-page"])
def test_a_damaged_collection_is_one_line_naming_it_and_is_never_deleted(tmp_path, how):
    config = _stored(tmp_path)
    store = str(config.resolved_path)
    path = config.resolved_path / "xtalloop" / "validated.collection"
    _damage(path, how)
    damaged = path.read_bytes()
    for args in (["query", "--store", store], ["db", "stats", "--store", store],
                 ["export", str(tmp_path / "x.json"), "--format", "json", "--store", store],
                 ["db", "check", "--store", store]):
        out = _cli(*args)
        lines = out.output.strip().splitlines()
        assert out.exit_code == 2 and len(lines) == 1, (args, out.output)
        assert lines[0].startswith("error: ") and str(path) in lines[0]
        assert "xtalloop db repair" in lines[0]
        assert path.read_bytes() == damaged  # still there, untouched
    out = _cli("db", "repair", "--store", store)
    assert out.exit_code == 0, out.output
    [moved] = path.parent.glob("validated.collection.corrupt-*")
    assert moved.read_bytes() == damaged and str(moved) in out.output
    assert _cli("db", "check", "--store", store).exit_code == 0
    out = _cli("query", "--store", store)  # works again: that collection starts empty
    assert out.exit_code == 1 and "no validated structures match" in out.output
    with ResultsDB(config) as db:
        assert db.get_run("r1")["status"] == "completed"  # the other collections are intact


def test_a_run_checks_the_store_before_any_work(tmp_path, monkeypatch):
    from xtalloop.config import RunConfig
    from xtalloop.runner import execute

    config = _stored(tmp_path)
    _damage(config.resolved_path / "xtalloop" / "validated.collection", "truncated")
    run_config = RunConfig.model_validate({
        "name": "t", "compositions": ["Cu"], "store": config.model_dump(),
        "output_dir": str(tmp_path / "runs")})

    def no_work(*args, **kwargs):
        raise AssertionError("the run started working on a damaged store")

    monkeypatch.setattr("xtalloop.runner.run_flow", no_work)
    with pytest.raises(StoreError, match="validated.collection is truncated"):
        execute(run_config, progress=False)
    assert not list((tmp_path / "runs").glob("*/jobs"))


def test_reading_commands_do_not_create_a_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("name: t\ncompositions: [NaCl]\n")
    for args in (["query"], ["db", "stats"], ["status", "c.yaml"]):
        out = _cli(*args)
        assert out.exit_code == 2, (args, out.output)
        assert "no xtalloop store at" in out.output
        assert not (tmp_path / "xtalloop-data").exists(), args


def test_a_store_in_a_read_only_folder_can_be_queried(tmp_path):
    config = _stored(tmp_path)
    store = config.resolved_path
    query = [sys.executable, "-m", "xtalloop.cli", "query", "--store", str(store),
             "--format", "json"]
    if os.geteuid() != 0:
        for folder in (store, store / "xtalloop"):
            folder.chmod(0o555)
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=120)
        finally:
            for folder in (store, store / "xtalloop"):
                folder.chmod(0o755)
    else:  # root writes anywhere: make the folder a read-only mount
        probe = ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {store} {store}"]
        if not shutil.which("unshare") or subprocess.run(probe, capture_output=True).returncode:
            pytest.skip("running as root without mount namespaces: no read-only folder")
        script = f"mount --bind -o ro {store} {store} && exec {' '.join(query)}"
        out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"formula": "NaCl"' in out.stdout
    assert sorted(p.name for p in (store / "xtalloop").iterdir()) == [
        "runs.collection", "validated.collection"]  # nothing written beside them


def test_a_tableless_collection_file_is_healed_in_place_never_deleted(store_config):
    folder = store_config.resolved_path / "xtalloop"
    folder.mkdir(parents=True)
    path = folder / "validated.collection"
    conn = sqlite3.connect(path)  # what montydb leaves after deleting from nothing
    conn.executescript("PRAGMA journal_mode=WAL;")
    conn.close()
    with ResultsDB(store_config) as db:
        db.check()
        assert db.find_validated() == []
        db.add_validated(result_doc(rocksalt("Na", "Cl", 5.6), -3.0, "r1"))
    assert path.is_file()
    with ResultsDB(store_config) as db:
        assert len(db.find_validated()) == 1

"""The embedded results store: merge without loss, filters, reads from another process."""

import json
import subprocess
import sys

import pytest

from conftest import rocksalt
from xtalloop.store.results import ResultsDB


def validated_doc(structure, energy_per_atom, run_id="run-1", converged=True, key="gpaw-abc"):
    return {
        "formula": structure.composition.reduced_formula,
        "chemsys": "-".join(sorted(el.symbol for el in structure.composition.elements)),
        "structure": structure.as_dict(),
        "energy_per_atom": energy_per_atom,
        "space_group": "Fm-3m",
        "space_group_number": 225,
        "e_above_hull": None,
        "dft": {"settings_key": key, "converged": converged},
        "generator": {"generator": "random_symmetric", "seed": 1, "index": 0},
        "run": {"id": run_id},
    }


def test_same_structure_is_merged_not_duplicated(store_config):
    with ResultsDB(store_config) as db:
        uuid, outcome = db.add_validated(validated_doc(rocksalt("Na", "Cl", 5.6), -3.0))
        assert outcome == "new"
        strained = rocksalt("Na", "Cl", 5.7)  # same prototype, StructureMatcher fits it
        again, outcome = db.add_validated(validated_doc(strained, -2.9, run_id="run-2"))
        assert (again, outcome) == (uuid, "duplicate")
        docs = db.find_validated(formula="NaCl")
        assert len(docs) == 1
        assert docs[0]["energy_per_atom"] == -3.0  # the worse result did not overwrite
        assert docs[0]["found_in_runs"] == ["run-1", "run-2"]


def test_better_converged_result_replaces_and_keeps_the_old(store_config):
    with ResultsDB(store_config) as db:
        uuid, _ = db.add_validated(validated_doc(rocksalt("Na", "Cl", 5.6), -3.0))
        _, outcome = db.add_validated(
            validated_doc(rocksalt("Na", "Cl", 5.6), -3.2, run_id="r2", converged=False))
        assert outcome == "duplicate"  # unconverged never replaces
        _, outcome = db.add_validated(validated_doc(rocksalt("Na", "Cl", 5.6), -3.1, run_id="r3"))
        assert outcome == "improved"
        doc = db.find_validated(formula="NaCl")[0]
        assert doc["energy_per_atom"] == -3.1
        assert doc["previous_results"][0]["energy_per_atom"] == -3.0


def test_other_dft_settings_are_kept_apart(store_config):
    with ResultsDB(store_config) as db:
        db.add_validated(validated_doc(rocksalt("Na", "Cl", 5.6), -3.0, key="gpaw-a"))
        _, outcome = db.add_validated(validated_doc(rocksalt("Na", "Cl", 5.6), -5.0, key="vasp-b"))
        assert outcome == "new"
        assert len(db.find_validated(formula="NaCl")) == 2
        assert len(db.find_validated(formula="NaCl", settings_key="vasp-b")) == 1


def test_filters(store_config):
    with ResultsDB(store_config) as db:
        db.add_validated(validated_doc(rocksalt("Na", "Cl", 5.6), -3.0))
        db.add_validated(validated_doc(rocksalt("Mg", "O", 4.2), -6.0))
        uuids = {d["formula"]: d["uuid"] for d in db.find_validated()}
        db.set_e_above_hull({uuids["NaCl"]: 0.0, uuids["MgO"]: 0.3})
        assert [d["formula"] for d in db.find_validated(chemsys="Na-Cl")] == ["NaCl"]
        assert [d["formula"] for d in db.find_validated(chemsys="Cl-Na")] == ["NaCl"]
        assert [d["formula"] for d in db.find_validated(max_e_above_hull=0.1)] == ["NaCl"]
        assert db.find_validated(formula="Na2Cl2")[0]["formula"] == "NaCl"
        assert db.find_validated(chemsys="Na", within_chemsys=True) == []


def test_reference_is_only_replaced_by_a_lower_energy(store_config):
    with ResultsDB(store_config) as db:
        structure = rocksalt("Na", "Na", 4.2).as_dict()
        db.add_reference({"element": "Na", "settings_key": "k", "energy_per_atom": -1.3,
                          "structure": structure})
        db.add_reference({"element": "Na", "settings_key": "k", "energy_per_atom": -1.2,
                          "structure": structure})
        assert db.get_reference("Na", "k")["energy_per_atom"] == -1.3
        db.add_reference({"element": "Na", "settings_key": "k", "energy_per_atom": -1.4,
                          "structure": structure})
        assert db.get_reference("Na", "k")["energy_per_atom"] == -1.4
        assert db.get_reference("Na", "other") is None


def test_another_process_reads_what_was_written(store_config):
    with ResultsDB(store_config) as db:
        db.add_validated(validated_doc(rocksalt("Na", "Cl", 5.6), -3.0))
    code = (
        "import json, sys\n"
        "from xtalloop.config import StoreConfig\n"
        "from xtalloop.store.results import ResultsDB\n"
        f"db = ResultsDB(StoreConfig(path={str(store_config.resolved_path)!r}))\n"
        "print(json.dumps([d['formula'] for d in db.find_validated()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["NaCl"]


def test_unwritable_store_is_a_one_line_error(tmp_path):
    from xtalloop.config import StoreConfig
    from xtalloop.errors import StoreError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the embedded store"):
        ResultsDB(StoreConfig(path=str(blocker / "store"))).store("validated")


def test_dropping_a_checkpoint_that_was_never_saved_breaks_nothing(store_config):
    # a DFT relaxation that converges at its first step saves no checkpoint, then drops it
    with ResultsDB(store_config) as db:
        db.drop_checkpoint("job-1")
        assert db.get_checkpoint("job-1") is None
        db.save_checkpoint("job-2", {"x": 1}, 3)
        assert db.get_checkpoint("job-2")["step"] == 3


def test_an_empty_collection_file_left_by_montydb_is_repaired_in_place(store_config):
    import sqlite3

    folder = store_config.resolved_path / "xtalloop"
    folder.mkdir(parents=True)
    path = folder / "checkpoints.collection"
    # what montydb leaves when deleting from a collection that does not exist: a valid
    # SQLite file without a table
    conn = sqlite3.connect(path)
    conn.executescript("PRAGMA journal_mode=WAL;")
    conn.close()
    with ResultsDB(store_config) as db:
        assert db.get_checkpoint("job-1") is None
        db.save_checkpoint("job-1", {"x": 1}, 2)  # the same file, now with montydb's table
        assert db.get_checkpoint("job-1")["step"] == 2
    assert path.is_file()

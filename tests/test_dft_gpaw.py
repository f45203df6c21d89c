"""Real GPAW: a 2-atom silicon cell through the validate stage, read back from another process."""

import json
import subprocess
import sys

import pytest
from jobflow import run_locally
from pymatgen.core import Composition

from conftest import diamond, rocksalt
from xtalloop.dft.gpaw import GpawRelaxMaker, plane_wave_cutoff
from xtalloop.rankers.ml_ranker import RankedCandidate, ReferencePhase, Ranking
from xtalloop.store import job_store
from xtalloop.workflows import ValidateMaker

SILICON_EXPERIMENT = 5.431  # Å, room temperature


def test_cutoff_depends_on_the_elements():
    assert plane_wave_cutoff(["Mg", "O"]) == 600.0
    assert plane_wave_cutoff(["Fe", "Si"]) == 600.0
    assert plane_wave_cutoff(["Na", "Cl"]) == 500.0


def test_settings_follow_the_structure():
    maker = GpawRelaxMaker()
    bulk = maker.settings_for(rocksalt("Mg", "O", 4.2))
    assert bulk["ecut"] == 600.0 and bulk["kpts"]["density"] == 3.0 and bulk["relax_cell"]
    assert not bulk["spin_polarized"]
    from xtalloop.references import elemental_prototypes

    dimer = maker.settings_for(elemental_prototypes("O")[0])
    assert dimer["kpts"] == {"size": [1, 1, 1]} and not dimer["relax_cell"]
    assert dimer["spin_polarized"]  # triplet O2
    assert GpawRelaxMaker(ecut=700).settings_key() != maker.settings_key()


@pytest.mark.dft
def test_gpaw_relaxes_silicon_and_the_result_is_queryable(tmp_path, store_config, require_gpaw,
                                                          monkeypatch):
    start = diamond("Si", 5.60)  # 3 % too large: the relaxation must shrink it
    pick = RankedCandidate(
        structure=start, provenance={"generator": "hand-made", "seed": 0, "index": 0},
        energy_per_atom=-5.4, e_above_hull=0.0, space_group="Fd-3m", space_group_number=227)
    ranking = Ranking(
        formula="Si", picks=[pick],
        references=[ReferencePhase("Si", start, -5.4, molecular=False)],
        funnel={"generated": 1, "relaxed": 1, "unique": 1, "picked": 1},
        energy_model={"name": "test", "version": "0"},
    )
    maker = ValidateMaker(
        relax_maker=GpawRelaxMaker(progress=False),
        store=store_config.model_copy(update={"path": str(store_config.resolved_path)})
        .model_dump(),
        run={"id": "gpaw-test", "name": "gpaw-test"},
    )
    job = maker.make(ranking)
    monkeypatch.chdir(tmp_path)
    run_locally(job, store=job_store(store_config), create_folders=True, log=False,
                ensure_success=True)

    query = subprocess.run(
        [sys.executable, "-m", "xtalloop.cli", "query", "--formula", "Si", "--format", "json",
         "--store", str(store_config.resolved_path)],
        capture_output=True, text=True,
    )
    assert query.returncode == 0, query.stderr
    (doc,) = json.loads(query.stdout)
    from pymatgen.core import Structure

    relaxed = Structure.from_dict(doc["structure"])
    cubic_a = relaxed.volume ** (1 / 3) * 4 ** (1 / 3)  # 2-atom fcc cell holds 1/4 of the cube
    assert cubic_a == pytest.approx(SILICON_EXPERIMENT, rel=0.02)
    assert doc["space_group"] == "Fd-3m"
    assert doc["dft"]["code"] == "gpaw" and doc["dft"]["converged"]
    assert doc["dft"]["settings"]["ecut"] == 500.0
    assert doc["e_above_hull"] == pytest.approx(0.0)
    assert len(doc["forces"]) == 2 and len(doc["stress_kbar"]) == 3
    assert max(abs(f) for row in doc["forces"] for f in row) < 0.05
    assert doc["generator"]["generator"] == "hand-made"
    assert Composition(doc["formula"]) == Composition("Si")

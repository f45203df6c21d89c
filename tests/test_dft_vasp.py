"""The VASP backend: atomate2's MP double relax + static, with a fake VASP.

VASP cannot run here. The ``fake_vasp`` fixture replaces atomate2's
``run_vasp`` with :func:`fake_vasp.write_fake_vasp_outputs`, which writes
vasprun.xml, OUTCAR, CONTCAR and OSZICAR in VASP's formats from a toy energy
table, and makes the input sets write ``POTCAR.spec`` (no POTCARs here).
Everything else is real: atomate2 writes the inputs, custodian is skipped
(as ``run_vasp`` is), emmet parses the outputs into TaskDocs, pymatgen's
MP2020 scheme corrects the energies and xtalloop stores them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from jobflow import CURRENT_JOB, Flow, run_locally
from pymatgen.core import Lattice, Molecule, Structure
from pymatgen.io.vasp import Incar, Kpoints

from conftest import rocksalt
from fake_vasp import write_fake_vasp_outputs
from xtalloop.config import DFTConfig, RunConfig
from xtalloop.dft.factory import dft_maker
from xtalloop.dft.gpaw import GpawRelaxMaker
from xtalloop.dft.vasp import VaspValidationMaker
from xtalloop.rankers.ml_ranker import RankedCandidate, Ranking, ReferencePhase
from xtalloop.store import job_store
from xtalloop.store.results import open_results
from xtalloop.workflows import ValidateMaker
from xtalloop.workflows.outputs import CompositionValidation

#: Toy "VASP" energies: elemental eV/atom, plus a formation energy per atom for compounds.
MU = {"Na": -1.31, "Cl": -1.85, "Cu": -4.10, "Au": -3.27}
FORMATION = {"NaCl": -1.55, "CuAu": -0.08}
CRASH_FLAG = "XTALLOOP_TEST_VASP_CRASH"


def toy_energy_per_atom(structure: Structure) -> float:
    comp = structure.composition.fractional_composition
    mu = sum(MU[el.symbol] * x for el, x in comp.items())
    return mu + FORMATION.get(structure.composition.reduced_formula, 0.0)


@pytest.fixture
def fake_vasp(monkeypatch):
    """atomate2's VASP jobs run the fake VASP; returns the inputs each job wrote."""
    import atomate2.vasp.jobs.base
    from pymatgen.io.vasp.sets import VaspInputSet

    get_input_set = VaspInputSet.get_input_set

    def without_potcars(self, *args, **kwargs):
        return get_input_set(self, *args, **{**kwargs, "potcar_spec": True})

    inputs: dict[str, dict] = {}

    def run_vasp(*args, **kwargs):
        name = CURRENT_JOB.job.name
        here = Path.cwd()
        potcars = (here / "POTCAR.spec").read_text().split()
        if name.endswith(f"({os.environ.get(CRASH_FLAG, '-')})"):
            raise RuntimeError("VASP crashed: BRIONS problems: POTIM should be increased")
        inputs[name] = {
            "incar": Incar.from_file(here / "INCAR"),
            "kpoints": Kpoints.from_file(here / "KPOINTS") if (here / "KPOINTS").exists()
            else None,
            "potcars": potcars,
            "poscar_formula": Structure.from_file(here / "POSCAR").composition.reduced_formula,
            "run_vasp_kwargs": kwargs,
        }
        write_fake_vasp_outputs(here, toy_energy_per_atom)

    monkeypatch.setattr(atomate2.vasp.jobs.base, "run_vasp", run_vasp)
    monkeypatch.setattr(VaspInputSet, "get_input_set", without_potcars)
    return inputs


def sodium() -> Structure:
    a = 4.23
    return Structure(Lattice.cubic(a), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def chlorine() -> Structure:
    molecule = Molecule(["Cl", "Cl"], [[0, 0, 0], [0, 0, 1.99]])
    return molecule.get_boxed_structure(10, 10, 10)


def candidate(structure: Structure, rank: int) -> RankedCandidate:
    return RankedCandidate(structure=structure, provenance={"generator": "test", "seed": 0},
                           energy_per_atom=-3.0, e_above_hull=0.0, space_group="Fm-3m",
                           space_group_number=225, rank=rank)


def nacl_ranking(picks: list[Structure]) -> Ranking:
    return Ranking(
        formula="NaCl", picks=[candidate(s, i) for i, s in enumerate(picks)],
        references=[ReferencePhase("Na", sodium(), -1.2, False),
                    ReferencePhase("Cl", chlorine(), -1.8, True)],
        funnel={"generated": len(picks)}, energy_model={"name": "test"},
    )


def test_config_selects_the_mp_double_relax_and_static():
    maker = dft_maker(DFTConfig(code="vasp", vasp={"incar_updates": {"NCORE": 4, "ENCUT": 600},
                                                   "vasp_cmd": "srun vasp_std"}))
    assert isinstance(maker, VaspValidationMaker)
    flow = maker.make(rocksalt("Na", "Cl", 5.6))
    assert isinstance(flow, Flow)
    steps = [(job.name, type(job.maker).__name__, job.maker) for job, _ in flow.iterflow()]
    assert [(n, c) for n, c, _ in steps] == [("MP GGA relax 1", "MPGGARelaxMaker"),
                                             ("MP GGA relax 2", "MPGGARelaxMaker"),
                                             ("MP GGA static", "MPGGAStaticMaker")]
    for _, _, step in steps:
        assert step.input_set_generator.user_incar_settings == {"NCORE": 4, "ENCUT": 600}
        assert step.run_vasp_kwargs["vasp_cmd"] == "srun vasp_std"

    gpaw_key = GpawRelaxMaker().settings_key()
    base = VaspValidationMaker().settings_key()
    assert base.startswith("vasp-") and gpaw_key.startswith("gpaw-")
    assert VaspValidationMaker(incar_updates={"NCORE": 8}).settings_key() == base
    assert VaspValidationMaker(incar_updates={"ENCUT": 600}).settings_key() != base
    assert VaspValidationMaker(compatibility="none").settings_key() != base
    assert VaspValidationMaker(static=False).make(sodium()).jobs[-1].name == "MP GGA double relax"


def test_bad_vasp_config_is_rejected_naming_the_key():
    for bad, word in (({"code": "vasp", "vasp": {"incar_updates": {"ncore": 4}}}, "upper case"),
                      ({"code": "vasp", "vasp": {"compatibility": "MP2014"}}, "compatibility"),
                      ({"code": "quantum-espresso"}, "code")):
        with pytest.raises(ValidationError) as err:
            RunConfig.model_validate({"compositions": ["NaCl"], "dft": bad})
        assert word in str(err.value)


def test_fake_vasp_validation_checks_inputs_parses_outputs_and_stores(
        tmp_path, store_config, fake_vasp):
    maker = VaspValidationMaker(incar_updates={"NCORE": 4})
    validate = ValidateMaker(relax_maker=maker, store=store_config.model_dump(),
                             run={"id": "vasp-test", "name": "vasp-test"})
    job = validate.make(nacl_ranking([rocksalt("Na", "Cl", 5.69)]))
    responses = run_locally(job, store=job_store(store_config), root_dir=tmp_path, create_folders=True,
                            log=False, ensure_success=True)
    summary = [r for r in responses.values() if isinstance(r[1].output, CompositionValidation)
               and r[1].output.formula == "NaCl"][-1][1].output.model_dump()

    # inputs: MP relax sets twice, then MP static; the same POTCARs and user tags throughout
    assert set(fake_vasp) == {f"MP GGA {step} ({label})"
                              for step in ("relax 1", "relax 2", "static")
                              for label in ("NaCl pick 1", "Na reference", "Cl reference")}
    relax = fake_vasp["MP GGA relax 1 (NaCl pick 1)"]["incar"]
    assert relax["ENCUT"] == 520 and relax["ISIF"] == 3 and relax["IBRION"] == 2
    assert relax["NSW"] == 99 and relax["ISPIN"] == 2 and not relax.get("LDAU", False)
    assert relax["NCORE"] == 4
    static = fake_vasp["MP GGA static (NaCl pick 1)"]["incar"]
    assert static.get("NSW", 0) == 0 and static["ENCUT"] == 520 and static["NCORE"] == 4
    assert fake_vasp["MP GGA relax 1 (NaCl pick 1)"]["potcars"] == ["Na_pv", "Cl"]
    assert fake_vasp["MP GGA static (Cl reference)"]["poscar_formula"] == "Cl2"
    assert fake_vasp["MP GGA relax 1 (NaCl pick 1)"]["kpoints"].style.name == "Gamma"

    # outputs: the static's energy, MP2020-corrected (Cl anion), in the store and the hull
    assert summary["failed"] == []
    (validated,) = summary["validated"]
    with open_results(store_config) as db:
        (doc,) = db.find_validated(formula="NaCl")
        refs = {el: db.get_reference(el, maker.settings_key()) for el in ("Na", "Cl")}
    raw = toy_energy_per_atom(rocksalt("Na", "Cl", 5.69))
    assert doc["dft"]["code"] == "vasp" and doc["dft"]["settings_key"] == maker.settings_key()
    assert doc["dft"]["energy_uncorrected"] == pytest.approx(2 * raw, abs=1e-6)
    correction = doc["dft"]["energy_corrections"]
    assert sum(correction.values()) == pytest.approx(-0.614, abs=0.01)
    assert doc["energy_per_atom"] == pytest.approx(raw - 0.614 / 2, abs=0.01)
    assert doc["dft"]["settings"]["compatibility"] == "MP2020"
    assert refs["Na"]["energy_per_atom"] == pytest.approx(MU["Na"], abs=1e-6)
    assert refs["Cl"]["energy_per_atom"] == pytest.approx(MU["Cl"], abs=1e-6)
    assert refs["Na"]["dft_code"] == "vasp"
    assert validated["e_above_hull"] == pytest.approx(0.0, abs=1e-9)
    assert doc["dft"]["n_ionic_steps"] == 1 and doc["n_frames"] == 1
    assert len(doc["forces"]) == 2 and len(doc["stress_kbar"]) == 3


def test_a_crashed_vasp_pick_is_recorded_and_its_sibling_validated(
        tmp_path, store_config, fake_vasp, monkeypatch):
    monkeypatch.setenv(CRASH_FLAG, "NaCl pick 2")
    validate = ValidateMaker(relax_maker=VaspValidationMaker(), store=store_config.model_dump(),
                             run={"id": "crash", "name": "crash"})
    stretched = rocksalt("Na", "Cl", 6.2)
    job = validate.make(nacl_ranking([rocksalt("Na", "Cl", 5.69), stretched]))
    responses = run_locally(job, store=job_store(store_config), root_dir=tmp_path, log=False,
                            create_folders=True)
    outputs = [r[1].output for r in responses.values() if r[1] is not None
               and isinstance(r[1].output, CompositionValidation)
               and r[1].output.formula == "NaCl"]
    summary = outputs[-1].model_dump()
    assert len(summary["validated"]) == 1
    (failure,) = summary["failed"]
    assert failure["rank"] == 1 and "did not finish" in failure["reason"]


def test_vasp_runs_end_to_end_from_a_config(tmp_path, fake_vasp):
    from xtalloop.runner import execute

    config = RunConfig.model_validate({
        "name": "vasp-run", "compositions": ["CuAu"],
        "generate": {"seed": 3, "max_atoms": 4, "sources": [{"n": 4}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 100},
        "dft": {"code": "vasp", "vasp": {"compatibility": "none"}},
        "store": {"path": str(tmp_path / "store")}, "output_dir": str(tmp_path / "runs"),
    })
    result = execute(config, progress=False)
    (composition,) = result.compositions
    assert composition["failed"] == [] and len(composition["validated"]) == 1
    with open_results(config.store) as db:
        (doc,) = db.find_validated(formula="CuAu")
    assert doc["dft"]["code"] == "vasp"
    expected = toy_energy_per_atom(Structure.from_dict(doc["structure"]))
    assert doc["energy_per_atom"] == pytest.approx(expected, abs=1e-6)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["compositions"][0]["validated"][0]["formula"] == "CuAu"

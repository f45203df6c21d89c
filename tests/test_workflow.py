"""The whole loop as jobflow graphs, with EMT standing in for the ML model and for DFT."""

import json
import subprocess
import sys

import pytest
from jobflow import Flow, Job
from pymatgen.core import Structure

from conftest import EmtRelaxAsDftMaker
from xtalloop.config import RunConfig
from xtalloop.runner import execute
from xtalloop.store.files import FileStore, trajectory_of
from xtalloop.store.results import ResultsDB
from xtalloop.workflows import CSPFlowMaker, GenerateMaker, PrefilterMaker, ValidateMaker


def emt_config(tmp_path, compositions=("CuAu", "Cu")) -> RunConfig:
    return RunConfig.model_validate({
        "name": "emt-test",
        "compositions": list(compositions),
        "generate": {"seed": 7, "max_atoms": 4, "sources": [{"n": 6}]},
        "prefilter": {"model": "emt", "top_k": 2, "steps": 200},
        "store": {"path": str(tmp_path / "store")},
        "output_dir": str(tmp_path / "runs"),
    })


def test_makers_compose_into_a_flow():
    flow = CSPFlowMaker().make("NaCl", seed=3)
    assert isinstance(flow, Flow)
    assert [j.name for j in flow.jobs] == ["NaCl generate", "NaCl prefilter", "NaCl validate"]
    assert all(isinstance(j, Job) for j in flow.jobs)
    assert isinstance(GenerateMaker().make("NaCl"), Job)
    assert PrefilterMaker().name == "prefilter" and ValidateMaker().name == "validate"


def test_run_stores_results_and_writes_the_run_folder(tmp_path, emt_dft_maker):
    config = emt_config(tmp_path)
    result = execute(config, progress=False, relax_maker=emt_dft_maker)

    assert result.failed_jobs == []
    formulas = {c["formula"] for c in result.compositions}
    assert formulas == {"CuAu", "Cu"}
    for comp in result.compositions:
        funnel = comp["funnel"]
        assert funnel["generated"] == 6
        assert 1 <= funnel["dft_validated"] <= 2
        assert comp["references"]  # elemental references for the hull
    rows = result.validated
    assert rows and all(r["e_above_hull"] is not None and r["e_above_hull"] >= 0 for r in rows)
    # the best Cu found by random search sits on or just above the reference fcc/hcp Cu
    assert min(r["e_above_hull"] for r in rows if r["formula"] == "Cu") < 0.05

    assert (result.run_dir / "funnel.png").stat().st_size > 10_000
    cifs = sorted((result.run_dir / "cifs").glob("*.cif"))
    assert len(cifs) == len(rows)
    assert Structure.from_file(cifs[0]).composition.reduced_formula in formulas
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["run_id"] == result.run_id

    with ResultsDB(config.store) as db:
        docs = db.find_validated(formula="CuAu")
        assert docs
        doc = docs[0]
        assert doc["generator"]["generator"] == "random_symmetric"
        assert doc["generator"]["seed"] is not None
        assert doc["prefilter"]["energy_model"]["name"]
        assert doc["dft"]["settings"]["ecut"] > 0 and doc["dft"]["settings_key"]
        # the steps are in the store's files, the document keeps their reference
        assert "trajectory" not in doc and doc["n_frames"] >= 1
        with FileStore(config.store) as files:
            steps = trajectory_of(doc, files)
        assert len(steps) == doc["n_frames"] and "energy" in steps[-1]
        assert doc["run"]["id"] == result.run_id
        assert db.get_run(result.run_id)["status"] == "completed"

    # the report of a plain run: one round, its hull, its CIFs
    from xtalloop.report import write_report

    text = write_report(config.store, result.run_id, tmp_path / "report").read_text()
    assert f"Run {result.run_id}" in text and "(hull_Au-Cu.png)" in text
    n_calls = sum(len(c["validated"]) + len(c["failed"]) for c in summary["compositions"])
    assert f"{n_calls} DFT relaxations of picks" in text
    assert len(list((tmp_path / "report" / "cifs").glob("*.cif"))) == len(formulas)


def test_rerun_does_not_duplicate_validated_structures(tmp_path, emt_dft_maker):
    config = emt_config(tmp_path, compositions=("Cu",))
    execute(config, progress=False, run_id="first", relax_maker=emt_dft_maker)
    with ResultsDB(config.store) as db:
        before = {d["uuid"]: d["energy_per_atom"] for d in db.find_validated()}
    execute(config, progress=False, run_id="second", relax_maker=emt_dft_maker)
    with ResultsDB(config.store) as db:
        after = db.find_validated()
    assert {d["uuid"] for d in after} == set(before)
    for doc in after:
        assert doc["energy_per_atom"] <= before[doc["uuid"]] + 1e-9
        assert doc["found_in_runs"] == ["first", "second"]


class Exploding(EmtRelaxAsDftMaker):
    """EMT "DFT" whose CuAu calculation raises (importable: jobs carry their maker)."""

    def calculator_for(self, structure, remedy=None):
        if structure.composition.reduced_formula == "CuAu":
            raise RuntimeError("SCF did not converge")
        return super().calculator_for(structure, remedy)


def test_failed_dft_job_does_not_stop_the_composition(tmp_path, emt_dft_maker):
    config = emt_config(tmp_path)
    result = execute(config, progress=False, relax_maker=Exploding(steps=50))
    by_formula = {c["formula"]: c for c in result.compositions}
    assert by_formula["CuAu"]["validated"] == []
    assert by_formula["CuAu"]["failed"], (by_formula["CuAu"], result.failed_jobs)
    assert by_formula["Cu"]["validated"]
    assert any("SCF did not converge" in message for message in result.failed_jobs)


def test_query_from_a_fresh_process(tmp_path, emt_dft_maker):
    config = emt_config(tmp_path, compositions=("Cu",))
    execute(config, progress=False, relax_maker=emt_dft_maker)
    store = str(config.store.resolved_path)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "xtalloop.cli", *args, "--store", store],
                              capture_output=True, text=True)

    out = cli("query", "--formula", "Cu", "--format", "json")
    assert out.returncode == 0, out.stderr
    docs = json.loads(out.stdout)
    assert docs and all(d["formula"] == "Cu" for d in docs)
    assert "trajectory" not in docs[0]

    table = cli("query", "--chemsys", "Cu")
    assert table.returncode == 0 and "Cu" in table.stdout and "random_symmetric" in table.stdout

    cif = cli("query", "--formula", "Cu", "--format", "cif")
    assert cif.returncode == 0 and "_cell_length_a" in cif.stdout

    none = cli("query", "--formula", "Au")
    assert none.returncode == 1 and "no validated structures match" in none.stderr

"""``dft.code: mlip``: an ML potential as the validator, its results apart from DFT's.

EMT is both the prefilter and the validator here (the physics does not
matter, the wiring does): the validate stage, the store and the hulls run
as with DFT, the results carry the validator's settings key.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from xtalloop.config import DFTConfig, RunConfig
from xtalloop.dft.factory import check_dft_runs_here, dft_maker
from xtalloop.dft.gpaw import GpawRelaxMaker
from xtalloop.dft.mlip import MlipRelaxMaker
from xtalloop.dft.result import DftMaker
from xtalloop.errors import XtalloopError
from xtalloop.runner import execute
from xtalloop.store.results import ResultsDB


def mlip_config(tmp_path, mlip: dict, compositions=("CuAu",)) -> RunConfig:
    return RunConfig.model_validate({
        "name": "mlip-test",
        "compositions": list(compositions),
        "generate": {"seed": 7, "max_atoms": 4, "sources": [{"n": 4}]},
        "prefilter": {"model": "emt", "top_k": 2, "steps": 200},
        "dft": {"code": "mlip", "mlip": mlip},
        "store": {"path": str(tmp_path / "store")},
        "output_dir": str(tmp_path / "runs"),
    })


def test_config_builds_the_mlip_maker_with_its_own_key():
    maker = dft_maker(DFTConfig(code="mlip", mlip={"model": "emt", "fmax": 0.02, "steps": 50}))
    assert isinstance(maker, MlipRelaxMaker) and isinstance(maker, DftMaker)
    assert maker.code == "mlip" and maker.steps == 50 and maker.relax_kwargs == {"fmax": 0.02}
    key = maker.settings_key()
    assert key.startswith("mlip-emt-") and key != GpawRelaxMaker().settings_key()
    # relaxation settings and device do not change energies: same key
    assert MlipRelaxMaker(model="emt", steps=10, relax_kwargs={"fmax": 0.1}).settings_key() == key
    # a dumped config validates again (a loop's rounds do so)
    config = RunConfig.model_validate({"compositions": ["CuAu"],
                                       "dft": {"code": "mlip", "mlip": {"model": "emt"}}})
    assert RunConfig.model_validate(config.redacted_dump()).dft == config.dft


def test_run_validates_with_the_ml_potential_and_keeps_its_hull_apart(tmp_path,
                                                                     one_torch_thread):
    config = mlip_config(tmp_path, {"model": "emt", "steps": 200})
    result = execute(config, progress=False, run_id="emt-validated")
    assert result.failed_jobs == []
    (comp,) = result.compositions
    assert comp["references"].keys() == {"Au", "Cu"}  # computed by the validator
    emt_key = MlipRelaxMaker(model="emt").settings_key()
    with ResultsDB(config.store) as db:
        docs = db.find_validated(formula="CuAu")
        assert docs and all(d["dft"]["code"] == "mlip" for d in docs)
        assert {d["dft"]["settings_key"] for d in docs} == {emt_key}
        assert all(d["e_above_hull"] is not None for d in docs)
        doc = docs[0]
        assert doc["dft"]["settings"]["model"] == "emt"
        assert doc["dft"]["code_version"].startswith("ase ")
        assert doc["n_frames"] >= 1 and doc["dft"]["n_ionic_steps"] >= 1
        for element in ("Au", "Cu"):
            ref = db.get_reference(element, emt_key)
            assert ref["dft_code"] == "mlip"
            assert db.get_reference(element, GpawRelaxMaker().settings_key()) is None

    # another validator model: another key, results that do not merge with the first
    other = MlipRelaxMaker(model="chgnet")
    other_key = other.settings_key()
    assert other_key.startswith("mlip-chgnet-") and other_key != emt_key
    config = mlip_config(tmp_path, {"model": "chgnet", "steps": 60}, compositions=("Cu",))
    execute(config, progress=False, run_id="chgnet-validated")
    with ResultsDB(config.store) as db:
        cu = db.find_validated(formula="Cu")
        assert {d["dft"]["settings_key"] for d in cu} == {other_key}
        assert db.find_validated(formula="CuAu", settings_key=other_key) == []
        assert len(db.find_validated(formula="CuAu", settings_key=emt_key)) == len(docs)
        assert db.get_reference("Cu", other_key)["energy_per_atom"] != pytest.approx(
            db.get_reference("Cu", emt_key)["energy_per_atom"], abs=0.1)


def test_a_prior_pick_is_validated_and_stored_as_one(tmp_path, one_torch_thread):
    """With ``prior_picks: 1`` the generator's favourite is validated beside the energy
    pick: EMT puts a random Ni3Al cell below the first AFLOW prototype substitution
    (D0_3, Fm-3m), and both go to the validator, each stored with its reason."""
    config = RunConfig.model_validate({
        "name": "prior", "compositions": ["Ni3Al"], "charge_balance": "off",
        "generate": {"seed": 0, "max_atoms": 8, "sources": [
            {"kind": "random_symmetric", "n": 6},
            {"kind": "prototype_substitution", "n": 6, "reference_csv": "aflow"}]},
        "prefilter": {"model": "emt", "top_k": 2, "prior_picks": 1, "steps": 100},
        "dft": {"code": "mlip", "mlip": {"model": "emt", "steps": 100}},
        "store": {"path": str(tmp_path / "store")},
        "output_dir": str(tmp_path / "runs"),
    })
    result = execute(config, progress=False, run_id="prior")
    assert result.failed_jobs == []
    with ResultsDB(config.store) as db:
        docs = db.find_validated(formula="AlNi3")
    by = {d["prefilter"]["picked_by"]: d for d in docs}
    assert set(by) == {"prior", "energy"}
    prior = by["prior"]
    assert prior["generator"]["generator"] == "prototype_substitution"
    assert prior["generator"]["prior_rank"] == 0
    # picked although the prefilter put it above the energy pick
    assert prior["prefilter"]["energy_per_atom"] > by["energy"]["prefilter"]["energy_per_atom"]


@pytest.mark.parametrize("dft, where", [
    ({"code": "mlip", "mlip": {"model": "nonsense"}}, "dft.mlip.model: unknown model"),
    ({"code": "mlip", "mlip": {"model": "registry"}}, "dft.mlip.model: unknown model"),
    ({"code": "mlip", "vasp": {"static": False}}, "dft.vasp: not used with code: mlip"),
    ({"code": "mlip", "xc": "LDA"}, "dft.xc: a GPAW setting"),
    ({"code": "mlip", "fmax": 0.01}, "use dft.mlip.fmax"),
    ({"code": "gpaw", "mlip": {"model": "emt"}}, "dft.mlip: only used with code: mlip"),
    ({"code": "mlip", "mlip": {"device": "gpu"}}, "dft.mlip.device"),
])
def test_bad_mlip_config_is_one_line_naming_the_key(dft, where):
    from xtalloop.config import config_error_message

    with pytest.raises(ValidationError) as err:
        RunConfig.model_validate({"compositions": ["CuAu"], "dft": dft})
    message = config_error_message(err.value)
    assert where in message and "\n" not in message, message


def test_a_model_without_an_element_is_refused_before_any_job():
    dft = DFTConfig(code="mlip", mlip={"model": "emt"})
    check_dft_runs_here(dft, ["Au", "Cu"])
    with pytest.raises(XtalloopError) as err:
        check_dft_runs_here(dft, ["Cu", "Na"])
    assert str(err.value) == ("dft.mlip.model emt: cannot evaluate Na "
                              "(No EMT-potential for Na)")


def test_a_molecule_in_a_box_keeps_its_cell_and_the_result_has_gpaws_shape(tmp_path):
    from jobflow import run_locally
    from pymatgen.core import Molecule

    maker = MlipRelaxMaker(model="emt", steps=50)
    box = Molecule(["N", "N"], [[0, 0, 0], [0, 0, 1.2]]).get_boxed_structure(8, 8, 8)
    assert maker.settings_for(box)["relax_cell"] is False
    job = maker.make(box)
    responses = run_locally(job, root_dir=tmp_path, create_folders=True, log=False,
                            ensure_success=True)
    result = maker.parse_output(responses[job.uuid][1].output)
    assert set(result) == {"structure", "energy", "energy_per_atom", "forces", "stress_kbar",
                           "converged", "scf_remedies", "n_ionic_steps", "elapsed_time",
                           "dir_name", "code_version", "trajectory"}
    assert result["structure"].lattice.abc == pytest.approx((8, 8, 8))
    assert result["converged"] and result["scf_remedies"] == []
    assert result["energy_per_atom"] == pytest.approx(result["energy"] / 2)
    steps = result["trajectory"]
    assert len(steps) >= 2 and set(steps[-1]) == {"structure", "energy", "forces", "stress"}
    assert steps[-1]["energy"] == pytest.approx(result["energy"])
    # the job document keeps one energy per step; structures live once, in the trajectory
    ionic = responses[job.uuid][1].output.output.ionic_steps
    assert len(ionic) == len(steps) and ionic[-1].energy == pytest.approx(result["energy"])
    assert all(s.mol_or_struct is None and s.forces is None for s in ionic)
    assert maker.parse_output(None) is None

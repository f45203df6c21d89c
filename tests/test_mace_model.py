"""Batched MACE inference agrees with mace's own ASE calculator, one structure at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from threadpoolctl import threadpool_limits

import xtalloop.models.mace_model as mace_model
from xtalloop.errors import XtalloopError
from xtalloop.models.energy_model import load_energy_model
from xtalloop.models.mace_model import MaceModel
from xtalloop.rankers.batch_relax import BatchRelaxer

ELEMENTS = [8, 11, 12, 17]  # O, Na, Mg, Cl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_mace(seed: int):
    """A randomly initialised two-layer MACE over O, Na, Mg and Cl (float64)."""
    import mace  # noqa: F401  (before e3nn: sets torch's weights-only default)
    import torch
    from e3nn import o3
    from mace import modules
    from mace.tools import torch_tools

    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    torch.manual_seed(seed)
    with torch_tools.default_dtype("float64"):
        model = modules.ScaleShiftMACE(
            r_max=4.0,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=2,
            num_elements=len(ELEMENTS),
            hidden_irreps=o3.Irreps("8x0e"),
            MLP_irreps=o3.Irreps("8x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=np.array([-4.0, -1.0, -2.0, -3.0]),
            avg_num_neighbors=8.0,
            atomic_numbers=ELEMENTS,
            correlation=2,
            # Random weights at scale 1 give forces of ~0.01 eV/Å, below any
            # useful fmax; scale 10 makes the relaxations take tens of steps.
            atomic_inter_scale=10.0,
            atomic_inter_shift=0.0,
        )
    return model.double()


def perturbed(model, seed: int):
    """A copy of ``model`` with noise on every weight: an ensemble member in a
    fraction of the time that building another model takes."""
    import copy

    import torch

    member = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in member.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return member


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """One model file, and a directory holding a three-member ensemble.

    ``single`` and ``ensemble`` are in xtalloop's native format (what it
    loads); ``pickle`` and ``pickle_ensemble`` are the same models as
    ``.model`` pickles, mace's format, which only mace's own reference
    calculator reads here (xtalloop refuses them).
    """
    import torch

    from xtalloop.models.mace_format import save_native

    root = tmp_path_factory.mktemp("mace")
    pickled = root / "tiny.model"
    model = tiny_mace(0)
    torch.save(model, pickled)
    pickle_ensemble = root / "pickle_ensemble"
    pickle_ensemble.mkdir()
    ensemble = root / "ensemble"
    for seed in (1, 2, 3):
        member = perturbed(model, seed)
        torch.save(member, pickle_ensemble / f"member{seed}.model")
        save_native(member, ensemble / f"member{seed}.mace.json")
    single = save_native(model, root / "tiny.mace.json")
    return {"single": single, "ensemble": ensemble, "pickle": pickled,
            "pickle_ensemble": pickle_ensemble}


def mace_calculator(path: Path):
    """mace's own ASE calculator: the reference, one structure per call."""
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")


def structures() -> list[Atoms]:
    """Six NaCl/MgO-like cells of 2 to 8 atoms: rattled, strained, mixed."""
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    mgo_strained = bulk("MgO", "rocksalt", a=4.21)
    mgo_strained.set_cell(mgo_strained.cell[:] @ np.diag([1.04, 0.98, 1.0]), scale_atoms=True)
    nacl_rattled = bulk("NaCl", "rocksalt", a=5.5, cubic=True)
    nacl_rattled.rattle(0.1, seed=1)
    mgo_cubic = bulk("MgO", "rocksalt", a=4.3, cubic=True)
    mgo_cubic.set_cell(mgo_cubic.cell[:] @ [[1, 0.05, 0], [0, 0.97, 0], [0, 0, 1.02]],
                       scale_atoms=True)
    mgo_cubic.rattle(0.08, seed=2)
    nacl_pair = bulk("NaCl", "rocksalt", a=5.6).repeat((2, 1, 1))
    nacl_pair.rattle(0.1, seed=3)
    mixed = bulk("NaCl", "rocksalt", a=5.2, cubic=True)
    mixed.symbols[[0, 1]] = ["Mg", "O"]
    mixed.rattle(0.1, seed=4)
    return [nacl, mgo_strained, nacl_rattled, mgo_cubic, nacl_pair, mixed]


def reference(atoms: Atoms, calculator) -> tuple[float, np.ndarray, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def assert_matches_calculator(predictions, cells, calculator) -> None:
    assert len(predictions) == len(cells)
    for pred, atoms in zip(predictions, cells, strict=True):
        energy, forces, stress = reference(atoms, calculator)
        assert pred.energy == pytest.approx(energy, abs=1e-6)
        assert pred.forces.shape == (len(atoms), 3)
        assert np.allclose(pred.forces, forces, atol=1e-6, rtol=0)
        assert pred.stress.shape == (6,)
        assert np.allclose(pred.stress, stress, atol=1e-6, rtol=0)


def test_one_batch_matches_mace_calculator_one_at_a_time(model_files):
    model = MaceModel([model_files["single"]])
    cells = structures()
    predictions = model.predict(cells)
    assert_matches_calculator(predictions, cells, mace_calculator(model_files["pickle"]))
    assert all(p.energy_std is None for p in predictions)
    assert model.name == "mace"
    assert model.version.startswith("tiny.mace.json sha256:")
    assert model.predict([]) == []


def test_small_batches_give_the_same_results(model_files, monkeypatch):
    passes = []
    evaluate = mace_model._evaluate

    def counting(model, batch):
        passes.append(int(batch["ptr"].numel()) - 1)
        return evaluate(model, batch)

    monkeypatch.setattr(mace_model, "_evaluate", counting)
    cells = structures()
    whole = MaceModel([model_files["single"]]).predict(cells)
    passes.clear()
    chunked = MaceModel([model_files["single"]], max_atoms_per_batch=9).predict(cells)
    assert len(passes) > 2 and sum(passes) == len(cells)
    for a, b in zip(whole, chunked, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        assert np.allclose(a.forces, b.forces, atol=1e-9, rtol=0)
        assert np.allclose(a.stress, b.stress, atol=1e-9, rtol=0)


def test_ensemble_directory_averages_members_and_reports_spread(model_files):
    members = sorted(model_files["ensemble"].glob("*.mace.json"))
    model = load_energy_model(str(model_files["ensemble"]))
    assert isinstance(model, MaceModel)
    assert model.name == "mace-ensemble"
    assert all(m.name in model.version for m in members)
    cells = structures()
    predictions = model.predict(cells)
    calculators = [mace_calculator(m) for m in sorted(
        model_files["pickle_ensemble"].glob("*.model"))]
    for pred, atoms in zip(predictions, cells, strict=True):
        energies = [reference(atoms, calculator)[0] for calculator in calculators]
        assert pred.energy == pytest.approx(np.mean(energies), abs=1e-6)
        assert pred.energy_std == pytest.approx(np.std(energies), abs=1e-6)
        assert pred.energy_std > 0
    committee = mace_calculator(model_files["pickle_ensemble"] / "*.model")  # mace globs it
    assert_matches_calculator(predictions, cells, committee)


def test_batched_relaxation_matches_ase_fire_with_mace_calculator(model_files):
    cells = [structures()[i] for i in (2, 4, 5)]  # rattled, 4 to 8 atoms
    batched = BatchRelaxer(
        MaceModel([model_files["single"]]), fmax=0.05, steps=100, progress=False
    ).relax(cells)
    calculator = mace_calculator(model_files["pickle"])
    for atoms, result in zip(cells, batched, strict=True):
        alone = atoms.copy()
        alone.calc = calculator
        with threadpool_limits(limits=1, user_api="blas"):  # as BatchRelaxer: much faster
            converged = FIRE(FrechetCellFilter(alone), logfile=None).run(fmax=0.05, steps=100)
        assert result.n_steps > 5
        assert result.converged == converged
        per_atom = (result.energy - alone.get_potential_energy()) / len(atoms)
        assert abs(per_atom) < 1e-3


def test_load_energy_model_reads_a_single_model_file(model_files):
    model = load_energy_model(str(model_files["single"]))
    assert isinstance(model, MaceModel) and model.name == "mace"


def test_unknown_element_names_element_and_model(model_files):
    model = MaceModel([model_files["single"]])
    with pytest.raises(XtalloopError, match=r"tiny\.mace\.json.*Fe") as err:
        model.predict([bulk("NaCl", "rocksalt", a=5.6), bulk("Fe", "bcc", a=2.87)])
    assert "\n" not in str(err.value)


def test_pickled_models_are_refused_even_if_trusted(model_files):
    """mace's own .model files are pickles: xtalloop never unpickles one (README, trust)."""
    from xtalloop.models.trust import add_files

    add_files([model_files["pickle"], *model_files["pickle_ensemble"].glob("*.model")])
    for spec in (model_files["pickle"], model_files["pickle_ensemble"]):
        with pytest.raises(XtalloopError, match="a pickled MACE model.*native format") as err:
            load_energy_model(str(spec))
        assert "\n" not in str(err.value)
    native = load_energy_model(str(model_files["ensemble"]))
    assert [m.name for m in native.paths] == [
        "member1.mace.json", "member2.mace.json", "member3.mace.json"]


def test_missing_or_invalid_files_are_reported_in_one_line(tmp_path):
    not_a_model = tmp_path / "junk.mace.json"
    not_a_model.write_text("not a model")
    empty = tmp_path / "empty"
    empty.mkdir()
    for spec, message in [
        (tmp_path / "missing.model", "a pickled MACE model"),
        (tmp_path / "missing.mace.json", "not found"),
        (not_a_model, "junk.mace.json"),
        (empty, "no MACE"),
    ]:
        with pytest.raises(XtalloopError, match=message) as err:
            load_energy_model(str(spec))
        assert "\n" not in str(err.value)


def test_single_precision_agrees_with_double_precision(model_files):
    cells = structures()
    double = MaceModel([model_files["single"]]).predict(cells)
    single = MaceModel([model_files["single"]], dtype="float32").predict(cells)
    for atoms, d, s in zip(cells, double, single):
        assert abs(d.energy - s.energy) / len(atoms) < 1e-4
        assert np.abs(d.forces - s.forces).max() < 1e-3
    with pytest.raises(XtalloopError, match="float64 or float32"):
        MaceModel([model_files["single"]], dtype="float16")


def test_prefilter_precision_reaches_the_mace_model(model_files):
    from pydantic import ValidationError

    from xtalloop.config import PrefilterConfig
    from xtalloop.rankers.ml_ranker import MLRanker

    setting = PrefilterConfig(model=str(model_files["single"]), precision="float32")
    ranker = MLRanker(model=setting.model, precision=setting.precision, progress=False)
    assert ranker.energy_model.dtype == "float32"
    assert MLRanker(model=setting.model).energy_model.dtype == "float64"
    assert load_energy_model(str(model_files["ensemble"]), "cpu", "float32").dtype == "float32"
    with pytest.raises(ValidationError, match="float32"):
        PrefilterConfig(precision="float16")


def test_molecules_and_single_atoms_in_a_batch_match_mace_calculator(model_files):
    molecule = Atoms("Cl2", positions=[[0, 0, 0], [0, 0, 2.0]], pbc=False)
    atom_in_box = Atoms("Na", positions=[[1, 1, 1]], cell=[12, 12, 12], pbc=True)
    cells = [structures()[0], molecule, atom_in_box]
    predictions = MaceModel([model_files["single"]]).predict(cells)
    calculator = mace_calculator(model_files["pickle"])
    for atoms, pred in zip(cells, predictions, strict=True):
        atoms = atoms.copy()
        atoms.calc = calculator
        assert pred.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        assert np.allclose(pred.forces, atoms.get_forces(), atol=1e-6, rtol=0)
    assert np.abs(predictions[1].forces).max() > 1e-3  # the molecule's bond is not at rest

"""SevenNet and DIEP, the pretrained potentials shipped in their wheels, as model choices.

Each model's batched prediction is checked against its own package's ASE
calculator evaluating one structure at a time (sevenn's
``SevenNetCalculator``, diep's ``DIEPCalculator``, on a copy of the loaded
network), which builds the graph and converts the stress its own way; the
config checks accept the names and refuse bad ones in one line.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from xtalloop.config import load_config
from xtalloop.errors import ConfigError, XtalloopError
from xtalloop.models import load_energy_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ["sevennet", "sevennet:7net-0", "diep"]


def structures() -> list[Atoms]:
    """Two small cells with non-zero forces and stress (rattled, strained)."""
    nacl = bulk("NaCl", "rocksalt", a=5.5)
    nacl.rattle(0.05, seed=1)
    silicon = bulk("Si", "diamond", a=5.43).repeat((1, 1, 2))
    silicon.set_cell(silicon.cell[:] @ [[1.02, 0.03, 0], [0, 0.99, 0], [0, 0, 1.0]],
                     scale_atoms=True)
    silicon.rattle(0.08, seed=2)
    return [nacl, silicon]


def own_calculator(model):
    """The model's package's own ASE calculator around a copy of the same network."""
    if model.name == "diep":
        from diep.pretrained import DIEPCalculator

        return DIEPCalculator(potential=copy.deepcopy(model._potential), stress_unit="eV/A3")
    from sevenn.calculator import SevenNetCalculator

    network = copy.deepcopy(model._model)  # the calculator switches it to one-graph mode
    return SevenNetCalculator(model=network, device="cpu")


def offline(monkeypatch) -> None:
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a model load tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("spec", MODELS)
def test_batched_predictions_match_the_packages_calculator_one_at_a_time(spec, monkeypatch):
    with monkeypatch.context() as patch:
        offline(patch)  # the weights are the installed wheel's files: no download
        model = load_energy_model.__wrapped__(spec)  # a fresh load, not a cached instance
    assert model.version.startswith(("sevenn ", "diep "))
    # the crystals, then what elemental references hold: a dimer and a lone atom in boxes
    cells = [*structures(), Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.21]], cell=[10] * 3,
                                  pbc=True), Atoms("Na", cell=[12] * 3, pbc=True)]
    batched = model.predict(cells)
    single = [model.predict([a])[0] for a in cells]
    calculator = own_calculator(model)
    for i, (atoms, pred, alone) in enumerate(zip(cells, batched, single, strict=True)):
        assert np.isfinite(pred.energy)
        assert pred.forces.shape == (len(atoms), 3) and np.isfinite(pred.forces).all()
        assert pred.stress.shape == (6,) and np.isfinite(pred.stress).all()
        if i < 2:  # the strained, rattled crystals: the comparison is not of zeros
            assert abs(pred.forces).max() > 0.01 and abs(pred.stress[3:]).max() > 1e-4
        reference = atoms.copy()
        reference.calc = calculator
        # float32 networks: agreement to a few parts in 10^6 of the energy
        assert pred.energy == pytest.approx(reference.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(pred.forces, reference.get_forces(), atol=1e-4)
        np.testing.assert_allclose(pred.stress, reference.get_stress(), atol=1e-5)
        assert pred.energy == pytest.approx(alone.energy, abs=1e-4)
        np.testing.assert_allclose(pred.forces, alone.forces, atol=1e-4)
        np.testing.assert_allclose(pred.stress, alone.stress, atol=1e-5)
    assert np.allclose(batched[-1].forces, 0.0, atol=1e-6)  # no neighbour within the cutoff


def test_an_element_without_parameters_is_named():
    with pytest.raises(XtalloopError, match=r"diep has no parameters for Og"):
        load_energy_model("diep").predict([Atoms("Og", cell=[5] * 3, pbc=True)])


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["sevennet", "sevennet:7net-0", "SevenNet:7net-l3i5", "diep"])
def test_config_accepts_the_names_in_every_model_key(tmp_path, name):
    config = load_config(write(tmp_path, f"compositions: [NaCl]\nprefilter: {{model: '{name}', "
                                         f"base_model: '{name}'}}\n"
                                         f"dft: {{code: mlip, mlip: {{model: '{name}'}}}}\n"))
    assert config.prefilter.model == name and config.dft.mlip.model == name


@pytest.mark.parametrize(("text", "expected"), [
    ("prefilter: {model: sevennet:7net-9}", "prefilter.model: unknown SevenNet model"),
    ("prefilter: {model: sevennet:7net-mf-0}",
     "prefilter.model: model 'sevennet:7net-mf-0' is not available: it ships only with "
     "sevenn>=0.11"),
    ("prefilter: {model: diep:fold2}", "prefilter.model: unknown model 'diep:fold2'"),
    ("prefilter: {model: sevenet}", "prefilter.model: unknown model 'sevenet': use 'chgnet', "
                                    "'sevennet'"),
    ("prefilter: {base_model: dipe}", "prefilter.base_model: unknown model 'dipe'"),
    ("dft: {code: mlip, mlip: {model: 7net}}", "dft.mlip.model: unknown model '7net'"),
])
def test_bad_names_give_one_line_naming_the_key(tmp_path, text, expected):
    path = write(tmp_path, f"compositions: [NaCl]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "package"), [("sevennet", "sevenn"), ("diep", "diep")])
def test_a_missing_package_names_the_key_and_the_fix(tmp_path, monkeypatch, name, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda module, *a: None if module == package else real(module, *a))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"compositions: [NaCl]\nprefilter: {{model: {name}}}\n"))
    message = str(info.value)
    assert f"prefilter.model: model '{name}' needs the '{package}' package" in message
    assert "pip install -e '.[potentials]'" in message and "\n" not in message
    with pytest.raises(XtalloopError, match=f"needs the '{package}' package"):
        load_energy_model.__wrapped__(name)


def test_mlip_validator_keys_differ_per_pretrained_model():
    from xtalloop.dft.mlip import MlipRelaxMaker

    keys = {spec: MlipRelaxMaker(model=spec).settings_key() for spec in ["chgnet", *MODELS]}
    assert keys["sevennet"].startswith("mlip-sevennet:7net-l3i5-")
    assert keys["diep"].startswith("mlip-diep-")
    assert len(set(keys.values())) == 4
    assert MlipRelaxMaker(model="SevenNet").settings_key() == keys["sevennet"]


def test_benchmark_relax_takes_the_names_and_names_the_option_when_refusing():
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtalloop.benchmark.relax import make_relax

    relax = make_relax("diep", "cpu", fmax=0.05, steps=5)
    relaxed, energies = relax([AseAtomsAdaptor.get_structure(structures()[0])])
    assert len(relaxed) == 1 and np.isfinite(energies[0])
    with pytest.raises(ConfigError, match=r"^--relax: unknown SevenNet model 'sevennet:7net-9'"):
        make_relax("sevennet:7net-9", "cpu", fmax=0.05, steps=5)

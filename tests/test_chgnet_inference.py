"""CHGNet with one backward pass gives CHGNet's own energies, forces and stresses."""

import numpy as np
from pymatgen.core import Lattice, Structure

from xtalloop.models.chgnet_inference import predict_efs
from xtalloop.models.energy_model import load_energy_model


def test_one_backward_pass_gives_chgnets_own_energies_forces_and_stresses():
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.7), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])
    rutile = Structure(Lattice.tetragonal(4.6, 3.0), ["Ti", "Ti", "O", "O", "O", "O"],
                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.3, 0.3, 0], [0.7, 0.7, 0],
                        [0.8, 0.2, 0.5], [0.2, 0.8, 0.5]])
    strained = rocksalt.copy()
    strained.apply_strain([0.03, -0.02, 0.01])
    strained.perturb(0.1, min_distance=0.05)
    sparse = Structure(Lattice.cubic(6.0), ["Cu"], [[0, 0, 0]])  # bonds, no angles
    structures = [rocksalt, rutile, strained, sparse]
    module = load_energy_model("chgnet").module
    expected = module.predict_structure(structures, task="efs", batch_size=3)
    got = predict_efs(module, structures, batch_size=3)  # two batches
    assert len(got) == len(structures)
    for want, have in zip(expected, got, strict=True):
        assert float(have["e"]) == float(want["e"])
        assert np.allclose(have["f"], want["f"], atol=1e-5)
        assert np.allclose(have["s"], want["s"], atol=1e-4)
    # something moves: the comparison is not between zeros
    assert np.abs(got[2]["f"]).max() > 0.01 and np.abs(got[1]["s"]).max() > 0.1


def test_a_module_in_training_mode_is_refused_not_switched():
    import copy

    import pytest

    module = copy.deepcopy(load_energy_model("chgnet").module)
    assert not module.training  # the energy model owns its module in eval mode
    module.train()
    structure = Structure(Lattice.cubic(4.0), ["Cu"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="eval mode"):
        predict_efs(module, [structure])
    assert module.training  # its mode is left as it was

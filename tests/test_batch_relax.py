"""Batched relaxation follows ASE's FIRE on a cell filter, structure by structure."""

import numpy as np
import pytest
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from xtalloop.models.energy_model import load_energy_model
from xtalloop.rankers.batch_relax import BatchRelaxer


def starting_cells():
    cells = [bulk("Cu", "fcc", a=3.8), bulk("Al", "fcc", a=3.9), bulk("Au", "bcc", a=3.3),
             bulk("Cu", "fcc", a=3.5, cubic=True)]
    rng = np.random.default_rng(0)
    for atoms in cells:
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
    return cells


def test_batched_relaxation_matches_ase_fire_one_by_one():
    model = load_energy_model("emt")
    cells = starting_cells()
    batched = BatchRelaxer(model, fmax=0.02, steps=400, progress=False).relax(cells)
    for atoms, result in zip(cells, batched, strict=True):
        reference = atoms.copy()
        reference.calc = model.calculator()
        optimizer = FIRE(FrechetCellFilter(reference), logfile=None)
        optimizer.run(fmax=0.02, steps=400)
        assert result.converged
        assert result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-5)
        assert np.allclose(result.atoms.cell, reference.cell, atol=1e-4)
        assert result.n_steps == optimizer.nsteps


def test_inputs_are_not_modified_and_order_is_kept():
    model = load_energy_model("emt")
    cells = starting_cells()
    before = [a.positions.copy() for a in cells]
    results = BatchRelaxer(model, fmax=0.05, steps=200, progress=False).relax(cells)
    assert [r.atoms.get_chemical_formula() for r in results] == [
        a.get_chemical_formula() for a in cells]
    for atoms, positions in zip(cells, before, strict=True):
        assert np.array_equal(atoms.positions, positions)


def test_step_limit_is_reported():
    model = load_energy_model("emt")
    results = BatchRelaxer(model, fmax=1e-6, steps=3, progress=False).relax(starting_cells()[:1])
    assert not results[0].converged
    assert results[0].failure == "step limit"

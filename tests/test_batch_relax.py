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


def test_a_step_that_leaves_no_healthy_structure_ends_the_relaxation():
    """Every structure still moving finishes unhealthy in the same step (here: cells over
    the volume limit, as Cs's library starts did under a fine-tuned CHGNet): the
    relaxation reports each one instead of crashing on an empty batch."""
    model = load_energy_model("emt")
    cells = [bulk("Cu", "fcc", a=3.6), bulk("Cu", "fcc", a=3.7)]
    results = BatchRelaxer(model, fmax=0.05, steps=50, max_volume_per_atom=5.0,
                           progress=False).relax(cells)
    assert [r.failure for r in results] == ["cell exploded", "cell exploded"]
    assert not any(r.converged for r in results)


def test_a_collapsed_cell_is_dropped_before_the_model_sees_it():
    """An NH3 candidate substituted into a template at 0.4 Å³/atom took CHGNet's neighbour
    lists to 23 GB: such a cell fails as "cell collapsed" and is never passed to the model."""
    model = load_energy_model("emt")
    seen = []

    class Counting:
        name, version, identity = "emt", "test", {}

        def predict(self, atoms):
            seen.extend(len(a) for a in atoms)
            return model.predict(atoms)

    collapsed = bulk("Cu", "fcc", a=1.4)  # 0.69 Å³/atom
    results = BatchRelaxer(Counting(), fmax=0.05, steps=100, progress=False).relax(
        [collapsed, bulk("Cu", "fcc", a=3.7)])
    assert results[0].failure == "cell collapsed" and not results[0].converged
    assert results[1].converged and results[1].failure is None
    assert len(seen) == results[1].n_steps + 1  # only the healthy cell, once per step


def test_cell_coordinates_and_forces_equal_ase_frechet_cell_filter_away_from_the_start():
    from xtalloop.rankers.frechet_cells import FrechetCells

    model = load_energy_model("emt")
    cells = starting_cells()
    ours = FrechetCells([a.copy() for a in cells])
    theirs = [FrechetCellFilter(a.copy()) for a in cells]
    rng = np.random.default_rng(1)
    # move both by the same sheared, strained step in generalised coordinates
    steps = [rng.normal(0, 0.05, (len(a) + 3, 3)) * np.r_[np.ones(len(a)), 3 * [len(a)]][:, None]
             for a in cells]
    ours.set_positions(range(len(cells)), [ours.get_positions(i) + d
                                           for i, d in enumerate(steps)])
    for f, d in zip(theirs, steps, strict=True):
        f.set_positions(f.get_positions() + d)
    predictions = model.predict(ours.atoms)
    forces = ours.forces(range(len(cells)), [p.forces for p in predictions],
                         [p.stress for p in predictions])
    for i, f in enumerate(theirs):
        f.atoms.calc = model.calculator()
        assert np.allclose(ours.atoms[i].cell, f.atoms.cell, atol=1e-12)
        assert np.allclose(ours.atoms[i].positions, f.atoms.positions, atol=1e-12)
        assert np.abs(f.atoms.cell.array - cells[i].cell.array).max() > 0.05  # really strained
        assert np.allclose(forces[i], f.get_forces(), atol=1e-9)


def constrained_cells():
    """A tetragonally strained Cu cell under FixSymmetry; Al with two atoms fixed."""
    from ase.constraints import FixAtoms, FixSymmetry

    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    copper.set_cell(copper.cell.array @ np.diag([1.0, 1.0, 1.08]), scale_atoms=True)
    copper.set_constraint(FixSymmetry(copper))
    aluminium = bulk("Al", "fcc", a=4.2, cubic=True).repeat((1, 1, 2))
    aluminium.rattle(0.1, seed=3)
    aluminium.set_constraint(FixAtoms(indices=[0, 5]))
    return [copper, aluminium]


@pytest.mark.parametrize("relax_cell", [True, False])
def test_constraints_act_as_under_ase_fire_and_cell_filter(relax_cell):
    from ase.spacegroup.symmetrize import check_symmetry

    model = load_energy_model("emt")
    cells = constrained_cells()
    batched = BatchRelaxer(model, fmax=0.01, steps=400, relax_cell=relax_cell,
                           progress=False).relax(cells)
    for atoms, result in zip(cells, batched, strict=True):
        reference = atoms.copy()
        reference.calc = model.calculator()
        optimizer = FIRE(FrechetCellFilter(reference) if relax_cell else reference,
                         logfile=None)
        optimizer.run(fmax=0.01, steps=400)
        assert result.converged
        assert result.n_steps == optimizer.nsteps
        assert result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
        assert np.allclose(result.atoms.positions, reference.positions, atol=1e-5)
        assert np.allclose(result.atoms.cell, reference.cell, atol=1e-5)
    copper, aluminium = batched
    assert check_symmetry(copper.atoms, 1e-4).number == 139  # still I4/mmm
    if relax_cell:
        lengths = copper.atoms.cell.lengths()
        assert lengths[2] / lengths[0] < 1.07  # the strain relaxed towards cubic
    start = constrained_cells()[1]
    fractional = aluminium.atoms.get_scaled_positions()[[0, 5]]
    assert np.allclose(fractional, start.get_scaled_positions()[[0, 5]], atol=1e-9)
    assert not np.allclose(aluminium.atoms.positions[1], start.positions[1], atol=1e-3)

"""Relax many structures at once: one model call per step for all of them.

Each structure keeps its own FIRE state (the same update rule as ASE's
``FIRE``) on the generalised coordinates of ASE's ``FrechetCellFilter``
(atoms and cell, :class:`~xtalloop.rankers.frechet_cells.FrechetCells`), so
a batched relaxation follows the same path as relaxing each structure alone
with ``FIRE(FrechetCellFilter(atoms))``; only the energy model is called once
per step for every structure not yet converged, and the cell filter's matrix
functions are evaluated for all of them together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from xtalloop.models.energy_model import EnergyModel
from xtalloop.rankers.frechet_cells import FrechetCells


@dataclass
class RelaxResult:
    """Outcome of relaxing one structure."""

    atoms: Atoms
    energy: float
    converged: bool
    n_steps: int
    failure: str | None = None
    energy_std: float | None = None
    """Spread (eV) of an ensemble model's energies at the final structure."""


@dataclass
class _FireState:
    """ASE FIRE's state for one structure (defaults as in ``ase.optimize.FIRE``)."""

    dt: float = 0.1
    a: float = 0.1
    n_steps: int = 0
    velocity: np.ndarray | None = None
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99

    def step(self, positions: np.ndarray, forces: np.ndarray) -> np.ndarray:
        if self.velocity is None:
            self.velocity = np.zeros_like(positions)
        else:
            vf = np.vdot(forces, self.velocity)
            if vf > 0.0:
                self.velocity = (1.0 - self.a) * self.velocity + self.a * forces / np.sqrt(
                    np.vdot(forces, forces)
                ) * np.sqrt(np.vdot(self.velocity, self.velocity))
                if self.n_steps > self.n_min:
                    self.dt = min(self.dt * self.finc, self.dtmax)
                    self.a *= self.fa
                self.n_steps += 1
            else:
                self.velocity[:] = 0.0
                self.a = self.astart
                self.dt *= self.fdec
                self.n_steps = 0
        self.velocity = self.velocity + self.dt * forces
        dr = self.dt * self.velocity
        norm = np.sqrt(np.vdot(dr, dr))
        if norm > self.maxstep:
            dr = self.maxstep * dr / norm
        return positions + dr


@dataclass
class BatchRelaxer:
    """Relax structures together with a batched energy model.

    Parameters
    ----------
    model
        The energy model; it is called once per step with all active structures.
    fmax
        Convergence threshold on atomic forces and cell forces (eV/Å).
    steps
        Maximum number of optimiser steps.
    relax_cell
        Relax the cell (FrechetCellFilter) as well as the positions.
    max_volume_per_atom
        A structure whose cell grows beyond this (Å³/atom) is dropped as failed.
    min_volume_per_atom
        A structure whose cell is (or shrinks) below this (Å³/atom) is dropped as
        failed ("cell collapsed") before the model sees it: an interatomic model's
        neighbour lists grow as the inverse volume (and CHGNet's angle list as its
        square), and one batch of NH₃ candidates substituted into templates at
        0.4-1.7 Å³/atom took CHGNet to 23 GB and the out-of-memory killer. The
        densest crystals have about 6 Å³/atom (diamond 5.7; 6.2 is the least among
        6000 MP-20 training structures).
    progress
        Show a progress bar.
    """

    model: EnergyModel
    fmax: float = 0.05
    steps: int = 300
    relax_cell: bool = True
    max_volume_per_atom: float = 200.0
    min_volume_per_atom: float = 2.0
    progress: bool = True
    description: str = "ML relax"

    def relax(self, structures: list[Atoms]) -> list[RelaxResult]:
        """Relax copies of ``structures``; results come back in the same order."""
        # The cell filter does thousands of 3x3 matrix functions: threaded BLAS
        # only adds contention there (20x slower on 2 busy cores).
        with threadpool_limits(limits=1, user_api="blas"):
            return self._relax(structures)

    def _relax(self, structures: list[Atoms]) -> list[RelaxResult]:
        atoms = [a.copy() for a in structures]
        coordinates = FrechetCells(atoms, relax_cell=self.relax_cell)
        states = [_FireState() for _ in atoms]
        results: list[RelaxResult | None] = [None] * len(atoms)
        active = list(range(len(atoms)))
        bar = tqdm(
            total=len(atoms),
            desc=self.description,
            unit="struct",
            disable=not self.progress,
            leave=True,
        )

        def finish(i: int, result: RelaxResult) -> None:
            results[i] = result
            bar.update()

        for step in range(self.steps + 1):
            collapsed = [i for i in active
                         if not atoms[i].get_volume() / len(atoms[i]) >= self.min_volume_per_atom]
            for i in collapsed:
                finish(i, RelaxResult(atoms[i], float("nan"), False, step, "cell collapsed"))
            active = [i for i in active if i not in collapsed]
            if not active:
                break
            predictions = self.model.predict([atoms[i] for i in active])
            healthy = []
            for i, pred in zip(active, predictions, strict=True):
                a = atoms[i]
                if not np.isfinite(pred.energy) or not np.all(np.isfinite(pred.forces)):
                    finish(i, RelaxResult(a, float("nan"), False, step, "non-finite energy"))
                elif a.get_volume() / len(a) > self.max_volume_per_atom:
                    finish(i, RelaxResult(a, pred.energy, False, step, "cell exploded"))
                else:
                    a.calc = SinglePointCalculator(
                        a, energy=pred.energy, free_energy=pred.energy,
                        forces=pred.forces, stress=pred.stress,
                    )
                    healthy.append((i, pred))
            if not healthy:  # every structure left finished unhealthy in this step
                break
            forces = coordinates.forces(
                [i for i, _ in healthy],
                [pred.forces for _, pred in healthy],
                [pred.stress for _, pred in healthy],
            )
            moving, moved = [], []
            for (i, pred), force in zip(healthy, forces, strict=True):
                if np.sqrt((force**2).sum(axis=1).max()) < self.fmax:
                    finish(i, RelaxResult(atoms[i], pred.energy, True, step, None,
                                          pred.energy_std))
                elif step == self.steps:
                    finish(i, RelaxResult(atoms[i], pred.energy, False, step, "step limit",
                                          pred.energy_std))
                else:
                    moving.append(i)
                    moved.append(states[i].step(coordinates.get_positions(i), force))
            coordinates.set_positions(moving, moved)
            active = moving
            if step % 10 == 0 or not active:
                bar.set_postfix(step=step, active=len(active), refresh=False)
        bar.close()
        return [r for r in results if r is not None]

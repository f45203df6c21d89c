"""ASE's ``FrechetCellFilter`` coordinates for many structures at once.

A cell relaxation moves the atoms and the cell together. ASE's
``FrechetCellFilter`` does it on generalised coordinates: the atomic positions
in the reference cell, plus ``n · log(F)`` for the deformation gradient ``F``
of the cell (``n`` atoms). Its gradient needs a matrix logarithm and nine
Fréchet derivatives of the matrix exponential per structure and step, computed
by scipy one small matrix at a time: in a batched relaxation of 8-atom cells
that cost as much as the MACE forward pass.

:class:`FrechetCells` keeps the same coordinates for a whole batch and computes
the same quantities with a few batched matrix exponentials:

* the coordinates are kept rather than recomputed from the cell, so no matrix
  logarithm is needed (ASE's ``logm(expm(X))`` returns ``X`` up to round-off);
* the nine directional derivatives contracted with the cell gradient ``G``
  are one adjoint Fréchet derivative, ``D exp(Lᵀ)[G]``, read off the upper
  right block of ``expm([[Lᵀ, G], [0, Lᵀ]])`` (Higham, *Functions of
  Matrices*, 2008, eq. 10.15).

Relaxations on these coordinates follow ``FIRE(FrechetCellFilter(atoms))``
step for step (``tests/test_batch_relax.py``).

ASE constraints on a structure (``FixAtoms``, ``FixSymmetry``, ...) act as
they do under ASE's filter: they adjust the new cell and positions, the
atomic forces and the stress. A constrained structure's coordinates are then
read back from its atoms, as ASE's filter reads them (with one matrix
logarithm), since the constraint may have moved it off the requested point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from scipy.linalg import expm, logm


class FrechetCells:
    """Generalised coordinates (atoms and cell) of many structures.

    Parameters
    ----------
    atoms
        The structures; they are moved in place by :meth:`set_positions`.
    relax_cell
        Relax the cells too. Without, the coordinates are the positions.
    """

    def __init__(self, atoms: Sequence[Atoms], relax_cell: bool = True) -> None:
        self.atoms = list(atoms)
        self.relax_cell = relax_cell
        self._reference_cells = [np.array(a.cell) for a in self.atoms]
        self._reference_positions = [a.positions.copy() for a in self.atoms]
        # n·log(F), F the deformation gradient: zero for the starting cell
        self._log_strain = [np.zeros((3, 3)) for _ in self.atoms]

    def get_positions(self, i: int) -> np.ndarray:
        """Coordinates of structure ``i``: ``(n + 3, 3)`` with the cell, else ``(n, 3)``."""
        if not self.relax_cell:
            return self.atoms[i].positions.copy()
        return np.vstack([self._reference_positions[i], self._log_strain[i]])

    def set_positions(self, indices: Sequence[int], new: Sequence[np.ndarray]) -> None:
        """Move structures ``indices`` to coordinates ``new`` (as from :meth:`get_positions`).

        A structure's constraints adjust its new cell and positions.
        """
        if not self.relax_cell:
            for i, positions in zip(indices, new, strict=True):
                self.atoms[i].set_positions(positions)  # applies constraints
            return
        n_atoms = [len(self.atoms[i]) for i in indices]
        logs = np.array([x[n:] / n for x, n in zip(new, n_atoms, strict=True)])
        gradients = _expm(logs)
        for i, x, n, deformation in zip(indices, new, n_atoms, gradients, strict=True):
            atoms = self.atoms[i]
            cell = self._reference_cells[i] @ deformation.T
            if atoms.constraints:
                # ASE's order: scale the atoms with the cell (a fixed atom keeps
                # its fractional coordinates), then set the positions; both
                # calls let the constraints adjust what is set
                atoms.set_cell(cell, scale_atoms=True)
                atoms.set_positions(x[:n] @ deformation.T)
                self._read_back(i)
                continue
            self._reference_positions[i] = x[:n].copy()
            self._log_strain[i] = x[n:].copy()
            atoms.set_cell(cell, scale_atoms=False)
            atoms.positions = x[:n] @ deformation.T

    def _read_back(self, i: int) -> None:
        """Coordinates of structure ``i`` from its atoms (ASE's ``get_positions``)."""
        atoms = self.atoms[i]
        deformation = np.linalg.solve(self._reference_cells[i], np.array(atoms.cell)).T
        self._reference_positions[i] = np.linalg.solve(deformation, atoms.positions.T).T
        self._log_strain[i] = len(atoms) * np.real(logm(deformation))

    def forces(
        self,
        indices: Sequence[int],
        forces: Sequence[np.ndarray],
        stresses: Sequence[np.ndarray],
    ) -> list[np.ndarray]:
        """Generalised forces of structures ``indices``: minus the energy gradient.

        ``forces`` are atomic forces (eV/Å) and ``stresses`` Voigt stresses
        (eV/Å³, ASE's sign) of those structures at their current coordinates;
        a structure's constraints adjust copies of them first.
        """
        forces, stresses = self._constrained(indices, forces, stresses)
        if not self.relax_cell:
            return forces
        n_atoms = np.array([len(self.atoms[i]) for i in indices])
        logs = np.array([self._log_strain[i] for i in indices]) / n_atoms[:, None, None]
        deformations = _expm(logs)
        volumes = np.array([self.atoms[i].get_volume() for i in indices])
        virials = -volumes[:, None, None] * np.array(
            [voigt_6_to_full_3x3_stress(np.asarray(s)) for s in stresses]
        )
        # dE/dF for the cell (UnitCellFilter's cell gradient), then through exp
        cell_gradients = virials @ np.linalg.inv(np.transpose(deformations, (0, 2, 1)))
        log_forces = _adjoint_expm_derivative(logs, cell_gradients) / n_atoms[:, None, None]
        return [
            np.vstack([np.asarray(f) @ deformation, log_force])
            for f, deformation, log_force in zip(forces, deformations, log_forces, strict=True)
        ]

    def _constrained(
        self,
        indices: Sequence[int],
        forces: Sequence[np.ndarray],
        stresses: Sequence[np.ndarray],
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Forces and stresses as ``Atoms.get_forces`` / ``get_stress`` adjust them."""
        forces = [np.asarray(f) for f in forces]
        stresses = [np.asarray(s) for s in stresses]
        for k, i in enumerate(indices):
            if not self.atoms[i].constraints:
                continue
            forces[k], stresses[k] = forces[k].astype(float), stresses[k].astype(float)
            for constraint in self.atoms[i].constraints:
                constraint.adjust_forces(self.atoms[i], forces[k])
                if hasattr(constraint, "adjust_stress"):
                    constraint.adjust_stress(self.atoms[i], stresses[k])
        return forces, stresses


def _expm(matrices: np.ndarray) -> np.ndarray:
    """Matrix exponentials of a stack of square matrices."""
    if len(matrices) == 0:
        return matrices
    return expm(matrices)


def _adjoint_expm_derivative(logs: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``D exp(Lᵀ)[G]`` for each pair: ``Σ_ij (D exp(L)[E_mn])_ij G_ij`` at ``[m, n]``."""
    k = len(logs)
    blocks = np.zeros((k, 6, 6))
    transposed = np.transpose(logs, (0, 2, 1))
    blocks[:, :3, :3] = transposed
    blocks[:, 3:, 3:] = transposed
    blocks[:, :3, 3:] = directions
    return _expm(blocks)[:, :3, 3:]

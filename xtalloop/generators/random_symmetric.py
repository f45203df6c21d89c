"""Random symmetric (Wyckoff-constrained) structures with PyXtal."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pymatgen.core import Composition

from xtalloop.generators.base import Candidate, derived_seeds, too_close

logger = logging.getLogger(__name__)


@dataclass
class RandomSymmetricGenerator:
    """Random crystals in random space groups, atoms on Wyckoff positions (PyXtal).

    Each candidate draws a number of formula units and a space group compatible
    with that stoichiometry, then lets PyXtal place the atoms on Wyckoff
    positions at a volume estimated from atomic radii.

    Parameters
    ----------
    formula_units
        Numbers of formula units per (conventional) cell to draw from.
    max_atoms
        Cells with more atoms than this are not drawn.
    volume_factor
        PyXtal's volume factor: cell volume relative to the sum of atomic volumes.
    min_distance_factor
        Reject a structure if two atoms are closer than this fraction of the
        sum of their covalent radii.
    space_groups
        Space groups to draw from (``None``: all of 2-230 compatible with the count).
    space_group_prior
        ``"mp20"`` draws space groups in proportion to how often known crystals
        take them (counts over the MP-20 training split, tempered by
        ``prior_power``), as AIRSS-style searches bias towards common symmetries;
        ``"uniform"`` draws every compatible group equally.
    prior_power
        Exponent on the counts: 1 follows the data, 0 is uniform.
    max_tries
        Attempts per candidate before giving up on it.
    """

    name: str = "random_symmetric"
    formula_units: tuple[int, ...] = (1, 2, 4, 8)
    max_atoms: int = 20
    volume_factor: float = 1.1
    min_distance_factor: float = 0.6
    space_groups: tuple[int, ...] | None = None
    space_group_prior: Literal["mp20", "uniform"] = "mp20"
    prior_power: float = 1.0
    max_tries: int = 20

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        """Return ``n`` candidates (fewer only if no space group fits)."""
        from pyxtal import pyxtal
        from pyxtal.symmetry import Group

        reduced = composition.reduced_composition
        species = [el.symbol for el in reduced.elements]
        counts = [int(reduced[el]) for el in reduced.elements]
        groups = list(self.space_groups or range(2, 231))
        options = []  # (formula units, space group) pairs PyXtal can fill
        for z in self.formula_units:
            n_ions = [c * z for c in counts]
            if sum(n_ions) > self.max_atoms:
                continue
            for sg in groups:
                if Group(sg).check_compatible(n_ions)[0]:
                    options.append((z, sg))
        if not options:
            logger.warning("no space group fits %s within %d atoms", reduced, self.max_atoms)
            return []

        probabilities = self._option_probabilities(options)
        candidates = []
        for index, child in enumerate(derived_seeds(seed, n)):
            rng = np.random.default_rng(child)
            for attempt in range(self.max_tries):
                z, sg = options[int(rng.choice(len(options), p=probabilities))]
                crystal = pyxtal()
                try:
                    crystal.from_random(
                        3,
                        sg,
                        species,
                        [c * z for c in counts],
                        factor=self.volume_factor,
                        random_state=int(rng.integers(2**31)),
                    )
                except Exception:  # PyXtal signals impossible placements by raising
                    continue
                if not crystal.valid:
                    continue
                structure = crystal.to_pymatgen()
                if too_close(structure, self.min_distance_factor):
                    continue
                candidates.append(
                    Candidate(
                        structure=structure,
                        generator=self.name,
                        seed=seed,
                        index=index,
                        metadata={
                            "space_group": sg,
                            "formula_units": z,
                            "attempt": attempt,
                        },
                    )
                )
                break
        return candidates

    def _option_probabilities(self, options: list[tuple[int, int]]) -> np.ndarray:
        """Each number of formula units equally likely; within it, space groups by the prior."""
        counts = space_group_counts() if self.space_group_prior == "mp20" else {}
        weights = np.array([(counts.get(sg, 0) + 1.0) ** self.prior_power for _, sg in options])
        per_z: dict[int, float] = {}
        for (z, _), w in zip(options, weights, strict=True):
            per_z[z] = per_z.get(z, 0.0) + w
        weights = np.array([w / per_z[z] for (z, _), w in zip(options, weights, strict=True)])
        return weights / weights.sum()


@functools.lru_cache(maxsize=1)
def space_group_counts() -> dict[int, int]:
    """Number of MP-20 training structures per space group (shipped with the package)."""
    data = json.loads((Path(__file__).parent / "space_group_counts.json").read_text())
    return {int(k): int(v) for k, v in data["counts"].items()}

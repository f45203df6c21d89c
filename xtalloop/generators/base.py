"""The Generator protocol and the Candidate record every generator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from monty.json import MSONable
from pymatgen.core import Composition, Structure


#: Candidate metadata key: the candidate's place in its generator's own ranking (0: the
#: generator's best guess), set by generators whose output order is a ranking (prototype
#: substitution, the Wyckoff model) and not by samplers; the prefilter's ``prior_picks``
#: reads it.
PRIOR_RANK = "prior_rank"


@dataclass
class Candidate(MSONable):
    """A generated structure and where it came from.

    Parameters
    ----------
    structure
        The generated (unrelaxed) structure.
    generator
        Name of the generator that made it.
    seed
        Seed the generator was called with; with ``index`` it reproduces the structure.
    index
        Position of this candidate in the generator's output for that seed.
    metadata
        Generator-specific details (space group asked for, formula units, template id...).
    """

    structure: Structure
    generator: str
    seed: int
    index: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def provenance(self) -> dict[str, Any]:
        """Generator, seed, index and metadata as one flat dict for storage."""
        return {
            "generator": self.generator,
            "seed": self.seed,
            "index": self.index,
            **self.metadata,
        }


@runtime_checkable
class Generator(Protocol):
    """Makes candidate structures for a composition, reproducibly from a seed.

    Implementations are dataclasses whose fields are their settings; the same
    ``(composition, n, seed)`` must return the same structures.
    """

    name: str

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        """Return up to ``n`` candidates of ``composition`` (any number of formula units)."""
        ...


def derived_seeds(seed: int, n: int) -> list[int]:
    """Independent child seeds for ``n`` draws, stable for a given parent ``seed``."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def closest_approach(structure: Structure) -> float:
    """The smallest distance between two atoms (periodic images included) over the sum of
    their covalent radii (``inf`` for a lone atom with no image within reach)."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    radii = CovalentRadius.radius
    elements = [site.specie.symbol for site in structure]
    r = np.array([radii.get(el, 1.5) for el in elements])
    center, neighbor, _, distances = structure.get_neighbor_list(2 * r.max())
    if len(distances) == 0:
        return float("inf")
    return float(np.min(distances / (r[center] + r[neighbor])))


def too_close(structure: Structure, factor: float) -> bool:
    """Whether any two atoms (periodic images included) sit closer than ``factor``
    times the sum of their covalent radii."""
    return closest_approach(structure) < factor

"""Several generators as one: their candidates interleaved into a single ordered pool."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest

from pymatgen.core import Composition

from xtalloop.generators.base import Candidate, Generator, derived_seeds


@dataclass
class PooledGenerator:
    """Candidates of several generators, taken in turn: first of each, second of each...

    Put the generator you trust most first: it provides the first candidate
    (what a top-1 pick sees). A generator that has fewer candidates to give
    (prototype substitution for a composition without templates) leaves its
    share to the others, so ``n`` candidates come back whenever together they
    have them: templates where they exist, a trained model everywhere.

    Parameters
    ----------
    generators
        The generators, in order of precedence.
    name
        Name recorded in results (each candidate keeps its own generator's name).
    """

    generators: list[Generator]
    name: str = "pooled"

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        """Up to ``n`` candidates, interleaved; each generator is asked for all ``n``."""
        if n <= 0:
            return []
        seeds = derived_seeds(seed, len(self.generators))
        batches = [g.generate(composition, n, s) for g, s in zip(self.generators, seeds,
                                                                strict=True)]
        pool = [c for group in zip_longest(*batches) for c in group if c is not None]
        return pool[:n]

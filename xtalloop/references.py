"""Candidate structures for elemental reference phases.

The hull of a composition needs the energies of its elements computed with
the same energy model (or the same DFT settings). For each element we build
the common elemental prototypes (fcc, bcc, hcp, diamond, simple cubic) at a
volume estimated from the atomic radius, and for the elements that are
diatomic molecules under standard conditions a dimer in a box; the model
relaxes them all and the lowest one is the reference.
"""

from __future__ import annotations

from pymatgen.core import Element, Lattice, Structure

DIATOMIC = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}
"""Bond lengths (Å) of elements whose standard state is a diatomic molecule."""

MOLECULE_BOX = 7.0
"""Edge (Å) of the cubic cell holding a reference dimer."""


def _radius(element: Element) -> float:
    r = element.atomic_radius or element.atomic_radius_calculated or 1.5
    return float(r)


def is_molecular(structure: Structure) -> bool:
    """Whether a reference structure is a dimer in a box (no cell relaxation)."""
    return len(structure) == 2 and structure.lattice.abc[0] >= MOLECULE_BOX - 1e-6 and len(
        structure.composition
    ) == 1 and structure.composition.elements[0].symbol in DIATOMIC


def elemental_prototypes(symbol: str) -> list[Structure]:
    """Starting structures for the reference phase of one element."""
    element = Element(symbol)
    if symbol in DIATOMIC:
        d = DIATOMIC[symbol] / MOLECULE_BOX
        return [
            Structure(
                Lattice.cubic(MOLECULE_BOX),
                [symbol, symbol],
                [[0.5 - d / 2, 0.5, 0.5], [0.5 + d / 2, 0.5, 0.5]],
            )
        ]
    r = _radius(element)
    fcc_a = 2 * 2**0.5 * r
    bcc_a = 4 * r / 3**0.5
    diamond_a = 8 * r / 3**0.5
    return [
        Structure(Lattice.cubic(fcc_a), [symbol] * 4,
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        Structure(Lattice.cubic(bcc_a), [symbol] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.hexagonal(2 * r, 2 * r * (8 / 3) ** 0.5), [symbol] * 2,
                  [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
        Structure(Lattice.cubic(diamond_a), [symbol] * 8,
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                   [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75],
                   [0.25, 0.75, 0.75]]).get_primitive_structure(),
        Structure(Lattice.cubic(2 * r), [symbol], [[0, 0, 0]]),
    ]

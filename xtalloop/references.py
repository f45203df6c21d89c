"""Candidate structures for elemental reference phases.

The hull of a composition needs the energies of its elements computed with the
same energy model (or the same DFT settings). For each element we build the
common elemental prototypes (fcc, bcc, hcp, diamond, simple cubic) at a volume
estimated from the atomic radius, then the other elemental ground states of the
element and its family in the AFLOW prototype library (alpha As, alpha Se, black
P, graphite, beta Sn, alpha Ga, dhcp La...: :data:`GROUND_STATE_PROTOTYPES`,
:data:`FAMILIES`) with their nearest neighbours at twice the element's radius;
for the elements that are diatomic molecules under standard conditions a dimer
in a box. The model relaxes them all, and the lowest one (the smallest cell
within 2 meV/atom) is the reference. The five simple prototypes alone left the
reference of an element whose ground state is a chain, layer or puckered net
(Se, P, As, C, Ga) up to 0.23 eV/atom too high under CHGNet, and every formation
energy with it too low: CHGNet's formation-energy MAE on MP-20 val went 0.077 ->
0.058 eV/atom with these starts (``xtalloop benchmark prefilter``; 0.049 with
all 15 for every element, at 4x the time).
"""

from __future__ import annotations

import functools
import warnings

from pymatgen.core import Element, Lattice, Structure

DIATOMIC = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}
"""Bond lengths (Å) of elements whose standard state is a diatomic molecule."""

MOLECULE_BOX = 7.0
"""Edge (Å) of the cubic cell holding a reference dimer."""

N_SIMPLE_PROTOTYPES = 5
"""fcc, bcc, hcp, diamond, simple cubic: the first starts of every non-molecular element."""

GROUND_STATE_PROTOTYPES = (
    "A_hR2_166_c",  # alpha As (A7): As, Sb, Bi
    "A_hP3_152_a",  # alpha Se: Se, Te
    "A_oC8_64_f",  # black P; alpha Ga
    "A_hP4_194_bc",  # graphite
    "A_tI4_141_a",  # beta Sn
    "A_hP4_194_ac",  # alpha La (dhcp): La, Pr, Nd, Am
    "A_hR3_166_ac",  # alpha Sm
    "A_oC4_63_c",  # alpha U
    "A_tI2_139_a",  # In; Pa
    "A_hR1_166_a",  # alpha Hg; beta Po
    "A_tP4_129_ac",  # beta Np
)
"""AFLOW labels of the elemental ground states at ambient conditions that are not fcc,
bcc, hcp, diamond or simple cubic (the simple set), in cells of at most four sites."""


def _radius(element: Element) -> float:
    with warnings.catch_warnings():  # "no data" for a few actinides: the fallback serves
        warnings.simplefilter("ignore")
        r = element.atomic_radius or element.atomic_radius_calculated or 1.5
    return float(r)


def is_molecular(structure: Structure) -> bool:
    """Whether a reference structure is a dimer in a box (no cell relaxation)."""
    return len(structure) == 2 and structure.lattice.abc[0] >= MOLECULE_BOX - 1e-6 and len(
        structure.composition
    ) == 1 and structure.composition.elements[0].symbol in DIATOMIC


FAMILIES = {"Sb": ("As",), "Bi": ("As",), "Te": ("Se",), "S": ("Se",), "Pr": ("La",),
            "Nd": ("La",), "Pm": ("La",), "Am": ("La",), "Cm": ("La",), "Cf": ("La",)}
"""Elements whose ground state is the structure type of another element's AFLOW entry."""


@functools.lru_cache(maxsize=1)
def _aflow_unaries() -> tuple[tuple[str, Structure], ...]:
    """``(element, structure)`` of the library's :data:`GROUND_STATE_PROTOTYPES` entries."""
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    found, seen = [], set()
    for entry in AFLOW_PROTOTYPE_LIBRARY:
        structure = entry["snl"].structure
        label = entry["tags"]["aflow"]
        if label not in GROUND_STATE_PROTOTYPES or len(structure.composition) != 1:
            continue
        element = structure.composition.elements[0].symbol
        if element in DIATOMIC:
            continue  # molecular crystals (alpha I shares black P's label)
        key = (label, element, round(structure.volume / len(structure), 1))
        if key not in seen:
            seen.add(key)
            found.append((element, structure))
    return tuple(found)


def aflow_elemental_starts(symbol: str) -> list[Structure]:
    """The AFLOW ground states of ``symbol`` and of its structure family (:data:`FAMILIES`),
    re-dressed as ``symbol`` with nearest neighbours at twice its radius.

    Only the element's own structure types: every other one costs a relaxation per
    element for every model (tried: all 15 for every element tripled the reference time
    and the test suite's), and the elements whose references moved (Se, P, C, As, Ga)
    are their own entries. Scaling the nearest-neighbour distance (not the volume by
    the radii cubed) keeps every atom bonded.
    """
    diameter = 2 * _radius(Element(symbol))
    sources = {symbol, *FAMILIES.get(symbol, ())}
    starts = []
    for element, proto in _aflow_unaries():
        if element not in sources:
            continue
        start = proto.copy()
        start.replace_species({proto.composition.elements[0]: Element(symbol)})
        start.scale_lattice(start.volume * (diameter / _nearest_distance(start)) ** 3)
        starts.append(start)
    return starts


def _nearest_distance(structure: Structure) -> float:
    """Shortest interatomic distance, periodic images included."""
    _, _, _, distances = structure.get_neighbor_list(2 * max(structure.lattice.abc))
    return float(distances[distances > 1e-6].min())


def elemental_prototypes(symbol: str, library: bool = True) -> list[Structure]:
    """Starting structures for the reference phase of one element.

    ``library=False`` gives the five simple prototypes only (cheaper; the GPAW data sets).
    """
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
    ] + (aflow_elemental_starts(symbol) if library else [])

"""Fixed tables of the Wyckoff model: Wyckoff positions of all 230 groups, element features.

Both are computed from PyXtal's and pymatgen's own data, so a checkpoint stores
only learned weights and a model rebuilt from its JSON settings sees the same
tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Largest atomic number the model has an embedding for.
MAX_Z = 103

_LATTICE_TYPES = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal",
                  "hexagonal", "cubic")


@dataclass(frozen=True)
class WyckoffTable:
    """Every Wyckoff position of every space group, numbered globally.

    ``offset[sg]`` is the global id of ``Group(sg)[0]``; position ``index`` of
    group ``sg`` has global id ``offset[sg] + index``.
    """

    offset: np.ndarray        # (231,) int; offset[0] unused
    count: np.ndarray         # (231,) positions per group
    multiplicity: np.ndarray  # (n_wp,) atoms in the conventional cell per orbit
    dof: np.ndarray           # (n_wp,) free coordinates
    group_of: np.ndarray      # (n_wp,) space group of each position
    lattice_type: np.ndarray  # (231,) index into _LATTICE_TYPES
    centering: np.ndarray     # (231,) lattice points per conventional cell

    @property
    def size(self) -> int:
        return int(len(self.multiplicity))

    def features(self) -> np.ndarray:
        """Per-position features: log multiplicity, dof one-hot, lattice type one-hot."""
        mult = np.log(self.multiplicity)[:, None] / 5.0
        dof = np.eye(4)[self.dof]
        lt = np.eye(len(_LATTICE_TYPES))[self.lattice_type[self.group_of]]
        return np.concatenate([mult, dof, lt], axis=1).astype(np.float32)


@lru_cache(maxsize=1)
def wyckoff_table() -> WyckoffTable:
    """The global Wyckoff table (built once per process, about 2 s)."""
    from pyxtal.symmetry import Group

    offset = np.zeros(231, int)
    count = np.zeros(231, int)
    lattice_type = np.zeros(231, int)
    centering = np.ones(231, int)
    mult, dof, group_of = [], [], []
    for sg in range(1, 231):
        g = Group(sg)
        offset[sg] = len(mult)
        count[sg] = len(g)
        lattice_type[sg] = _LATTICE_TYPES.index(g.lattice_type)
        centering[sg] = {"P": 1, "I": 2, "C": 2, "A": 2, "B": 2, "R": 3, "F": 4}.get(
            g.symbol[0], 1)
        for wp in g:
            mult.append(int(wp.multiplicity))
            dof.append(int(wp.get_dof()))
            group_of.append(sg)
    return WyckoffTable(offset, count, np.array(mult), np.array(dof), np.array(group_of),
                        lattice_type, centering)


def lattice_type_name(space_group: int) -> str:
    """``"cubic"``, ``"hexagonal"``... of a space group."""
    return _LATTICE_TYPES[int(wyckoff_table().lattice_type[space_group])]


@lru_cache(maxsize=1)
def element_features() -> np.ndarray:
    """(MAX_Z + 1, 8) float32 features per element: row, group, electronegativity, radii...

    Rare elements have few training crystals; these features let the model
    place them like their chemical neighbours.
    """
    import warnings

    from pymatgen.core import Element

    table = np.zeros((MAX_Z + 1, 8), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, MAX_Z + 1):
            el = Element.from_Z(z)
            x = el.X if el.X == el.X else 0.0  # NaN for noble gases
            radius = el.atomic_radius or el.atomic_radius_calculated or 1.5
            group = el.group if el.group is not None else 3
            table[z] = [el.row / 7, group / 18, x / 4, float(radius) / 2.5,
                        float(el.is_metal), float(el.is_transition_metal),
                        float(el.is_rare_earth), z / MAX_Z]
    return table

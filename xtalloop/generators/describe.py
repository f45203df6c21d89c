"""One-line descriptions of generated structures (formula, space group, size).

Used by ``xtalloop generator sample`` for both the diffusion and the Wyckoff
generator, so their listings read alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymatgen.core import Structure


def space_group(structure: Structure, symprec: float) -> tuple[str, int]:
    """Space-group symbol and number at ``symprec`` (``("?", 0)`` if spglib fails)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        return analyzer.get_space_group_symbol(), analyzer.get_space_group_number()
    except Exception:  # degenerate samples (overlapping atoms, flat cells)
        return "?", 0



def cell_formula(structure: Structure) -> str:
    """Formula of the whole cell without counts of one, e.g. ``Li6P2S8`` or ``NaCl``."""
    tokens = structure.composition.formula.split()  # electronegativity order, e.g. "Na1 Cl1"
    return "".join(t[:-1] if t[-1] == "1" and not t[-2].isdigit() else t for t in tokens)



def sample_line(name: str, structure: Structure, symprec: float) -> str:
    """``file  formula  space group (number)  N atoms`` for one sampled structure."""
    symbol, number = space_group(structure, symprec)
    formula = cell_formula(structure)
    return f"{name:<28s} {formula:<16s} {symbol + f' ({number})':<16s} {len(structure):3d} atoms"

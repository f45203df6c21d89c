"""Energy above the convex hull with pymatgen's PhaseDiagram."""

from __future__ import annotations

from collections.abc import Sequence

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition


def energies_above_hull(
    candidates: Sequence[tuple[Composition, float]],
    references: Sequence[tuple[Composition, float]],
) -> list[float]:
    """Energy above the hull (eV/atom) of each candidate.

    Parameters
    ----------
    candidates
        ``(composition, total energy in eV)`` of each structure to place.
    references
        ``(composition, total energy)`` of the reference phases (at least one
        per element), computed with the same energy model or DFT settings.

    Returns
    -------
    list of float
        One value per candidate, in order; the candidates themselves are part
        of the hull, so the most stable one sits at 0 when it is below the
        references.
    """
    entries = [PDEntry(c, e, name="candidate") for c, e in candidates]
    ref_entries = [PDEntry(c, e, name="reference") for c, e in references]
    diagram = PhaseDiagram(entries + ref_entries)
    return [float(diagram.get_e_above_hull(entry, allow_negative=False)) for entry in entries]

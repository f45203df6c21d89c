"""What every DFT backend gives the validate stage: one maker interface, one result shape."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pymatgen.core import Structure


class DftParseError(ValueError):
    """A DFT calculation finished but its result cannot be used (the reason is the message)."""


@runtime_checkable
class DftMaker(Protocol):
    """A jobflow maker of one structure's DFT validation (GPAW, VASP, ...).

    ``make`` returns a Job or Flow whose output ``parse_output`` turns into the
    result dictionary the validate stage stores: ``structure``, ``energy`` and
    ``energy_per_atom`` (eV, the energies that enter hulls), ``forces``,
    ``stress_kbar``, ``converged``, ``scf_remedies``, ``n_ionic_steps``,
    ``elapsed_time``, ``dir_name``, ``code_version`` and ``trajectory``.
    """

    name: str
    code: str

    def make(self, structure: Structure) -> Any: ...

    def settings_for(self, structure: Structure) -> dict[str, Any]: ...

    def settings_key(self) -> str: ...

    def parse_output(self, task: Any) -> dict[str, Any] | None: ...


def plain(value: Any) -> Any:
    """Arrays and nested sequences as plain lists (for JSON and the store)."""
    if value is None:
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

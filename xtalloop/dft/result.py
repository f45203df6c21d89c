"""What every DFT backend gives the validate stage: one maker interface, one result shape."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pymatgen.core import Structure


#: What atomate2 keeps per ionic step in the job document: the energy only. The whole
#: trajectory (structures, forces, stress) is stored once, in the data store
#: (``store_trajectory``); atomate2's default repeated it, structures included, in
#: ``output.ionic_steps``: 25 of the 36 MB of a campaign's job documents after two
#: rounds. The embedded store decodes every job document on each lookup by uuid
#: (montydb has no index), so that copy made every job of a long loop slower.
IONIC_STEP_DATA: tuple[str, ...] = ("energy",)


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


def ase_task_result(task: Any) -> dict[str, Any] | None:
    """The backend-independent part of the result dict from an atomate2 ASE task document.

    GPAW and the ML validator both relax through atomate2's ASE makers; each
    adds what only it knows (``scf_remedies``, ``code_version``, ...). ``None``
    when the relaxation produced no document (a failed job).
    """
    if task is None or task.output is None or task.output.energy is None:
        return None
    structure = task.structure
    traj = (task.objects or {}).get("trajectory")
    trajectory = [{
        "structure": traj.get_structure(i).as_dict(),
        "energy": props.get("energy"),
        "forces": plain(props.get("forces")),
        "stress": plain(props.get("stress")),
    } for i, props in enumerate(getattr(traj, "frame_properties", None) or [])]
    return {
        "structure": structure,
        "energy": float(task.output.energy),
        "energy_per_atom": float(task.output.energy) / len(structure),
        "forces": plain(task.output.forces),
        "stress_kbar": plain(task.output.stress),
        # the optimiser's verdict (forces and, with the cell, stress) sets the state
        "converged": bool(task.is_force_converged)
        and str(getattr(task.state, "value", task.state)) == "successful",
        "n_ionic_steps": task.output.n_steps,
        "elapsed_time": task.output.elapsed_time,
        "dir_name": task.dir_name,
        "trajectory": trajectory,
    }

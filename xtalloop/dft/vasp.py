"""VASP validation through atomate2's Materials Project makers (double relax + static).

The flow is atomate2's :class:`~atomate2.vasp.flows.mp.MPGGADoubleRelaxStaticMaker`:
two PBE relaxations and a static calculation with the MP input sets (``MPRelaxSet``,
``MPStaticSet``: 520 eV, MP POTCARs, +U on the oxides and fluorides of MP's
transition metals), run through custodian, which applies VASP's standard error
remedies. The final static energy is corrected with pymatgen's
:class:`~pymatgen.entries.compatibility.MaterialsProject2020Compatibility`, so
that hull energies can be mixed with the Materials Project's own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker
from pymatgen.core import Structure

from xtalloop.dft.result import DftParseError, plain

logger = logging.getLogger(__name__)

COMPATIBILITY_SCHEMES = ("MP2020", "none")

#: INCAR tags that change how VASP runs, not what it computes: left out of the settings key.
PERFORMANCE_TAGS = frozenset({"NCORE", "NPAR", "KPAR", "NSIM", "LPLANE", "LWAVE", "LCHARG",
                              "LVTOT", "LAECHG", "LELF", "LORBIT", "NWRITE"})


@dataclass
class VaspValidationMaker(Maker):
    """PBE double relaxation + static of one structure with MP-compatible VASP settings.

    Parameters
    ----------
    name
        Name of the flows made.
    incar_updates
        INCAR tags applied on top of the MP input sets of every step (e.g.
        ``{"NCORE": 8}``). All but the performance tags (:data:`PERFORMANCE_TAGS`)
        enter the settings key: results differing in them are never compared.
    static
        Finish with a static calculation (MP's final energy) after the relaxations.
    compatibility
        ``"MP2020"``: correct energies with MaterialsProject2020Compatibility
        (anion and +U corrections); ``"none"``: raw VASP energies.
    vasp_cmd
        Command that runs VASP (``None``: atomate2's ``VASP_CMD`` setting).
    custodian_max_errors
        Errors custodian may correct before a step fails.
    """

    name: str = "VASP MP GGA relax"
    incar_updates: dict[str, Any] = field(default_factory=dict)
    static: bool = True
    compatibility: str = "MP2020"
    vasp_cmd: str | None = None
    custodian_max_errors: int = 5

    code = "vasp"

    def __post_init__(self) -> None:
        if self.compatibility not in COMPATIBILITY_SCHEMES:
            raise ValueError(f"compatibility must be one of {COMPATIBILITY_SCHEMES}, "
                             f"not {self.compatibility!r}")

    def atomate2_maker(self) -> Maker:
        """atomate2's MP GGA double relax (+ static) maker with this maker's settings."""
        from atomate2.vasp.flows.mp import MPGGADoubleRelaxStaticMaker
        from atomate2.vasp.jobs.base import BaseVaspMaker
        from atomate2.vasp.powerups import update_user_incar_settings

        maker = MPGGADoubleRelaxStaticMaker()
        if not self.static:
            maker.static_maker = None
        if self.incar_updates:
            maker = update_user_incar_settings(maker, self.incar_updates)
        run_kwargs: dict[str, Any] = {"max_errors": self.custodian_max_errors}
        if self.vasp_cmd:
            run_kwargs["vasp_cmd"] = self.vasp_cmd
        return maker.update_kwargs(
            {"_set": {f"run_vasp_kwargs->{k}": v for k, v in run_kwargs.items()}},
            class_filter=BaseVaspMaker, dict_mod=True)

    def make(self, structure: Structure) -> Flow:
        """The relax (+ static) flow of ``structure``; its output is the last step's TaskDoc."""
        flow = self.atomate2_maker().make(structure)
        flow.name = self.name
        return flow

    def settings_for(self, structure: Structure) -> dict[str, Any]:
        """The settings recorded with a result for ``structure``."""
        return {
            "code": "vasp",
            "workflow": "MP GGA double relax" + (" + static" if self.static else ""),
            "input_sets": ["MPRelaxSet", *(["MPStaticSet"] if self.static else [])],
            "functional": "PBE",
            "incar_updates": dict(self.incar_updates),
            "compatibility": self.compatibility,
        }

    def settings_key(self) -> str:
        """A short hash of the settings that decide whether two energies are comparable."""
        physics = {k: v for k, v in self.incar_updates.items() if k not in PERFORMANCE_TAGS}
        rule = {"code": "vasp", "sets": "MP GGA", "static": self.static,
                "incar_updates": physics, "compatibility": self.compatibility}
        digest = hashlib.sha256(json.dumps(rule, sort_keys=True, default=str).encode())
        return "vasp-mp-" + digest.hexdigest()[:10]

    def parse_output(self, task: Any) -> dict[str, Any] | None:
        """Final structure, corrected energy, forces, stress and steps of a VASP TaskDoc.

        Returns ``None`` when the flow produced no document (a failed step).

        Raises
        ------
        DftParseError
            When the calculation did not finish successfully or the
            compatibility scheme rejects it (wrong functional or POTCARs).
        """
        if task is None or task.output is None or task.output.energy is None:
            return None
        state = str(getattr(task.state, "value", task.state))
        if state != "successful":
            raise DftParseError(f"VASP task state is {state!r}")
        structure: Structure = task.output.structure
        raw_energy = float(task.output.energy)
        energy, corrections = raw_energy, {}
        if self.compatibility == "MP2020":
            energy, corrections = mp2020_corrected_energy(task.entry)
        calc = task.calcs_reversed[0] if task.calcs_reversed else None
        steps = list(calc.output.ionic_steps or []) if calc is not None else []
        trajectory = [{
            "structure": step.structure.as_dict() if step.structure is not None else None,
            "energy": step.e_0_energy,
            "forces": plain(step.forces),
            "stress": plain(step.stress),
        } for step in steps]
        return {
            "structure": structure,
            "energy": energy,
            "energy_per_atom": energy / len(structure),
            "energy_uncorrected": raw_energy,
            "energy_corrections": corrections,
            "forces": plain(task.output.forces),
            "stress_kbar": plain(task.output.stress),
            "converged": True,
            "scf_remedies": custodian_errors(task.custodian),
            "n_ionic_steps": len(steps),
            "elapsed_time": getattr(task.run_stats.get("overall"), "elapsed_time", None)
            if task.run_stats else None,
            "dir_name": task.dir_name,
            "code_version": task.vasp_version or "unknown",
            "trajectory": trajectory,
        }


def mp2020_corrected_energy(entry: Any) -> tuple[float, dict[str, float]]:
    """Total energy of ``entry`` after MaterialsProject2020Compatibility, and its corrections.

    Raises
    ------
    DftParseError
        If the scheme rejects the entry (not PBE/PBE+U with MP's POTCARs).
    """
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    if entry is None:
        raise DftParseError("the VASP task has no computed entry to correct")
    processed = MaterialsProject2020Compatibility(check_potcar=True).process_entry(
        entry.copy(), clean=True)
    if processed is None:
        raise DftParseError("MaterialsProject2020Compatibility rejected the VASP result "
                            "(not PBE/PBE+U with the MP POTCARs)")
    corrections = {adj.name: float(adj.value) for adj in processed.energy_adjustments}
    return float(processed.energy), corrections


def custodian_errors(custodian: Any) -> list[str]:
    """Names of the errors custodian corrected during the calculation, in order."""
    errors: list[str] = []
    for run in custodian or []:
        corrections = run.get("corrections") if isinstance(run, dict) else getattr(
            run, "corrections", None)
        for correction in corrections or []:
            errors.extend(str(e) for e in (correction.get("errors") or []))
    return errors


def check_vasp(vasp_cmd: str | None) -> None:
    """Raise a one-line :class:`~xtalloop.errors.XtalloopError` unless VASP can run here.

    Checks that the VASP command is on the ``PATH`` and that pymatgen knows
    where the POTCARs are (``PMG_VASP_PSP_DIR``).
    """
    import shutil

    from pymatgen.core import SETTINGS as PMG_SETTINGS

    from xtalloop.errors import XtalloopError

    if vasp_cmd is None:
        from atomate2 import SETTINGS

        vasp_cmd = SETTINGS.VASP_CMD
    program = vasp_cmd.split()[-1] if vasp_cmd else ""
    if not program or shutil.which(program) is None:
        raise XtalloopError(
            f"VASP command {vasp_cmd!r} not found: set dft.vasp.vasp_cmd (or "
            "ATOMATE2_VASP_CMD), or submit to a cluster with `xtalloop submit`")
    if not PMG_SETTINGS.get("PMG_VASP_PSP_DIR"):
        raise XtalloopError("pymatgen does not know where the VASP POTCARs are: "
                            "run `pmg config --add PMG_VASP_PSP_DIR /path/to/potcars`")

"""GPAW plane-wave DFT relaxations as atomate2 ASE makers."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase.optimize import BFGS
from atomate2.ase.jobs import AseRelaxMaker
from atomate2.ase.schemas import AseResult
from atomate2.ase.utils import AseRelaxer
from emmet.core.types.enums import StoreTrajectoryOption
from pymatgen.core import Element, Molecule, Structure

from xtalloop.dft.result import IONIC_STEP_DATA, ase_task_result
from xtalloop.references import is_molecular

logger = logging.getLogger(__name__)

HARD_ELEMENTS = {"B", "C", "N", "O", "F"}
"""First-row p elements: their localised 2p states need a high plane-wave cutoff."""

MAGNETIC_ELEMENTS = {"Cr", "Mn", "Fe", "Co", "Ni", "Gd"}
"""Elements whose compounds are started spin-polarised."""


#: What to try, in order, when GPAW's self-consistency loop does not converge: gentler
#: density mixing and more iterations (custodian's remedy for VASP's ALGO/AMIX). None of
#: them changes the converged energy, so results stay comparable (same settings key);
#: smearing, which would change it, is left alone.
SCF_REMEDIES: tuple[dict[str, Any], ...] = (
    {"name": "mixing-0.05", "mixer": (0.05, 5, 50.0), "maxiter": 600},
    {"name": "mixing-0.02", "mixer": (0.02, 8, 100.0), "maxiter": 1000},
)


def plane_wave_cutoff(elements: list[str]) -> float:
    """A safe plane-wave cutoff (eV) for a set of elements.

    First-row p elements and 3d transition metals need 600 eV (MgO at 350 eV
    gives a stress error of ~90 GPa); everything else converges at 500 eV.
    """
    hard = any(
        el in HARD_ELEMENTS or Element(el).is_transition_metal and Element(el).row == 4
        for el in elements
    )
    return 600.0 if hard else 500.0


@dataclass
class GpawRelaxMaker(AseRelaxMaker):
    """Relax a structure with GPAW in plane-wave mode (PBE by default).

    The calculator is built per structure: the cutoff follows the elements
    unless ``ecut`` is set, k-points follow the cell at ``kpoint_density``
    (points per Å⁻¹), a dimer in a box (a reference molecule) is computed at
    the Γ point with a fixed cell, and spin polarisation is switched on for
    magnetic elements and O₂.

    Parameters
    ----------
    ecut
        Plane-wave cutoff (eV); ``None`` picks it from the elements.
    kpoint_density
        Monkhorst-Pack density in points per Å⁻¹ (GPAW's ``kpts={"density": ...}``).
    xc
        Exchange-correlation functional.
    smearing_width
        Fermi-Dirac smearing (eV).
    spin_polarized
        Force spin polarisation on or off; ``None`` decides from the elements.
    step_limit_restarts
        Times a relaxation that ran out of ``steps`` goes on from its last structure.
    checkpoint_store
        A dumped :class:`~xtalloop.config.StoreConfig`: every ionic step is saved
        there under the job's uuid, and a rerun of a killed job starts from the
        last saved step (``None``: no checkpoints).
    progress
        Show a progress bar of ionic steps.
    """

    name: str = "GPAW relax"
    code = "gpaw"
    ecut: float | None = None
    kpoint_density: float = 3.0
    xc: str = "PBE"
    smearing_width: float = 0.05
    spin_polarized: bool | None = None
    fix_symmetry: bool = True
    steps: int = 60
    relax_kwargs: dict = field(default_factory=lambda: {"fmax": 0.03})
    store_trajectory: StoreTrajectoryOption = StoreTrajectoryOption.PARTIAL
    ionic_step_data: tuple[str, ...] | None = IONIC_STEP_DATA
    step_limit_restarts: int = 2
    checkpoint_store: dict[str, Any] | None = None
    progress: bool = True

    def settings_for(self, structure: Structure) -> dict[str, Any]:
        """The GPAW settings this maker uses for ``structure``, fully resolved."""
        elements = sorted({el.symbol for el in structure.composition.elements})
        molecular = is_molecular(structure)
        spin = self.spin_polarized
        if spin is None:
            spin = bool(MAGNETIC_ELEMENTS & set(elements)) or (molecular and elements == ["O"])
        return {
            "code": "gpaw",
            "mode": "pw",
            "xc": self.xc,
            "ecut": self.ecut or plane_wave_cutoff(elements),
            "kpts": {"size": [1, 1, 1]} if molecular else {
                "density": self.kpoint_density, "gamma": True},
            "smearing": {"name": "fermi-dirac", "width": self.smearing_width},
            "spin_polarized": spin,
            "relax_cell": self.relax_cell and not molecular,
            "fmax": self.relax_kwargs.get("fmax", 0.1),
            "steps": self.steps,
        }

    def settings_key(self) -> str:
        """A short hash of the settings that decide whether two energies are comparable."""
        rule = {
            "code": "gpaw", "xc": self.xc, "ecut": self.ecut or "auto",
            "kpoint_density": self.kpoint_density, "smearing_width": self.smearing_width,
        }
        return "gpaw-" + hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()[:10]

    @contextmanager
    def _checkpoints(self) -> Iterator[RelaxCheckpoints | None]:
        """This job's checkpoints in ``checkpoint_store`` (``None`` outside a job or without)."""
        from jobflow import CURRENT_JOB

        if not self.checkpoint_store or CURRENT_JOB.job is None:
            yield None
            return
        from xtalloop.config import StoreConfig
        from xtalloop.store.results import open_results

        with open_results(StoreConfig(**self.checkpoint_store)) as db:
            yield RelaxCheckpoints(db, CURRENT_JOB.job.uuid)

    def parse_output(self, task: Any) -> dict[str, Any] | None:
        """Final structure, energies, forces, stress and trajectory of an atomate2 ASE task doc.

        Returns ``None`` when the relaxation produced no document (a failed job).
        """
        result = ase_task_result(task)
        if result is None:
            return None
        tags = task.tags or []
        return {
            **result,
            "scf_remedies": [t.split(":", 1)[1] for t in tags if t.startswith("scf-remedy:")],
            "relax_continuations": sum(t.startswith("relax-continued:") for t in tags),
            "code_version": gpaw_version(),
        }

    def calculator_for(self, structure: Structure, remedy: dict[str, Any] | None = None):
        """The GPAW calculator for ``structure``, with an SCF ``remedy`` of :data:`SCF_REMEDIES`."""
        from gpaw import GPAW, PW, Mixer

        settings = self.settings_for(structure)
        kwargs: dict[str, Any] = {
            "mode": PW(settings["ecut"]),
            "xc": settings["xc"],
            "kpts": settings["kpts"],
            "occupations": settings["smearing"],
            "txt": str(Path.cwd() / "gpaw.txt"),
        }
        if settings["spin_polarized"]:
            kwargs["spinpol"] = True
        kwargs.update(self.calculator_kwargs)
        if remedy:
            kwargs["mixer"] = Mixer(*remedy["mixer"])
            kwargs["maxiter"] = remedy["maxiter"]
        return GPAW(**kwargs)

    def _get_calculator(self):
        """A structure-independent GPAW (atomate2 reads its name before ``run_ase``)."""
        from gpaw import GPAW, PW

        return GPAW(mode=PW(self.ecut or 500.0), xc=self.xc, txt=None)

    def run_ase(
        self, mol_or_struct: Structure | Molecule, prev_dir: str | Path | None = None
    ) -> AseResult:
        """Relax with BFGS, rescuing a non-converging SCF and a relaxation out of steps.

        When the SCF does not converge, the relaxation is retried with
        :data:`SCF_REMEDIES` (tags ``scf-remedy:<name>``); when the last one fails
        too, the SCF error is raised. When the relaxation uses up ``steps``
        without reaching ``fmax``, it goes on from its last structure with
        half-length BFGS steps, up to ``step_limit_restarts`` times (tags
        ``relax-continued:<n>``); the trajectory covers every step. With
        ``checkpoint_store``, a rerun of a job killed mid-relaxation starts from
        its last saved ionic step (tag ``restarted-from-step:<n>``).
        """
        # the maker may be shared by several jobs: start each relaxation without remedy tags
        self.tags = [t for t in (self.tags or []) if not t.startswith(
            ("scf-remedy:", "relax-continued:", "restarted-from-step:"))] or None
        with self._checkpoints() as checkpoints:
            if checkpoints is not None and (saved := checkpoints.last()) is not None:
                logger.warning("%s: restarting from ionic step %d of an interrupted run",
                               mol_or_struct.composition.reduced_formula, saved["step"])
                mol_or_struct = Structure.from_dict(saved["structure"])
                self.tags = [*(self.tags or []), f"restarted-from-step:{saved['step']}"]
            result = self._relax_steps(mol_or_struct, checkpoints)
            if checkpoints is not None:
                checkpoints.drop()
        return result

    def _relax_steps(self, mol_or_struct: Structure | Molecule,
                     checkpoints: RelaxCheckpoints | None) -> AseResult:
        result = self._relax_rescuing_scf(mol_or_struct, checkpoints)
        for restart in range(1, self.step_limit_restarts + 1):
            if result.converged or self.steps <= 1 or result.final_mol_or_struct is None:
                break
            logger.warning("%s: not relaxed to fmax in %d steps; continuing from the last "
                           "structure with smaller steps (%d)",
                           mol_or_struct.composition.reduced_formula, self.steps, restart)
            self.tags = [*(self.tags or []), f"relax-continued:{restart}"]
            more = self._relax_rescuing_scf(result.final_mol_or_struct, checkpoints, maxstep=0.1)
            if result.trajectory is not None and more.trajectory is not None:
                try:
                    joined = copy.deepcopy(result.trajectory)
                    joined.extend(more.trajectory)
                    more.trajectory = joined
                except (AttributeError, TypeError, ValueError) as exc:
                    logger.warning("could not join the relaxation trajectories: %s", exc)
            result = more
        return result

    def _relax_rescuing_scf(self, mol_or_struct: Structure | Molecule,
                            checkpoints: RelaxCheckpoints | None,
                            **optimizer_kwargs: Any) -> AseResult:
        try:
            from gpaw import ConvergenceError
        except ImportError:  # a stand-in calculator (tests): no GPAW SCF to rescue
            ConvergenceError = ()  # noqa: N806 - catches nothing

        for remedy in (None, *SCF_REMEDIES):
            try:
                return self._relax(mol_or_struct, remedy, checkpoints, **optimizer_kwargs)
            except ConvergenceError:
                if remedy is SCF_REMEDIES[-1]:
                    raise
                logger.warning("%s: SCF did not converge%s; retrying with gentler mixing",
                               mol_or_struct.composition.reduced_formula,
                               f" with {remedy['name']}" if remedy else "")
        raise AssertionError("unreachable")

    def _relax(self, mol_or_struct: Structure | Molecule, remedy: dict[str, Any] | None,
               checkpoints: RelaxCheckpoints | None = None,
               **optimizer_kwargs: Any) -> AseResult:
        from tqdm.auto import tqdm

        self._calculator = self.calculator_for(mol_or_struct, remedy)
        if remedy:
            self.tags = [*(self.tags or []), f"scf-remedy:{remedy['name']}"]
        if is_molecular(mol_or_struct):
            self.relax_cell = False
            self.fix_symmetry = False
        formula = mol_or_struct.composition.reduced_formula
        label = self.name if formula in self.name else f"{formula}: {self.name}"
        bar = tqdm(total=self.steps, desc=label, unit="step",
                   disable=not self.progress, leave=True)

        class ReportingBFGS(BFGS):
            def step(self, *args, **kwargs):
                super().step(*args, **kwargs)
                bar.update(1)
                if checkpoints is not None:  # the filter's atoms when the cell relaxes too
                    checkpoints.save(getattr(self.atoms, "atoms", self.atoms))

        relaxer = AseRelaxer(
            self._calculator,
            optimizer=ReportingBFGS,
            relax_cell=self.relax_cell,
            relax_shape=self.relax_shape,
            fix_symmetry=self.fix_symmetry,
            symprec=self.symprec,
        )
        try:
            result = relaxer.relax(mol_or_struct, steps=self.steps,
                                   **{"logfile": None, **self.relax_kwargs, **optimizer_kwargs})
            bar.total = bar.n = max(bar.n, 1)  # finished: show the bar full
            bar.refresh()
            return result
        finally:
            bar.close()


@dataclass
class RelaxCheckpoints:
    """The ionic steps of one job's relaxation, saved as they are taken."""

    db: Any
    job_uuid: str
    step: int = 0

    def last(self) -> dict[str, Any] | None:
        """The last step an earlier, interrupted run of this job saved."""
        saved = self.db.get_checkpoint(self.job_uuid)
        if saved is not None:
            self.step = int(saved["step"])
        return saved

    def save(self, atoms: Any) -> None:
        """Save the structure of the step just taken."""
        from pymatgen.io.ase import AseAtomsAdaptor

        self.step += 1
        self.db.save_checkpoint(self.job_uuid, AseAtomsAdaptor.get_structure(atoms).as_dict(),
                                self.step)

    def drop(self) -> None:
        """The relaxation finished: forget its checkpoint."""
        self.db.drop_checkpoint(self.job_uuid)


def gpaw_version() -> str:
    """GPAW's version, or ``"unknown"`` where it is not installed (recorded only)."""
    try:
        import gpaw
    except ImportError:
        return "unknown"
    return gpaw.__version__


def check_gpaw(elements: list[str], xc: str = "PBE") -> None:
    """Raise a one-line :class:`~xtalloop.errors.XtalloopError` unless GPAW runs these elements."""
    from xtalloop.errors import XtalloopError

    try:
        import gpaw  # noqa: F401
        from gpaw.setup_data import search_for_file
    except ImportError:
        raise XtalloopError(
            "GPAW is not installed: run `make demo` or `pip install 'xtalloop[dft]'`"
        ) from None
    for element in elements:
        try:
            search_for_file(f"{element}.{xc}")
        except (RuntimeError, FileNotFoundError):
            raise XtalloopError(
                f"no GPAW PAW setup for {element} ({xc}): install `gpaw-data`"
            ) from None

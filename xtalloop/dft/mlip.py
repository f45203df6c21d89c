"""An ML potential as the validator (``dft.code: mlip``), for screening before DFT.

A screening campaign validates the prefilter's picks with a stronger (or just
another) ML potential before spending DFT on them. :class:`MlipRelaxMaker` is
an atomate2 ASE relax maker like :class:`~xtalloop.dft.gpaw.GpawRelaxMaker`:
the validate stage, the store and the hulls treat it as any DFT backend. Its
settings key, ``mlip-<model>-<hash>``, keeps its energies out of every DFT hull
and apart from another model's.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomate2.ase.jobs import AseRelaxMaker
from atomate2.ase.schemas import AseResult
from atomate2.ase.utils import AseRelaxer
from emmet.core.types.enums import StoreTrajectoryOption
from pymatgen.core import Molecule, Structure

from xtalloop.dft.result import IONIC_STEP_DATA, ase_task_result
from xtalloop.references import is_molecular


@functools.lru_cache(maxsize=16)
def _identity(spec: str, mtime_ns: int) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from xtalloop.digest import file_sha256
    from xtalloop.models.mace_format import SUFFIX
    from xtalloop.models.pretrained import canonical_name, pretrained_version

    key = spec.strip()
    if key.lower() == "emt":
        import ase

        return {"name": "emt", "version": f"ase {ase.__version__}", "digest": None}
    pretrained = canonical_name(key)
    if pretrained == "chgnet":
        return {"name": "chgnet", "version": f"chgnet {version('chgnet')}", "digest": None}
    if pretrained is not None:  # its weights are those of its pinned package version
        return {"name": pretrained, "version": pretrained_version(pretrained), "digest": None}
    path = Path(key).expanduser()
    members = sorted(path.glob(f"*{SUFFIX}")) if path.is_dir() else [path]
    try:
        mace = f"mace-torch {version('mace-torch')}"
    except PackageNotFoundError:
        mace = "mace-torch unknown"
    return {
        "name": "mace-ensemble" if path.is_dir() else "mace",
        "version": mace,
        "digest": ",".join(f"sha256:{file_sha256(p)[:16]}" for p in members),
    }


def model_identity(spec: str) -> dict[str, Any]:
    """``name``, package ``version`` and file ``digest`` of the model ``spec`` names.

    Computed without loading the model (a loop builds its flows where the
    model may not run); a MACE file's digest is of its contents, so a moved
    file keeps its identity and a retrained one does not.
    """
    path = Path(spec.strip()).expanduser()
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    return _identity(spec, mtime)


@dataclass
class MlipRelaxMaker(AseRelaxMaker):
    """Relax a structure with an ML potential, as a DFT backend would.

    FIRE on ASE's ``FrechetCellFilter`` (atomate2's :class:`AseRelaxer`), the
    same relaxation as the prefilter's, with the model's ASE calculator; a
    dimer in a box (a reference molecule) keeps its cell.

    Parameters
    ----------
    model
        Any model the prefilter takes except ``registry``: ``chgnet``,
        ``sevennet`` (``sevennet:7net-0``), ``diep``, ``emt``, a MACE model
        file or a folder of them (an ensemble).
    device
        Torch device of a neural-network model.
    precision
        MACE precision (``float64`` or ``float32``); other models keep their own.
    """

    name: str = "MLIP relax"
    code = "mlip"
    model: str = "chgnet"
    device: str = "cpu"
    precision: str = "float64"
    steps: int = 300
    relax_kwargs: dict = field(default_factory=lambda: {"fmax": 0.03})
    store_trajectory: StoreTrajectoryOption = StoreTrajectoryOption.PARTIAL
    ionic_step_data: tuple[str, ...] | None = IONIC_STEP_DATA

    def _mace(self) -> bool:
        return model_identity(self.model)["name"].startswith("mace")

    def settings_for(self, structure: Structure) -> dict[str, Any]:
        """The model and relaxation settings this maker uses for ``structure``."""
        identity = model_identity(self.model)
        return {
            "code": "mlip",
            "model": self.model,
            "model_name": identity["name"],
            "model_version": identity["version"],
            "model_digest": identity["digest"],
            "precision": self.precision,
            "relax_cell": self.relax_cell and not is_molecular(structure),
            "fmax": self.relax_kwargs.get("fmax", 0.1),
            "steps": self.steps,
        }

    def settings_key(self) -> str:
        """``mlip-<model name>-<hash>``: only energies of the same model share a hull.

        The hash covers the model's identity (package version, file digest)
        and, for MACE, the precision; where the model file lives, the device
        and the relaxation settings do not change energies and are left out.
        """
        identity = model_identity(self.model)
        rule = {"code": "mlip", "name": identity["name"], "version": identity["version"],
                "digest": identity["digest"],
                "precision": self.precision if self._mace() else None}
        digest = hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()[:10]
        return f"mlip-{identity['name']}-{digest}"

    def _get_calculator(self):
        from xtalloop.models.energy_model import load_energy_model

        return load_energy_model(self.model, self.device, self.precision).calculator()

    def run_ase(self, mol_or_struct: Structure | Molecule,
                prev_dir: str | Path | None = None) -> AseResult:
        """Relax with FIRE; the cell too, unless the structure is a molecule in a box."""
        relaxer = AseRelaxer(
            self.calculator,
            relax_cell=self.relax_cell and not is_molecular(mol_or_struct),
            relax_shape=self.relax_shape,
            fix_symmetry=self.fix_symmetry,
            symprec=self.symprec,
            **self.optimizer_kwargs,
        )
        return relaxer.relax(mol_or_struct, steps=self.steps,
                             **{"logfile": None, **self.relax_kwargs})

    def parse_output(self, task: Any) -> dict[str, Any] | None:
        """The validate stage's result dict (as GPAW's) from an atomate2 ASE task doc.

        Returns ``None`` when the relaxation produced no document (a failed job).
        """
        result = ase_task_result(task)
        if result is None:
            return None
        return {**result, "scf_remedies": [],
                "code_version": model_identity(self.model)["version"]}


def check_mlip(model: str, device: str, precision: str, elements: list[str]) -> None:
    """Raise a one-line :class:`~xtalloop.errors.XtalloopError` unless the model has ``elements``.

    The model is loaded (as the validator's jobs will) and evaluated once on
    each element alone, so a model without parameters for one (EMT knows
    only a few metals, a MACE model its training elements) is found before
    any job runs.
    """
    from ase import Atoms

    from xtalloop.errors import XtalloopError
    from xtalloop.models.energy_model import load_energy_model

    energy_model = load_energy_model(model, device, precision)
    for element in elements:
        atoms = Atoms(element, cell=[3.0, 3.0, 3.0], pbc=True)
        try:
            energy_model.predict([atoms])
        except Exception as exc:  # noqa: BLE001 - the model's own words, on one line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise XtalloopError(f"dft.mlip.model {model}: cannot evaluate {element} "
                                f"({reason})") from None

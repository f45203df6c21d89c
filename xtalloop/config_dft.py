"""The ``dft`` section of a run configuration: GPAW, VASP or an ML potential as the validator."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from xtalloop.config_base import _check_model_spec, _Section
from xtalloop.config_checks import TorchDevice


class VaspSettings(_Section):
    """VASP through atomate2's MP GGA double relax + static (``dft.code: vasp``)."""

    incar_updates: dict[str, Any] = Field(
        default_factory=dict, description="INCAR tags on top of the MP input sets")
    static: bool = Field(True, description="finish with MP's static calculation")
    compatibility: Literal["MP2020", "none"] = Field(
        "MP2020", description="energy corrections (MaterialsProject2020Compatibility)")
    vasp_cmd: str | None = Field(None, description="e.g. 'srun vasp_std'; default: atomate2's")
    custodian_max_errors: int = Field(5, ge=0)

    @field_validator("incar_updates")
    @classmethod
    def _incar_tags(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in value if not re.fullmatch(r"[A-Z][A-Z0-9_]*", str(k))]
        if bad:
            raise ValueError(f"INCAR tags are upper case, e.g. NCORE: not {bad[0]!r}")
        return value


class MlipSettings(_Section):
    """An ML potential as the validator (``dft.code: mlip``): screening before DFT.

    The picks are relaxed with ``model`` (any model the prefilter takes but
    ``registry``; usually a stronger one than the prefilter's) through the
    same maker interface, store and hulls as DFT; the results carry a settings
    key ``mlip-<model>-<hash>``, so they never share a hull with DFT results.
    """

    model: str = Field("chgnet", description="'chgnet', 'sevennet', 'diep', 'emt', a MACE "
                       "model file or a "
                       "folder of MACE model files (an ensemble)")
    device: TorchDevice = "cpu"
    precision: Literal["float64", "float32"] = Field("float64", description="MACE precision")
    fmax: float = Field(0.03, gt=0, description="eV/Å")
    steps: int = Field(300, ge=1)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _check_model_spec(value, registry=False)


#: DFTConfig keys that set GPAW only (a configuration with another code must leave them out).
_GPAW_KEYS = ("xc", "ecut", "kpoint_density", "smearing_width", "fmax", "steps")


class DFTConfig(_Section):
    """Validation of the picks: GPAW plane waves (local) or VASP (clusters), via atomate2.

    ``xc``, ``ecut``, ``kpoint_density``, ``smearing_width``, ``fmax`` and
    ``steps`` set GPAW; ``vasp`` sets VASP, whose MP input sets fix the rest;
    ``code: mlip`` validates with an ML potential set by ``mlip`` instead.
    """

    code: Literal["gpaw", "vasp", "mlip"] = "gpaw"
    xc: Literal["PBE", "LDA", "PBEsol"] = "PBE"
    ecut: float | None = Field(None, gt=100, description="eV; null picks it from the elements")
    kpoint_density: float = Field(3.0, gt=0, description="k-points per Å⁻¹")
    smearing_width: float = Field(0.05, ge=0)
    fmax: float = Field(0.03, gt=0)
    steps: int = Field(60, ge=1)
    vasp: VaspSettings = VaspSettings()
    mlip: MlipSettings = MlipSettings()
    replace_failed: bool = Field(
        False, description="validate the next-ranked candidate in place of a failed pick")

    @model_validator(mode="after")
    def _settings_of_the_code(self) -> DFTConfig:
        """Settings of another code would be silently ignored: name the first one set.

        Set means changed from the default (not merely given), so that a dumped
        configuration validates again (a loop's rounds do so).
        """
        def changed(key: str) -> bool:
            return getattr(self, key) != type(self).model_fields[key].get_default(
                call_default_factory=True)

        if self.code != "mlip" and changed("mlip"):
            raise ValueError("mlip: only used with code: mlip")
        if self.code == "mlip":
            if changed("vasp"):
                raise ValueError("vasp: not used with code: mlip (the validator is set "
                                 "in dft.mlip)")
            for key in _GPAW_KEYS:
                if changed(key):
                    also = f"; use dft.mlip.{key}" if key in ("fmax", "steps") else ""
                    raise ValueError(f"{key}: a GPAW setting, not used with code: mlip{also}")
        return self

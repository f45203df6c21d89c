"""The DFT maker a run configuration's ``dft`` section describes."""

from __future__ import annotations

from typing import Any

from xtalloop.config import DFTConfig
from xtalloop.dft.result import DftMaker


def dft_maker(dft: DFTConfig, progress: bool = True,
              checkpoint_store: dict[str, Any] | None = None) -> DftMaker:
    """A :class:`~xtalloop.dft.gpaw.GpawRelaxMaker`, :class:`~xtalloop.dft.vasp.VaspValidationMaker`
    or (``code: mlip``) :class:`~xtalloop.dft.mlip.MlipRelaxMaker`.

    Parameters
    ----------
    dft
        The ``dft`` section of a run configuration.
    progress
        Show progress bars of ionic steps (GPAW).
    checkpoint_store
        A dumped store configuration where GPAW saves each ionic step, so that a
        killed job's rerun starts from its last step.
    """
    if dft.code == "mlip":
        from xtalloop.dft.mlip import MlipRelaxMaker

        mlip = dft.mlip
        return MlipRelaxMaker(model=mlip.model, device=mlip.device, precision=mlip.precision,
                              steps=mlip.steps, relax_kwargs={"fmax": mlip.fmax})
    if dft.code == "vasp":
        from xtalloop.dft.vasp import VaspValidationMaker

        vasp = dft.vasp
        return VaspValidationMaker(
            incar_updates=dict(vasp.incar_updates), static=vasp.static,
            compatibility=vasp.compatibility, vasp_cmd=vasp.vasp_cmd,
            custodian_max_errors=vasp.custodian_max_errors,
        )
    from xtalloop.dft.gpaw import GpawRelaxMaker

    return GpawRelaxMaker(
        ecut=dft.ecut, kpoint_density=dft.kpoint_density, xc=dft.xc,
        smearing_width=dft.smearing_width, steps=dft.steps,
        relax_kwargs={"fmax": dft.fmax}, checkpoint_store=checkpoint_store, progress=progress,
    )


def check_dft_runs_here(dft: DFTConfig, elements: list[str]) -> None:
    """Raise a one-line error unless the configured DFT code can run on this machine."""
    if dft.code == "mlip":
        from xtalloop.dft.mlip import check_mlip

        check_mlip(dft.mlip.model, dft.mlip.device, dft.mlip.precision, elements)
    elif dft.code == "vasp":
        from xtalloop.dft.vasp import check_vasp

        check_vasp(dft.vasp.vasp_cmd)
    else:
        from xtalloop.dft.gpaw import check_gpaw

        check_gpaw(elements, dft.xc)

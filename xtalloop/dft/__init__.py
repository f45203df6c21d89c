"""DFT validation through atomate2 makers."""

from xtalloop.dft.gpaw import GpawRelaxMaker, plane_wave_cutoff

__all__ = ["GpawRelaxMaker", "plane_wave_cutoff"]

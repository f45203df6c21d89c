"""The prefilter job: ML relaxation, deduplication, hull and top-k."""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Maker, job

from xtalloop.composition import parse_composition
from xtalloop.generators.base import Candidate
from xtalloop.rankers.ml_ranker import MLRanker, Ranking


@dataclass
class PrefilterMaker(Maker):
    """Rank one composition's candidates with an ML energy model.

    Parameters
    ----------
    name
        Job name.
    model
        ``"chgnet"`` (pretrained, offline), ``"emt"`` or a MACE ``.model`` file.
    device
        Torch device.
    fmax, steps
        Relaxation threshold (eV/Å) and step limit.
    top_k
        Distinct structures passed on to DFT.
    max_e_above_hull
        Drop picks further above the ML hull than this (eV/atom).
    progress
        Show progress bars.
    """

    name: str = "prefilter"
    model: str = "chgnet"
    device: str = "cpu"
    fmax: float = 0.05
    steps: int = 300
    top_k: int = 2
    max_e_above_hull: float | None = None
    progress: bool = True

    @job
    def make(self, formula: str, candidates: list[Candidate]) -> Ranking:
        """Relax ``candidates`` of ``formula`` and keep the ``top_k`` lowest-energy distinct ones."""
        ranker = MLRanker(
            model=self.model, device=self.device, fmax=self.fmax, steps=self.steps,
            top_k=self.top_k, max_e_above_hull=self.max_e_above_hull, progress=self.progress,
        )
        return ranker.rank(parse_composition(formula, charge_balance="off"), candidates)

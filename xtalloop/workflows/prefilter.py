"""The prefilter job: ML relaxation, deduplication, hull and top-k."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobflow import Maker, job

from xtalloop.composition import parse_composition
from xtalloop.generators.base import Candidate
from xtalloop.rankers.ml_ranker import MLRanker, Ranking

logger = logging.getLogger(__name__)


@dataclass
class PrefilterMaker(Maker):
    """Rank one composition's candidates with an ML energy model.

    Parameters
    ----------
    name
        Job name.
    model
        ``"chgnet"``, ``"sevennet"``, ``"diep"`` (pretrained, offline), ``"emt"``,
        a MACE ``.model`` file, a
        folder of them (an ensemble), or ``"registry"``: the newest promoted
        model of the store's registry, else ``base_model``.
    base_model
        The model ``"registry"`` stands for while nothing has been promoted.
    device
        Torch device.
    precision
        ``"float64"`` or ``"float32"`` for a MACE model.
    fmax, steps
        Relaxation threshold (eV/Å) and step limit.
    top_k
        Distinct structures passed on to DFT.
    max_e_above_hull
        Drop picks further above the ML hull than this (eV/atom).
    explore_weight
        With an ensemble, favour structures it disagrees on (see :class:`MLRanker`).
    rerank_model, rerank_top
        A second model that relaxes the ``rerank_top`` best distinct structures
        again and picks among them (``None``: none).
    prior_picks
        Of the ``top_k`` picks, this many in the generators' own ranking before the
        rest by energy (see :class:`MLRanker`).
    store
        A dumped :class:`~xtalloop.config.StoreConfig`: where the registry is.
    progress
        Show progress bars.
    """

    name: str = "prefilter"
    model: str = "chgnet"
    base_model: str = "chgnet"
    device: str = "cpu"
    precision: str = "float64"
    fmax: float = 0.05
    steps: int = 300
    top_k: int = 2
    max_e_above_hull: float | None = None
    explore_weight: float = 0.0
    rerank_model: str | None = None
    rerank_top: int = 8
    prior_picks: int = 0
    store: dict[str, Any] | None = None
    progress: bool = True

    @job
    def make(self, formula: str, candidates: list[Candidate]) -> Ranking:
        """Relax ``candidates`` of ``formula`` and keep ``top_k`` distinct ones: the
        ``prior_picks`` the generators rank first, then the lowest in energy."""
        from xtalloop.learn.registry import resolve_model

        composition = parse_composition(formula, charge_balance="off")
        spec, registry_id = resolve_model(self.model, self.base_model, self.store,
                                          [el.symbol for el in composition.elements])
        ranker = MLRanker(
            model=spec, device=self.device, precision=self.precision, fmax=self.fmax,
            steps=self.steps,
            top_k=self.top_k, max_e_above_hull=self.max_e_above_hull,
            explore_weight=self.explore_weight, rerank_model=self.rerank_model,
            rerank_top=self.rerank_top, prior_picks=self.prior_picks, progress=self.progress,
        )
        ranking = ranker.rank(composition, candidates)
        funnel = ranking.funnel
        logger.info("%s: %d of %d candidates relaxed by %s, %d distinct, %d picked", formula,
                    funnel.get("relaxed", 0), funnel.get("generated", len(candidates)),
                    ranking.energy_model.get("name", spec), funnel.get("unique", 0),
                    funnel.get("picked", 0))
        if registry_id:
            ranking.energy_model = {**ranking.energy_model, "registry_id": registry_id}
        return ranking

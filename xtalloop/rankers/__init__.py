"""Rank candidates with machine-learned energy models."""

from xtalloop.rankers.batch_relax import BatchRelaxer, RelaxResult
from xtalloop.rankers.ml_ranker import MLRanker, RankedCandidate, Ranking, ReferencePhase

__all__ = [
    "BatchRelaxer",
    "MLRanker",
    "RankedCandidate",
    "Ranking",
    "ReferencePhase",
    "RelaxResult",
]

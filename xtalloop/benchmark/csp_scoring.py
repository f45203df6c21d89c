"""Scoring of the CSP benchmark: matches, ranked@1 and the per-group summary.

Separate from :mod:`xtalloop.benchmark.csp` (which samples, relaxes and writes)
because the subset tables (:mod:`xtalloop.benchmark.subsets`) and the arity
benchmark score records the same way without running the benchmark again.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from pymatgen.core import Structure

logger = logging.getLogger(__name__)


#: eV/atom: candidates this close to the lowest relaxed energy count as tied, and the
#: generator's own order picks among them (``window_match_rate``). Polymorphs of one
#: composition often lie within a few meV/atom under an ML potential, well inside the
#: tens of meV/atom its energies are off from DFT, so the lowest-energy one is a guess.
RANK_WINDOW = 0.025


def ranked_hit(record: dict[str, Any], window: float = 0.0) -> bool:
    """Whether the row's pick matches: the earliest candidate (in the generator's order)
    whose energy is within ``window`` eV/atom of the lowest (``0``: the lowest-energy one).
    """
    energies = record.get("energy_per_atom") or []
    finite = [(e, i) for i, e in enumerate(energies) if e is not None]
    if not finite:
        return False
    lowest = min(finite)[0]
    pick = min(i for e, i in finite if e <= lowest + window)
    return record["rms"][pick] is not None


def pair_hit(record: dict[str, Any]) -> bool:
    """Whether either of the loop's two picks with ``prefilter.prior_picks: 1`` matches: the
    generator's first candidate that relaxed (its own ranking's best) or the lowest-energy one.

    Where the two are the same candidate the loop's second pick is the next lowest distinct
    structure, which the record cannot tell apart from duplicates (it holds no structures):
    counted as one pick, so the rate is a lower bound of what the loop gets.
    """
    energies = record.get("energy_per_atom") or []
    finite = [(e, i) for i, e in enumerate(energies) if e is not None]
    if not finite:
        return False
    first = min(i for _, i in finite)
    return record["rms"][first] is not None or record["rms"][min(finite)[1]] is not None


#: Below this volume per atom (Å³) a cell is degenerate: the densest solids have about
#: 5 Å³/atom, and pymatgen's Niggli reduction can loop for ever on such a cell.
MIN_VOLUME_PER_ATOM = 1.0


def degenerate(structure: Structure) -> bool:
    """Whether a candidate's cell is too collapsed (or not finite) to be a crystal."""
    matrix = structure.lattice.matrix
    if not np.all(np.isfinite(matrix)) or not np.all(np.isfinite(structure.frac_coords)):
        return True
    return abs(structure.lattice.volume) / len(structure) < MIN_VOLUME_PER_ATOM


def rms_distance(matcher, candidate: Structure, truth: Structure) -> float | None:
    """Normalised RMS distance of a matching candidate, None if it does not match.

    A degenerate cell (:func:`degenerate`) matches nothing and is not handed to the matcher.
    """
    if degenerate(candidate):
        return None
    try:
        found = matcher.get_rms_dist(candidate, truth)
    except Exception as exc:  # odd cells can make the matcher fail; count as no match
        logger.debug("structure matcher failed: %s", exc)
        return None
    return None if found is None else float(found[0])


def summarise(records: list[dict[str, Any]], ks: list[int], ranked: bool) -> dict[str, Any]:
    """Match rate and mean best RMS at each k, ranked@1 and the prior+energy pair, over
    ``records``.

    None where undefined (no records; ranked@1 without energies).
    """
    match_rate: dict[str, float | None] = {}
    rmse: dict[str, float | None] = {}
    for k in ks:
        best = [
            min((r for r in record["rms"][:k] if r is not None), default=None)
            for record in records
        ]
        matched = [b for b in best if b is not None]
        match_rate[str(k)] = len(matched) / len(records) if records else None
        rmse[str(k)] = float(np.mean(matched)) if matched else None
    def rate(window: float) -> float | None:
        if not ranked or not records:
            return None
        return sum(ranked_hit(r, window) for r in records) / len(records)

    return {"n": len(records), "match_rate": match_rate, "rmse": rmse,
            "ranked_match_rate": {"1": rate(0.0)},
            "window_match_rate": {"1": rate(RANK_WINDOW)},
            "pair_match_rate": {"2": sum(pair_hit(r) for r in records) / len(records)
                                if ranked and records else None}}


def running_line(records: list[dict[str, Any]], k_max: int, ranked: bool) -> str:
    """The figures so far, for a long run's progress: ``match@20 91.7 %, ranked@1 58.3 %``
    over the compositions finished (journaled ones included)."""
    if not records:
        return "nothing finished yet"
    summary = summarise(records, [k_max], ranked)
    parts = [f"match@{k_max} {100 * summary['match_rate'][str(k_max)]:.1f} %"]
    if ranked:
        parts.append(f"ranked@1 {100 * summary['ranked_match_rate']['1']:.1f} %")
    return ", ".join(parts)


def ranked_match_at_1(records: list[dict[str, Any]], energies: list[list[float]]) -> float | None:
    """Share of compositions whose lowest-energy candidate matches the ground truth.

    ``energies`` holds one list per record that has candidates, in record order.
    """
    if not records:
        return None
    lists = iter(energies)
    hits = 0
    for record in records:
        if not record["n_candidates"]:
            continue
        values = next(lists)
        finite = [(e, i) for i, e in enumerate(values) if e is not None and math.isfinite(e)]
        if finite and record["rms"][min(finite)[1]] is not None:
            hits += 1
    return hits / len(records)

"""Counts of what a results store holds, for ``xtalloop db stats``."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from xtalloop.store.results import REFERENCES, RUNS, VALIDATED

if TYPE_CHECKING:
    from xtalloop.store.results import ResultsDB


def store_stats(db: ResultsDB, stable_within: float = 0.1) -> dict[str, Any]:
    """Counts of the stored results, for ``xtalloop db stats``.

    Returns
    -------
    dict
        ``validated`` (total), ``stable`` (at most ``stable_within`` eV/atom
        above the hull), ``unconverged``, and counts ``by_chemsys``,
        ``by_arity`` (number of elements), ``by_run`` and ``by_dft_code``
        of validated structures; ``references`` (count) and
        ``runs_by_status``.
    """
    fields = ["chemsys", "nelements", "found_in_runs", "e_above_hull", "dft.converged",
              "dft.code"]
    docs = list(db.store(VALIDATED).query({}, properties=fields))
    by_run: Counter = Counter()
    for doc in docs:
        by_run.update(doc.get("found_in_runs", []))
    runs = list(db.store(RUNS).query({}, properties=["status"]))
    return {
        "validated": len(docs),
        "stable": sum(1 for d in docs if d.get("e_above_hull") is not None
                      and d["e_above_hull"] <= stable_within),
        "stable_within": stable_within,
        "unconverged": sum(1 for d in docs if not d.get("dft", {}).get("converged")),
        "by_chemsys": dict(sorted(Counter(d["chemsys"] for d in docs).items())),
        "by_arity": dict(sorted(Counter(int(d["nelements"]) for d in docs).items())),
        "by_run": dict(sorted(by_run.items())),
        "by_dft_code": dict(sorted(Counter(d.get("dft", {}).get("code", "?")
                                           for d in docs).items())),
        "references": db.store(REFERENCES).count(),
        "runs_by_status": dict(sorted(Counter(r.get("status", "?") for r in runs).items())),
    }

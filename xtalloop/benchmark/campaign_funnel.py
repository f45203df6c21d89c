"""Where a campaign's misses were lost: never generated, or generated and not picked.

A composition the loop missed failed at one of two places. Either none of
its generated candidates was the known structure (the generator's loss: only
a better generator, a fine-tuned one for instance, can help), or one was and
the prefilter ranked it out or the validator relaxed it away (the energy
model's loss: a fine-tuned prefilter can help). The hit rate alone cannot tell
them apart; this module can, from what the loop stored: each composition's
``generate`` job output (the candidates as generated, before any relaxation)
is compared with the known structure as the CSP benchmark compares
(:data:`~xtalloop.benchmark.csp.MATCHER_SETTINGS`, unrelaxed candidates).

The verdicts are cached per arm in ``generated.json`` (keyed by the generate
job's uuid), so a resumed campaign compares only what is new.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from xtalloop.benchmark.campaign_score import known_structure, write_json
from xtalloop.benchmark.csp import MATCHER_SETTINGS

logger = logging.getLogger(__name__)

#: Suffix of the generate job's name (``"<formula> generate"``; see the CSP flow).
GENERATE_SUFFIX = " generate"


def generated_matches(folder: Path, targets: list[dict[str, Any]]) -> dict[str, bool]:
    """Per target formula the loop generated for: whether a candidate was the known structure.

    Parameters
    ----------
    folder
        The arm's folder (its embedded store in ``store``).
    targets
        The campaign's targets (``formula``, ``cif``).

    Returns
    -------
    dict
        ``{formula: bool}`` for every target with a stored generate job; where
        a composition was generated more than once (a resumed round re-ran its
        job), the newest output counts, as it is the one the loop went on with.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from xtalloop.config import StoreConfig
    from xtalloop.store.backends import job_store

    by_formula = {t["formula"]: t for t in targets}
    cache_path = folder / "generated.json"
    cache: dict[str, bool] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    store = job_store(StoreConfig(path=str(folder / "store")))
    store.connect()
    try:
        newest: dict[str, dict[str, Any]] = {}
        for doc in store.docs_store.query({"name": {"$regex": f"{GENERATE_SUFFIX}$"}},
                                          properties=["name", "uuid", "completed_time"]):
            formula = doc["name"][: -len(GENERATE_SUFFIX)]
            if formula in by_formula and (formula not in newest or str(
                    doc.get("completed_time")) > str(newest[formula].get("completed_time"))):
                newest[formula] = doc
        matcher = StructureMatcher(**MATCHER_SETTINGS)
        todo = [f for f, d in newest.items() if d["uuid"] not in cache]
        for i, formula in enumerate(todo, 1):
            doc = store.docs_store.query_one({"uuid": newest[formula]["uuid"]},
                                             properties=["output"], sort={"index": -1})
            known = known_structure(by_formula[formula])
            cache[newest[formula]["uuid"]] = any(
                _fits(matcher, candidate, known) for candidate in (doc or {}).get("output") or [])
            if i % 25 == 0:
                logger.info("%s: compared the candidates of %d of %d compositions",
                            folder.name, i, len(todo))
                write_json(cache_path, cache)
    finally:
        store.close()
    if todo:
        write_json(cache_path, cache)
    return {formula: cache[doc["uuid"]] for formula, doc in newest.items()}


def _fits(matcher: Any, candidate: dict[str, Any], known: Structure) -> bool:
    """Whether one stored candidate (a ``Candidate`` dict) is the known structure."""
    from xtalloop.benchmark.csp_scoring import degenerate

    try:
        structure = Structure.from_dict(candidate["structure"])
        return not degenerate(structure) and bool(matcher.fit(structure, known))
    except Exception as exc:  # a candidate the matcher cannot handle matches nothing
        logger.debug("matcher failed on a candidate: %s", exc)
        return False


def funnel_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: per arm and round, where the compositions were won and lost.

    Empty when no round was scored with the generated candidates.
    """
    rows = [(arm, r) for arm, data in result["arms"].items() for r in data["rounds"]
            if r["arity"] == "all" and "generated" in r]
    if not rows:
        return []
    lines = ["", ("Where compositions were won and lost (a candidate *generated* that is the "
                  "known structure, before relaxation):"), "",
             ("| arm | round | compositions | generated | generated, hit | generated, "
              "missed | not generated, hit | not generated, missed |"),
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in rows:
        g = r["generated"]
        lines.append(f"| {arm} | {r['round']} | {r['compositions']} | "
                     f"{g['hit'] + g['missed']} | {g['hit']} | {g['missed']} | "
                     f"{g['other_hit']} | {g['other_missed']} |")
    return lines

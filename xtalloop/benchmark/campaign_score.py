"""Scoring a campaign arm against the known structures: hits per round and arity.

A validation (one pick relaxed by the validator) is a **hit** when the relaxed
structure matches the target's known structure (``StructureMatcher`` with the
CSP benchmark's settings, :data:`~xtalloop.benchmark.csp.MATCHER_SETTINGS`) or
its energy per atom is at or below that of the known structure relaxed by the
same validator (plus ``energy_tolerance``): then the loop found the ground
state, or something the validator likes at least as well. The known
structures are relaxed once per validator and cached (:class:`KnownEnergies`);
each validation's verdict is cached per arm (``scores.json``), so a resumed
campaign scores only what is new.
"""

from __future__ import annotations

import json
import logging
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from xtalloop.benchmark.csp import MATCHER_SETTINGS

logger = logging.getLogger(__name__)

#: Compositions by whether a generated candidate was the known structure, and a hit.
FUNNEL: tuple[str, ...] = ("hit", "missed", "other_hit", "other_missed")


class KnownEnergies:
    """Validator energy per atom of each target's known structure, relaxed once and cached.

    The relaxation is the validator's own (:class:`~xtalloop.dft.mlip.MlipRelaxMaker`
    with the campaign's model and step limit), so a loop that finds the known
    structure gets the same energy up to the relaxation's noise.
    """

    def __init__(self, path: Path, settings: Any) -> None:
        self.path = Path(path)
        self.settings = settings
        self.cache: dict[str, Any] = (json.loads(self.path.read_text())
                                      if self.path.is_file() else {})
        self._maker = None

    def energy(self, target: dict[str, Any]) -> float | None:
        """Energy per atom (eV/atom) of ``target``'s known structure; ``None`` if it failed."""
        key = str(target["material_id"])
        if key not in self.cache:
            self.cache[key] = self._relax(known_structure(target))
            if self.path.is_file():  # another arm's process may have added some meanwhile
                self.cache = {**json.loads(self.path.read_text()), **self.cache}
            write_json(self.path, self.cache)
        return self.cache[key]["energy_per_atom"]

    def _relax(self, structure: Structure) -> dict[str, Any]:
        from xtalloop.dft.mlip import MlipRelaxMaker

        if self._maker is None:
            self._maker = MlipRelaxMaker(model=self.settings.validator,
                                         device=self.settings.device,
                                         steps=self.settings.validator_steps)
        maker = self._maker
        try:
            result = maker.parse_output(MlipRelaxMaker.make.original(maker, structure))
        except Exception as exc:  # noqa: BLE001 - a failed reference is recorded, not fatal
            logger.warning("relaxing the known %s failed: %s", structure.formula, exc)
            result = None
        if result is None or not math.isfinite(result["energy_per_atom"]):
            return {"energy_per_atom": None, "converged": False}
        return {"energy_per_atom": result["energy_per_atom"], "converged": result["converged"]}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` whole or not at all (a killed or parallel run never reads half a file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def known_structure(target: dict[str, Any]) -> Structure:
    """The known structure of a target (its CIF, oxidation states removed)."""
    from xtalloop.benchmark.arity_data import parse_cif

    structure = parse_cif(target["cif"])
    if structure is None:
        raise ValueError(f"{target['material_id']}: unreadable CIF")
    return structure


def is_hit(structure: Structure, energy_per_atom: float | None, known: Structure,
           known_energy: float | None, tolerance: float = 0.0) -> dict[str, bool]:
    """Whether a validated structure is the known one (``match``) or as low (``lower``)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    match = bool(StructureMatcher(**MATCHER_SETTINGS).fit(structure, known))
    lower = (energy_per_atom is not None and known_energy is not None
             and energy_per_atom <= known_energy + tolerance)
    return {"match": match, "lower": bool(lower), "hit": match or bool(lower)}


def pick_origin(generator: dict[str, Any] | None) -> str:
    """Where a validated pick came from (its ``generator`` provenance), in a few words.

    For the Wyckoff model the split that matters to learning: a skeleton
    *proposed* from the known ones (the network only ranked it), or one the
    network *sampled*, placed with a known skeleton's coordinates ("bank") or
    its own.
    """
    if not generator:
        return "unknown"
    name = str(generator.get("generator", "unknown"))
    if name != "wyckoff":
        return name
    if generator.get("proposed"):
        return "wyckoff proposal"
    return "wyckoff sample, " + ("own coordinates" if generator.get("coordinates") == "model"
                                 else "known coordinates")


def _seconds(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def score_arm(settings: Any, folder: Path, loop_id: str, targets: list[dict[str, Any]],
              known: KnownEnergies, generated: dict[str, bool] | None = None) -> dict[str, Any]:
    """Per round and arity: validations, hits, hit rate, hits per 100, cumulative ground states.

    Reads the loop's round records and each round's composition results (the
    validations, failed ones included: a failed validation spent budget) from
    the arm's store; the stored structure of each validated uuid is compared
    with the known one.

    Returns
    -------
    dict
        ``rounds``: one row per round and arity group (and an ``all`` row per
        round) with ``validations``, ``compositions``, ``hits``,
        ``hit_compositions``, ``hit_rate`` (compositions with a hit /
        compositions tried), ``hits_per_100`` (hitting validations per 100
        validations), ``ground_states`` (targets hit so far, cumulative),
        ``matches``, ``lower``, ``wall_s`` (the round's wall time) and
        ``by_origin`` (validated picks and hits per :func:`pick_origin`) and, with
        ``generated`` (:func:`~xtalloop.benchmark.campaign_funnel.generated_matches`),
        ``generated``: compositions with a generated candidate that is the known
        structure and a hit (``hit``) or not (``missed``), and without one
        (``other_hit``, ``other_missed``);
        ``ground_states`` (targets hit over the whole loop, per arity group).
    """
    from xtalloop.config import StoreConfig
    from xtalloop.store.results import VALIDATED, open_results

    by_formula = {t["formula"]: t for t in targets}
    cache_path = folder / "scores.json"
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    rows: list[dict[str, Any]] = []
    found: dict[str, set[str]] = {}
    with open_results(StoreConfig(path=str(folder / "store")), create=False) as db:
        origins = {d["uuid"]: pick_origin(d.get("generator")) for d in
                   db.store(VALIDATED).query({}, properties=["uuid", "generator"])}
        for record in [r for r in db.rounds(loop_id) if r.get("status") == "completed"]:
            per: dict[str, dict[str, Any]] = {}
            for result in db.composition_results(record["run_id"]):
                target = by_formula.get(result["formula"])
                if target is None:
                    continue
                row = per.setdefault(target["arity"], _empty(record, target["arity"]))
                row["compositions"] += 1
                row["validations"] += len(result.get("validated", [])) + len(
                    result.get("failed", []))
                verdicts = [_verdict(db, v, target, known, settings, cache)
                            for v in result.get("validated", [])]
                hits = [v for v in verdicts if v["hit"]]
                row["hits"] += len(hits)
                for validation, verdict in zip(result.get("validated", []), verdicts):
                    # the round's own record of the pick; a stored structure's provenance
                    # is that of its latest validation (older results record no split)
                    origin = pick_origin(validation) if "proposed" in validation else \
                        origins.get(validation["uuid"], "unknown")
                    slot = row["by_origin"].setdefault(origin, {"picks": 0, "hits": 0})
                    slot["picks"] += 1
                    slot["hits"] += int(verdict["hit"])
                row["matches"] += sum(v["match"] for v in verdicts)
                row["lower"] += sum(v["lower"] for v in verdicts)
                if hits:
                    row["hit_compositions"] += 1
                    found.setdefault(target["arity"], set()).add(target["formula"])
                if generated is not None and target["formula"] in generated:
                    funnel = row.setdefault("generated", dict.fromkeys(FUNNEL, 0))
                    funnel[("" if generated[target["formula"]] else "other_")
                           + ("hit" if hits else "missed")] += 1
            write_json(cache_path, cache)
            total = _empty(record, "all")
            for label in settings.arities:
                if label in per:
                    row = per[label]
                    row["ground_states"] = len(found.get(label, ()))
                    rows.append(_rates(row))
                    for key in ("compositions", "validations", "hits", "hit_compositions",
                                "matches", "lower"):
                        total[key] += row[key]
                    if "generated" in row:
                        into_funnel = total.setdefault("generated", dict.fromkeys(FUNNEL, 0))
                        for key, count in row["generated"].items():
                            into_funnel[key] += count
                    for origin, slot in row["by_origin"].items():
                        into = total["by_origin"].setdefault(origin, {"picks": 0, "hits": 0})
                        into["picks"] += slot["picks"]
                        into["hits"] += slot["hits"]
            total["ground_states"] = sum(len(v) for v in found.values())
            rows.append(_rates(total))
            # the same figures on the loop's own round record, so `xtalloop report`
            # of the arm's loop shows them beside the loop's stable-based hit rate
            db.save_round({**record, "known_structure": {
                key: total[key] for key in ("validations", "hits", "hits_per_100",
                                            "hit_rate", "ground_states")}})
            logger.info("round %d: %d validations, %d hits", record["round"],
                        total["validations"], total["hits"])
    return {"rounds": rows,
            "ground_states": {a: len(found.get(a, ())) for a in settings.arities}}


def _empty(record: dict[str, Any], arity: str) -> dict[str, Any]:
    return {"round": record["round"], "arity": arity, "compositions": 0, "validations": 0,
            "hits": 0, "hit_compositions": 0, "matches": 0, "lower": 0, "by_origin": {},
            "wall_s": _seconds(record.get("started_at"), record.get("finished_at"))}


def _rates(row: dict[str, Any]) -> dict[str, Any]:
    row["hit_rate"] = row["hit_compositions"] / row["compositions"] if row["compositions"] \
        else None
    row["hits_per_100"] = 100 * row["hits"] / row["validations"] if row["validations"] \
        else None
    return row


def _verdict(db: Any, validation: dict[str, Any], target: dict[str, Any],
             known: KnownEnergies, settings: Any, cache: dict[str, Any]) -> dict[str, bool]:
    """The hit verdict of one validation (cached by uuid and energy)."""
    from xtalloop.store.results import VALIDATED

    key = f"{validation['uuid']}:{validation.get('energy_per_atom')}"
    if key not in cache:
        doc = next(iter(db.store(VALIDATED).query({"uuid": validation["uuid"]})), None)
        if doc is None:
            cache[key] = {"match": False, "lower": False, "hit": False}
        else:  # an unconverged relaxation's energy does not count, its structure does
            energy = validation.get("energy_per_atom") if validation.get("converged") else None
            cache[key] = is_hit(Structure.from_dict(doc["structure"]), energy,
                                known_structure(target), known.energy(target),
                                settings.energy_tolerance)
    return cache[key]

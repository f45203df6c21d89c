"""xtalloop's own collections: validated structures, DFT reference phases, runs."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from maggma.core import Store
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from xtalloop.config import StoreConfig
from xtalloop.errors import StoreError
from xtalloop.store.backends import collection_store

VALIDATED = "validated"
REFERENCES = "references"
RUNS = "runs"
CHECKPOINTS = "checkpoints"
COMPOSITION_RESULTS = "composition_results"
ROUNDS = "rounds"


def now() -> str:
    """The current UTC time as an ISO-8601 string (what every document records)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def chemsys_of(formula: str) -> str:
    """``"NaCl"`` → ``"Cl-Na"`` (elements sorted alphabetically, as the Materials Project does)."""
    return "-".join(sorted(el.symbol for el in Composition(formula).elements))


class ResultsDB:
    """Validated structures, DFT reference phases and run records.

    Inserting a validated structure never loses data: a structure that matches
    one already stored for the same formula and DFT settings (pymatgen's
    ``StructureMatcher``) is merged into it. The stored result is replaced only
    by a converged calculation of lower energy, and the replaced result is kept
    in the document's ``previous_results``.

    Parameters
    ----------
    config
        Which backend and where.
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._stores: dict[str, Store] = {}

    def store(self, name: str) -> Store:
        """The connected maggma store of one collection."""
        if name not in self._stores:
            store = collection_store(self.config, name)
            try:
                store.connect()
            except StoreError:
                raise
            except Exception as exc:  # backend-specific connection errors
                raise StoreError(f"cannot open the {name!r} collection: {exc}") from None
            self._stores[name] = store
        return self._stores[name]

    def close(self) -> None:
        """Close every open collection."""
        for store in self._stores.values():
            store.close()
        self._stores.clear()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- validated structures -------------------------------------------------

    def add_validated(self, doc: dict[str, Any]) -> tuple[str, str]:
        """Insert or merge one validated structure.

        Parameters
        ----------
        doc
            Needs ``formula``, ``structure`` (a ``Structure`` dict),
            ``energy_per_atom``, ``dft.settings_key``, ``dft.converged`` and ``run.id``.

        Returns
        -------
        (uuid, outcome)
            ``outcome`` is ``"new"``, ``"improved"`` (replaced by a lower
            converged energy) or ``"duplicate"`` (already known; run recorded).
        """
        store = self.store(VALIDATED)
        structure = Structure.from_dict(doc["structure"])
        key = doc["dft"]["settings_key"]
        matcher = StructureMatcher()
        for old in store.query({"formula": doc["formula"], "dft.settings_key": key}):
            if not matcher.fit(structure, Structure.from_dict(old["structure"])):
                continue
            runs = sorted(set(old.get("found_in_runs", [])) | {doc["run"]["id"]})
            update = {k: v for k, v in old.items() if k != "_id"}
            update["found_in_runs"] = runs
            better = doc["dft"]["converged"] and (
                not old["dft"]["converged"]
                or doc["energy_per_atom"] < old["energy_per_atom"] - 1e-6
            )
            if better:
                kept = {k: old[k] for k in _RESULT_FIELDS if k in old}
                update.update({k: v for k, v in doc.items() if k in _RESULT_FIELDS})
                update["previous_results"] = [*old.get("previous_results", []), kept]
            update["updated_at"] = now()
            store.update([update], key="uuid")
            return old["uuid"], "improved" if better else "duplicate"
        new = dict(doc)
        new.setdefault("uuid", str(uuidlib.uuid4()))
        new["found_in_runs"] = [doc["run"]["id"]]
        new["created_at"] = new["updated_at"] = now()
        store.update([new], key="uuid")
        return new["uuid"], "new"

    def set_e_above_hull(self, values: dict[str, float]) -> None:
        """Update the energy above hull of stored structures (uuid → eV/atom)."""
        store = self.store(VALIDATED)
        docs = []
        for doc in store.query({"uuid": {"$in": list(values)}}):
            doc.pop("_id", None)
            doc["e_above_hull"] = values[doc["uuid"]]
            docs.append(doc)
        if docs:
            store.update(docs, key="uuid")

    def find_validated(
        self,
        formula: str | None = None,
        chemsys: str | None = None,
        max_e_above_hull: float | None = None,
        settings_key: str | None = None,
        within_chemsys: bool = False,
        run_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Validated structures, most stable first within each formula.

        Parameters
        ----------
        formula
            Any formula of the composition (``"NaCl"``, ``"Na2Cl2"``).
        chemsys
            Chemical system, elements in any order (``"Na-Cl"``).
        max_e_above_hull
            Keep structures at most this far above the hull (eV/atom).
        settings_key
            Only results computed with these DFT settings.
        within_chemsys
            With ``chemsys``: also return the structures of its subsystems.
        run_id
            Only structures found (or found again) by this run.
        """
        criteria: dict[str, Any] = {}
        if formula:
            criteria["formula"] = Composition(formula).reduced_formula
        if chemsys:
            elements = sorted(chemsys.replace(" ", "").split("-"))
            if within_chemsys:
                criteria["chemsys"] = {"$in": _subsystems(elements)}
            else:
                criteria["chemsys"] = "-".join(elements)
        if max_e_above_hull is not None:
            criteria["e_above_hull"] = {"$lte": max_e_above_hull}
        if settings_key:
            criteria["dft.settings_key"] = settings_key
        if run_id:
            criteria["found_in_runs"] = run_id
        docs = [
            {k: v for k, v in d.items() if k != "_id"}
            for d in self.store(VALIDATED).query(criteria)
        ]
        return sorted(docs, key=lambda d: (d["formula"], d.get("e_above_hull") or 0.0,
                                           d["energy_per_atom"]))

    # -- reference phases ----------------------------------------------------

    def get_reference(self, element: str, settings_key: str) -> dict[str, Any] | None:
        """The stored DFT reference phase of ``element`` for these settings."""
        doc = self.store(REFERENCES).query_one({"element": element, "settings_key": settings_key})
        return None if doc is None else {k: v for k, v in doc.items() if k != "_id"}

    def add_reference(self, doc: dict[str, Any]) -> None:
        """Store a reference phase; a lower-energy one replaces a higher one, never the reverse."""
        old = self.get_reference(doc["element"], doc["settings_key"])
        if old is not None and old["energy_per_atom"] <= doc["energy_per_atom"]:
            return
        new = dict(doc, key=f"{doc['element']}:{doc['settings_key']}", created_at=now())
        if old is not None:
            new["previous_results"] = [*old.get("previous_results", []),
                                       {k: old[k] for k in ("energy_per_atom", "structure")}]
        self.store(REFERENCES).update([new], key="key")

    # -- runs -------------------------------------------------------------------

    # -- relaxation checkpoints --------------------------------------------------

    def save_checkpoint(self, job_uuid: str, structure: dict[str, Any], step: int) -> None:
        """Keep the latest ionic step of a running DFT relaxation (one document per job)."""
        self.store(CHECKPOINTS).update(
            [{"job_uuid": job_uuid, "structure": structure, "step": step, "saved_at": now()}],
            key="job_uuid")

    def get_checkpoint(self, job_uuid: str) -> dict[str, Any] | None:
        """The last saved ionic step of job ``job_uuid``, if it was interrupted."""
        doc = self.store(CHECKPOINTS).query_one({"job_uuid": job_uuid})
        return None if doc is None else {k: v for k, v in doc.items() if k != "_id"}

    def drop_checkpoint(self, job_uuid: str) -> None:
        """Forget job ``job_uuid``'s checkpoint (its relaxation finished)."""
        if self.get_checkpoint(job_uuid) is not None:  # montydb: never delete from nothing
            self.store(CHECKPOINTS).remove_docs({"job_uuid": job_uuid})

    def save_run(self, doc: dict[str, Any]) -> None:
        """Insert a run record, or update the fields ``doc`` gives (keyed by ``id``)."""
        old = self.get_run(doc["id"]) or {}
        self.store(RUNS).update([{**old, **doc, "updated_at": now()}], key="id")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """A run record by id."""
        doc = self.store(RUNS).query_one({"id": run_id})
        return None if doc is None else {k: v for k, v in doc.items() if k != "_id"}

    def latest_run(self, name: str) -> dict[str, Any] | None:
        """The newest run record of a configuration name (run ids sort by time)."""
        docs = list(self.store(RUNS).query({"name": name}))
        if not docs:
            return None
        doc = max(docs, key=lambda d: d.get("started_at") or d.get("submitted_at") or "")
        return {k: v for k, v in doc.items() if k != "_id"}

    # -- per-composition results and loop rounds ---------------------------------

    def save_composition_result(self, run_id: str, result: dict[str, Any]) -> None:
        """Record what one composition of a run produced, the moment it is validated.

        ``result`` is :func:`~xtalloop.workflows.validate.record_validation`'s
        summary; structures are dropped (they are in the validated collection).
        """
        summary = {k: v for k, v in result.items() if k != "validated"}
        summary["validated"] = [{k: v for k, v in row.items() if k != "structure"}
                                for row in result.get("validated", [])]
        self.store(COMPOSITION_RESULTS).update(
            [dict(summary, run_id=run_id, key=f"{run_id}:{result['formula']}",
                  recorded_at=now())], key="key")

    def composition_results(self, run_id: str) -> list[dict[str, Any]]:
        """Every composition result recorded for run ``run_id``, by formula."""
        docs = self.store(COMPOSITION_RESULTS).query({"run_id": run_id})
        return sorted(({k: v for k, v in d.items() if k != "_id"} for d in docs),
                      key=lambda d: d["formula"])

    def save_round(self, doc: dict[str, Any]) -> None:
        """Insert or update the record of one round of a loop (``loop_id``, ``round``)."""
        self.store(ROUNDS).update(
            [dict(doc, key=f"{doc['loop_id']}:{doc['round']}", updated_at=now())], key="key")

    def rounds(self, loop_id: str) -> list[dict[str, Any]]:
        """The round records of a loop, in order."""
        docs = self.store(ROUNDS).query({"loop_id": loop_id})
        return sorted(({k: v for k, v in d.items() if k != "_id"} for d in docs),
                      key=lambda d: d["round"])

    # -- statistics -------------------------------------------------------------

    def stats(self, stable_within: float = 0.1) -> dict[str, Any]:
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
        from collections import Counter

        fields = ["chemsys", "nelements", "found_in_runs", "e_above_hull", "dft.converged",
                  "dft.code"]
        docs = list(self.store(VALIDATED).query({}, properties=fields))
        by_run: Counter = Counter()
        for doc in docs:
            by_run.update(doc.get("found_in_runs", []))
        runs = list(self.store(RUNS).query({}, properties=["status"]))
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
            "references": self.store(REFERENCES).count(),
            "runs_by_status": dict(sorted(Counter(r.get("status", "?") for r in runs).items())),
        }


_RESULT_FIELDS = (
    "structure", "initial_structure", "energy", "energy_per_atom", "forces", "stress",
    "space_group", "space_group_number", "dft", "generator", "prefilter", "run",
)


def _subsystems(elements: list[str]) -> list[str]:
    from itertools import combinations

    return ["-".join(c) for r in range(1, len(elements) + 1) for c in combinations(elements, r)]


@contextmanager
def open_results(config: StoreConfig) -> Iterator[ResultsDB]:
    """``with open_results(cfg) as db:`` — a :class:`ResultsDB` closed on exit."""
    db = ResultsDB(config)
    try:
        yield db
    finally:
        db.close()

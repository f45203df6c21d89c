"""xtalloop's own collections: validated structures, DFT reference phases, runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any

from maggma.core import Store
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from xtalloop.config import StoreConfig
from xtalloop.errors import StoreError
from xtalloop.store.backends import DATABASE_NAME, collection_store
from xtalloop.store.documents import (
    REFERENCE_KEPT,
    VALIDATED_KEPT,
    ReferencePhase,
    ValidatedStructure,
    is_better,
    merge_result,
    result_part,
    validated,
)

VALIDATED = "validated"
REFERENCES = "references"
RUNS = "runs"
CHECKPOINTS = "checkpoints"
COMPOSITION_RESULTS = "composition_results"
ROUNDS = "rounds"
LOCKS = "locks"
COUNTERS = "counters"


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
    in the document's ``previous_results``. Documents are checked against
    their schemas (:mod:`xtalloop.store.documents`), and every look-then-write
    holds the lock of its group (:meth:`lock`), so concurrent workers never
    duplicate a structure nor lose a run from ``found_in_runs``.

    Parameters
    ----------
    config
        Which backend and where.
    create
        Create an embedded store that does not exist yet (``False``: reading
        commands, which say there is no store instead and write nothing).
    """

    def __init__(self, config: StoreConfig, create: bool = True) -> None:
        self.config = config
        self.create = create
        self._stores: dict[str, Store] = {}

    def store(self, name: str) -> Store:
        """The connected maggma store of one collection."""
        if name not in self._stores:
            store = collection_store(self.config, name, create=self.create)
            try:
                store.connect()
            except StoreError:
                raise
            except Exception as exc:  # backend-specific connection errors
                raise StoreError(f"cannot open the {name!r} collection: {exc}") from None
            self._stores[name] = store
        return self._stores[name]

    def check(self) -> None:
        """Fail in one line now if the store cannot be used, before any expensive work.

        Embedded: every collection file is checked (a damaged one is named,
        with what to do); MongoDB: the server answers and accepts the
        credentials.

        Raises
        ------
        StoreError
            What is wrong, in one line.
        """
        if self.config.backend == "embedded":
            from xtalloop.store.health import check_store_files

            path = self.config.resolved_path
            if not self.create and not (path / DATABASE_NAME).is_dir():
                raise StoreError(f"no xtalloop store at {path}")
            check_store_files(path, DATABASE_NAME)
        self.store(RUNS)

    def lock(self, scope: str, key: str) -> AbstractContextManager[None]:
        """The store-wide lock of ``key`` in ``scope`` (see :mod:`xtalloop.store.locking`)."""
        from xtalloop.store.locking import store_lock

        return store_lock(self, scope, key)

    def next_counter(self, name: str, floor: int = 0) -> int:
        """Allocate the next number of counter ``name``: unique across processes, never reused.

        ``floor`` is the largest number already in use (for stores written
        before the counter existed): the result is always above it.
        """
        from xtalloop.store.locking import next_counter

        return next_counter(self, name, floor)

    @contextmanager
    def _raw(self, name: str) -> Iterator[None]:
        """Around direct use of a collection's ``_collection``: SQLite errors as one line."""
        store = self.store(name)
        if hasattr(store, "_sqlite_errors"):
            with store._sqlite_errors():
                yield
        else:
            yield

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
            A :class:`~xtalloop.store.documents.ValidatedStructure`: needs
            ``formula``, ``structure`` (a ``Structure`` dict),
            ``energy_per_atom``, ``dft.settings_key``, ``dft.converged`` and
            ``run.id``; any other field is kept.

        Returns
        -------
        (uuid, outcome)
            ``outcome`` is ``"new"``, ``"improved"`` (the whole result replaced
            by a lower converged energy, the old one kept in
            ``previous_results``) or ``"duplicate"`` (already known; run recorded).
        """
        doc = validated(ValidatedStructure, doc)
        structure = Structure.from_dict(doc["structure"])
        key = doc["dft"]["settings_key"]
        store = self.store(VALIDATED)
        matcher = StructureMatcher()
        with self.lock(VALIDATED, f"{doc['formula']}|{key}"), self._raw(VALIDATED):
            for old in store.query({"formula": doc["formula"], "dft.settings_key": key}):
                if not matcher.fit(structure, Structure.from_dict(old["structure"])):
                    continue
                better = is_better(doc, old)
                _, update = merge_result(old, doc, VALIDATED_KEPT, better, now())
                store._collection.update_one({"uuid": old["uuid"]}, update)
                return old["uuid"], "improved" if better else "duplicate"
            new = {k: v for k, v in doc.items() if k != "previous_results"}
            new["found_in_runs"] = [doc["run"]["id"]]
            new["created_at"] = new["updated_at"] = now()
            store._collection.insert_one(new)
        return new["uuid"], "new"

    def set_e_above_hull(self, values: dict[str, float]) -> None:
        """Update the energy above hull of stored structures (uuid → eV/atom).

        Only that field is set (``$set``), so a concurrent merge into the same
        document is never undone; the embedded store's per-document update is
        a read-modify-write, so there it holds each document's group lock.
        """
        store = self.store(VALIDATED)
        with self._raw(VALIDATED):
            groups: dict[str, list[str]] = {}
            for doc in store.query({"uuid": {"$in": list(values)}},
                                   properties=["uuid", "formula", "dft.settings_key"]):
                groups.setdefault(f"{doc['formula']}|{doc['dft']['settings_key']}",
                                  []).append(doc["uuid"])
            for group in sorted(groups):
                embedded = self.config.backend == "embedded"
                with self.lock(VALIDATED, group) if embedded else nullcontext():
                    for uuid in groups[group]:
                        store._collection.update_one(
                            {"uuid": uuid}, {"$set": {"e_above_hull": float(values[uuid])}})

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
        """Store a reference phase; a lower-energy one replaces a higher one, never the reverse.

        ``doc`` is a :class:`~xtalloop.store.documents.ReferencePhase`; a
        replaced result (every result field) is kept in ``previous_results``.
        """
        doc = validated(ReferencePhase, doc)
        store = self.store(REFERENCES)
        with self.lock(REFERENCES, doc["key"]), self._raw(REFERENCES):
            old = store._collection.find_one({"key": doc["key"]})
            if old is not None and old["energy_per_atom"] <= doc["energy_per_atom"]:
                return
            new = {k: v for k, v in doc.items() if k != "previous_results"}
            new["created_at"] = new["updated_at"] = now()
            if old is not None:
                new["created_at"] = old.get("created_at", new["created_at"])
                new["previous_results"] = [*old.get("previous_results", []),
                                           result_part(old, REFERENCE_KEPT)]
            store._collection.replace_one({"key": doc["key"]}, new, upsert=True)

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
        """Insert a run record, or update the fields ``doc`` gives (keyed by ``id``).

        Only those fields are set (``$set``), so two processes updating
        different fields of one record (a run and ``xtalloop status``) keep both.
        """
        from monty.json import jsanitize

        fields = jsanitize({**doc, "updated_at": now()}, allow_bson=True)
        embedded = self.config.backend == "embedded"
        with self.lock(RUNS, doc["id"]) if embedded else nullcontext(), self._raw(RUNS):
            self.store(RUNS)._collection.update_one({"id": doc["id"]}, {"$set": fields},
                                                    upsert=True)

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
        """Counts of the stored results (:func:`~xtalloop.store.stats.store_stats`)."""
        from xtalloop.store.stats import store_stats

        return store_stats(self, stable_within)


def _subsystems(elements: list[str]) -> list[str]:
    from itertools import combinations

    return ["-".join(c) for r in range(1, len(elements) + 1) for c in combinations(elements, r)]


@contextmanager
def open_results(config: StoreConfig, create: bool = True) -> Iterator[ResultsDB]:
    """``with open_results(cfg) as db:`` — a :class:`ResultsDB` closed on exit.

    ``create=False``: for reading commands; a missing embedded store is a
    one-line :class:`StoreError`, and nothing is created.
    """
    db = ResultsDB(config, create=create)
    try:
        yield db
    finally:
        db.close()


def check_store(config: StoreConfig) -> None:
    """Fail in one line if the store is damaged or unreachable (see :meth:`ResultsDB.check`).

    Runs call it before generating anything, so a broken store costs seconds, not a run.
    """
    with open_results(config) as db:
        db.check()

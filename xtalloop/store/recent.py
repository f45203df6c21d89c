"""The job documents a run wrote, answered from memory when the same run asks for them.

A job's inputs are references to earlier jobs' outputs, and jobflow resolves
each one with three lookups by uuid (the newest index, the output, the value).
The embedded store (montydb on SQLite) has no index: every lookup decodes
every job document of the store, so a long loop slows down as its store
grows (a two-round campaign arm spent 17 % of its time there, at 36 MB of job
documents, and each round adds more). In a local run the referenced outputs
were written moments before by the same process, through the same store:
:class:`RecentJobDocs` remembers what was written through it and answers those
lookups without reading the store.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

#: Jobs (uuids) whose documents are remembered; the oldest are forgotten first. A
#: loop round's last jobs read the outputs of all its compositions' jobs (about 5 per
#: composition), so 1024 covers a round of 200 compositions. A campaign's job documents
#: average about 10 kB of BSON without the ionic-step copies (36 MB less 25 over 1090
#: documents), a few times that as Python objects: some 50 MB remembered at most.
CAPACITY = 1024


class RecentJobDocs:
    """A docs store that answers lookups of the jobs written through it from memory.

    Two lookups of a job written through it are answered here: one index of it
    (``{"uuid": u, "index": i}``) and its newest index (``{"uuid": u}``, sorted by
    ``index`` descending, ``limit=1``), with top-level properties. Anything else
    goes to the store it wraps, as does every write (written through, then
    remembered). Documents are handed out as copies: jobflow inserts the data
    store's blobs into the documents it reads.

    Its answers are right where a job's documents are written by the process
    that runs it, as in xtalloop's local runs (a replaced job's next index is
    written by the same run).

    Parameters
    ----------
    store
        The maggma store of job documents.
    capacity
        How many jobs to remember.
    """

    def __init__(self, store: Any, capacity: int = CAPACITY) -> None:
        self._store = store
        self._capacity = capacity
        self._jobs: OrderedDict[str, dict[int, dict[str, Any]]] = OrderedDict()

    def __getattr__(self, name: str) -> Any:  # everything else is the store's
        if name.startswith("__") or name == "_store":  # copy/pickle probe a bare object
            raise AttributeError(name)
        return getattr(self._store, name)

    @property
    def remembered(self) -> int:
        """How many jobs are remembered (for tests and logs)."""
        return len(self._jobs)

    def update(self, docs: list[dict] | dict, key: list | str | None = None, **kwargs: Any
               ) -> None:
        """Write to the store; then remember each document with a uuid and an index."""
        self._store.update(docs, key=key, **kwargs)
        for doc in docs if isinstance(docs, list) else [docs]:
            uuid, index = doc.get("uuid"), doc.get("index")
            if not isinstance(uuid, str) or not isinstance(index, int):
                continue
            self._jobs.setdefault(uuid, {})[index] = copy.deepcopy(doc)
            self._jobs.move_to_end(uuid)
            while len(self._jobs) > self._capacity:
                self._jobs.popitem(last=False)

    def query(self, criteria: dict | None = None, properties: dict | list | None = None,
              sort: dict | None = None, skip: int = 0, limit: int = 0, **kwargs: Any
              ) -> Iterator[dict]:
        """A remembered document where the lookup is one memory answers; else the store's."""
        found = None if skip or kwargs else self._remembered(criteria, properties, sort, limit)
        if found is None:
            return self._store.query(criteria=criteria, properties=properties, sort=sort,
                                     skip=skip, limit=limit, **kwargs)
        keys = _top_level(properties)
        return iter([copy.deepcopy({k: v for k, v in found.items()
                                    if keys is None or k in keys})])

    def query_one(self, criteria: dict | None = None, properties: dict | list | None = None,
                  sort: dict | None = None, **kwargs: Any) -> dict | None:
        """The first document :meth:`query` gives, or ``None``."""
        return next(self.query(criteria, properties, sort, limit=1, **kwargs), None)

    def _remembered(self, criteria: Any, properties: Any, sort: Any, limit: int
                    ) -> dict | None:
        """The one document memory can answer with: job ``uuid``'s index ``index``, or its
        newest index (``sort={"index": -1}``, ``limit=1``: jobflow's three lookups)."""
        if not isinstance(criteria, dict) or not set(criteria) <= {"uuid", "index"}:
            return None
        uuid, index = criteria.get("uuid"), criteria.get("index")
        docs = self._jobs.get(uuid) if isinstance(uuid, str) else None  # not an operator
        if docs is None or (properties is not None and _top_level(properties) is None):
            return None  # not written here, or a projection (dotted, excluding) for the store
        if "index" in criteria:
            return docs.get(index) if isinstance(index, int) and not sort else None
        if sort == {"index": -1} and limit == 1:
            return docs[max(docs)]
        return None  # every index, or the oldest: earlier runs may hold more


def _top_level(properties: dict | list | None) -> set[str] | None:
    """The top-level keys a projection asks for; ``None`` for all, or one this cannot do."""
    if properties is None:
        return None
    if isinstance(properties, dict):
        if not all(v in (1, True) for v in properties.values()):
            return None
        properties = list(properties)
    if any("." in p for p in properties):
        return None
    return {*properties, "_id"}

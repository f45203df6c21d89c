"""Locks that serialise a store's check-then-write steps across processes and machines.

A validated structure has no natural unique key (two structures are "the same"
when pymatgen's ``StructureMatcher`` says so), so a unique index cannot stop two
workers from both inserting it. Instead every writer of one ``(formula, DFT
settings)`` group holds a lock while it looks for a match and inserts or merges:

``embedded``
    An OS file lock (``flock``) on ``<store>/.locks/<name>.lock``, plus a thread
    lock, since ``flock`` is per open file and jobflow may run jobs in threads.
    The OS releases it when its process dies, so a killed worker never leaves
    the store locked.
``mongodb``
    A lease: a document ``{_id: name, owner, expires_at}`` in the ``locks``
    collection, taken with one atomic ``find_one_and_update(upsert=True)`` that
    matches only an expired lease. ``_id`` is unique, so while a live lease
    exists the upsert fails with a duplicate key and the writer waits. A worker
    killed while holding it blocks the group for at most :data:`LEASE_S`.
    Expiry uses each writer's clock: machines must agree on the time to within
    a fraction of the lease (NTP does that).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from xtalloop.errors import StoreError

LEASE_S = 60.0
"""How long a MongoDB lease lasts; a critical section takes well under a second."""
WAIT_S = 150.0
"""How long a writer waits for a lock before it gives up with one line."""

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def lock_name(scope: str, key: str) -> str:
    """A file-system-safe name for the lock of ``key`` (any text) in ``scope``."""
    return f"{scope}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def _thread_lock(path: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(path, threading.Lock())


@contextmanager
def file_lock(path: Path, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing).

    Raises
    ------
    StoreError
        The lock file cannot be created (read-only store) or another process
        held the lock for more than ``wait_s`` seconds.
    """
    guard = _thread_lock(str(path))
    if not guard.acquire(timeout=wait_s):
        raise StoreError(f"{path}: held by another thread of this process for over "
                         f"{wait_s:.0f} s")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(f"cannot write to the store: cannot create the lock file {path} "
                             f"({exc.strerror}); is the store folder writable?") from None
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(f"the store lock {path} was held by another process "
                                         f"for over {wait_s:.0f} s") from None
                    time.sleep(0.005 + random.random() * 0.02)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        guard.release()


@contextmanager
def mongo_lease(collection: Any, name: str, lease_s: float = LEASE_S,
                wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the lease ``name`` in the pymongo ``collection`` (see the module docstring).

    Raises
    ------
    StoreError
        Another writer held the lease for more than ``wait_s`` seconds.
    """
    from pymongo.errors import DuplicateKeyError

    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait_s
    while True:
        now = datetime.now(timezone.utc)
        try:
            collection.find_one_and_update(
                {"_id": name, "expires_at": {"$lt": now}},
                {"$set": {"owner": owner, "expires_at": now + timedelta(seconds=lease_s),
                          "taken_at": now}},
                upsert=True)
            break
        except DuplicateKeyError:  # a live lease exists: someone else is writing
            if time.monotonic() > deadline:
                holder = collection.find_one({"_id": name}) or {}
                raise StoreError(f"the store lock {name!r} was held by {holder.get('owner', '?')} "
                                 f"for over {wait_s:.0f} s") from None
            time.sleep(0.01 + random.random() * 0.04)
    try:
        yield
    finally:
        collection.delete_one({"_id": name, "owner": owner})


@contextmanager
def store_lock(db: Any, scope: str, key: str) -> Iterator[None]:
    """Hold the lock of ``key`` in ``scope`` of ``db`` (a ``ResultsDB``)."""
    name = lock_name(scope, key)
    if db.config.backend == "embedded":
        with file_lock(db.config.resolved_path / ".locks" / f"{name}.lock"):
            yield
    else:
        with mongo_lease(db.store("locks")._collection, name):
            yield


def next_counter(db: Any, name: str, floor: int = 0) -> int:
    """The next value of counter ``name`` in ``db``'s ``counters`` collection, above ``floor``.

    MongoDB: ``$max`` raises the counter to ``floor`` (stores written before
    it existed), then one atomic ``find_one_and_update`` with ``$inc`` takes
    the next number; embedded: read and write under the counter's file lock.
    """
    from pymongo import ReturnDocument
    from pymongo.errors import DuplicateKeyError

    coll = db.store("counters")._collection
    if db.config.backend == "embedded":
        with store_lock(db, "counter", name), db.store("counters")._sqlite_errors():
            doc = coll.find_one({"_id": name}) or {}
            value = max(int(doc.get("value", 0)), floor) + 1
            coll.replace_one({"_id": name}, {"_id": name, "value": value}, upsert=True)
        return value
    try:
        coll.update_one({"_id": name}, {"$max": {"value": floor}}, upsert=True)
    except DuplicateKeyError:  # another process created the counter at the same moment
        coll.update_one({"_id": name}, {"$max": {"value": floor}})
    doc = coll.find_one_and_update({"_id": name}, {"$inc": {"value": 1}},
                                   return_document=ReturnDocument.AFTER)
    return int(doc["value"])

"""Waiting out a store outage: bounded retries of reads and writes that lost the server.

A MongoDB server that restarts, fails over or drops off the network for a
while should not cost a run its results: every store call the runner and the
jobs' record step make is retried until the server answers again, for at most
``store.retry_seconds`` (120 s by default). Past that the call raises
:class:`StoreUnavailableError`, one line naming the store, and the run stops.

Only connection failures are retried; an authentication error, a bad query or
a full disk fails at once. Retried writes must be idempotent: they are keyed
updates (job outputs by ``uuid`` and ``index``, records by their id) or merges
that recognise their own earlier write (validated structures).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from jobflow import JobStore
from pymongo.errors import ConnectionFailure

from xtalloop.errors import StoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two attempts (the client's own server selection adds its timeout).
PAUSE = 1.0
DEFAULT_SECONDS = 120.0


class StoreUnavailableError(StoreError):
    """The store stayed unreachable for longer than the configured wait."""


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it replaced) means the server could not be reached.

    pymongo's ``ConnectionFailure`` covers ``AutoReconnect``,
    ``ServerSelectionTimeoutError`` and ``NetworkTimeout``. xtalloop's store
    turns a failed connect into a one-line :class:`StoreError` raised ``from
    None``; the pymongo error stays in its ``__context__``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StoreUnavailableError):
            return False  # already waited: do not wait again
        if isinstance(exc, ConnectionFailure):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(call: Callable[[], T], seconds: float = DEFAULT_SECONDS, what: str = "the store",
             on_retry: Callable[[], None] | None = None) -> T:
    """``call()``, retried while it fails to reach the server, for at most ``seconds``.

    Parameters
    ----------
    call
        An idempotent store operation.
    seconds
        Total time to keep trying after the first failure.
    what
        The store, for the message (never a URI with credentials).
    on_retry
        Called before each new attempt (e.g. to drop a stale connection).

    Raises
    ------
    StoreUnavailableError
        The server did not answer within ``seconds``.
    """
    deadline: float | None = None
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + seconds
                logger.warning("%s does not answer; retrying for up to %.0f s", what, seconds)
            if now >= deadline:
                raise StoreUnavailableError(
                    f"{what} did not answer for {seconds:.0f} s (store.retry_seconds); "
                    "the run stopped: run it again to complete what is missing") from None
            time.sleep(min(PAUSE, max(0.0, deadline - now)))
            if on_retry is not None:
                on_retry()


class RetryingJobStore(JobStore):
    """jobflow's ``JobStore`` whose reads and writes wait out a store outage.

    Jobs read their inputs (``get_output``) and write their outputs
    (``update``) through the job store; without retries a job whose output
    write meets a restarting server is lost although its work (a DFT
    relaxation) is done.

    Parameters
    ----------
    retry_seconds
        How long each call keeps trying.
    **kwargs
        As for ``JobStore``.
    """

    def __init__(self, *args: Any, retry_seconds: float = DEFAULT_SECONDS, **kwargs: Any) -> None:
        self.retry_seconds = retry_seconds
        super().__init__(*args, **kwargs)

    @classmethod
    def wrap(cls, store: JobStore, retry_seconds: float) -> RetryingJobStore:
        """The same stores as ``store``, with retries, and the job documents this run
        writes answered from memory (:class:`~xtalloop.store.recent.RecentJobDocs`)."""
        from xtalloop.store.recent import RecentJobDocs

        return cls(RecentJobDocs(store.docs_store), additional_stores=store.additional_stores,
                   save=store.save, load=store.load, retry_seconds=retry_seconds)

    def _retry(self, call: Callable[[], T]) -> T:
        return retrying(call, self.retry_seconds, f"the job store {self.docs_store.name}")

    def connect(self, force_reset: bool = False) -> None:
        self._retry(lambda: super(RetryingJobStore, self).connect(force_reset=force_reset))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._retry(lambda: super(RetryingJobStore, self).update(*args, **kwargs))

    def query_one(self, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: super(RetryingJobStore, self).query_one(*args, **kwargs))

    def query(self, *args: Any, **kwargs: Any) -> Any:
        # a generator: materialise it inside the retry, or the error escapes later
        return iter(self._retry(lambda: list(super(RetryingJobStore, self).query(*args,
                                                                                  **kwargs))))

    def get_output(self, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: super(RetryingJobStore, self).get_output(*args, **kwargs))

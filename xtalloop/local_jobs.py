"""Run a flow in this process, recording each failed job in the store.

jobflow's ``run_locally`` logs a failed job's traceback and keeps going; the
only trace of the failure is the log text, and a job that failed because the
store was briefly unreachable is lost like any other. :func:`run_jobs` runs
the flow the same way (same order, same replace/detour/addition handling,
children of a failed job skipped unless they accept missing references) but:

* a job that fails on a store outage is run again once the store answers (for
  at most ``store.retry_seconds``), then the run stops with
  :class:`~xtalloop.retry.StoreUnavailableError`;
* any other failure is written to the ``job_errors`` collection (job uuid,
  name, run id and the error's last line), where :func:`job_failures` and
  ``xtalloop status`` read it.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from contextlib import chdir
from datetime import datetime, timezone
from pathlib import Path
from random import randint
from typing import Any

from jobflow import SETTINGS, Flow, Job, JobStore, OnMissing, Response
from jobflow.core.flow import get_flow

from xtalloop.config import StoreConfig
from xtalloop.retry import StoreUnavailableError, is_connection_error, retrying
from xtalloop.store import collection_store

logger = logging.getLogger(__name__)

JOB_ERRORS = "job_errors"


def job_errors_store(config: StoreConfig) -> Any:
    """The maggma store of failed jobs (one document per job uuid and index)."""
    return collection_store(config, JOB_ERRORS)


def error_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the last line of a multi-line message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def run_jobs(
    flow: Flow | Job,
    store: JobStore,
    config: StoreConfig,
    root_dir: Path,
    run_id: str,
    heartbeat: Callable[[], None] | None = None,
    attempt: str | None = None,
) -> dict[str, dict[int, Response]]:
    """Run ``flow`` locally; return the responses of the jobs that finished.

    Parameters
    ----------
    flow
        The flow (or job) to run.
    store
        The job store (a :class:`~xtalloop.retry.RetryingJobStore` waits out outages).
    config
        The store settings: where failures are recorded, how long to wait.
    root_dir
        Each job runs in its own ``job_<time>-<n>`` folder under it.
    run_id
        Recorded with every failure.
    heartbeat
        Called before each job (the run record's sign of life).
    attempt
        Recorded with every failure: which execution of a resumed run failed.

    Raises
    ------
    StoreUnavailableError
        The store stayed unreachable for ``config.retry_seconds``.
    """
    root_dir.mkdir(parents=True, exist_ok=True)
    store.connect()
    flow = get_flow(flow, allow_external_references=False)
    errors = job_errors_store(config)
    retrying(errors.connect, config.retry_seconds, config.location)
    stopped: set[str] = set()
    errored: set[str] = set()
    responses: dict[str, dict[int, Response]] = defaultdict(dict)

    def record_failure(job: Job, exc: Exception) -> None:
        doc = {"uuid": job.uuid, "index": job.index, "key": f"{job.uuid}:{job.index}",
               "name": job.name, "run_id": run_id, "attempt": attempt, "error": error_line(exc),
               "traceback": traceback.format_exc()[-4000:], "metadata": job.metadata,
               "hosts": job.hosts, "failed_at": datetime.now(timezone.utc).isoformat()}
        retrying(lambda: errors.update([doc], key="key"), config.retry_seconds,
                 config.location)

    def run_one(job: Job) -> Response | None:
        deadline = None
        while True:
            try:
                return job.run(store=store)
            except Exception as exc:
                if isinstance(exc, StoreUnavailableError):
                    raise
                if not is_connection_error(exc):
                    logger.info("%s failed: %s", job.name, error_line(exc))
                    record_failure(job, exc)
                    return None
                deadline = deadline or time.monotonic() + config.retry_seconds
                if time.monotonic() >= deadline:
                    raise StoreUnavailableError(
                        f"{config.location} did not answer for {config.retry_seconds:.0f} s "
                        f"(store.retry_seconds) while {job.name!r} ran; the run stopped: "
                        "run it again to complete what is missing") from None
                logger.warning("%s: the store does not answer; running it again", job.name)
                time.sleep(1.0)

    def run_job(job: Job, parents: list[str]) -> bool:
        if stopped.intersection(parents):
            stopped.add(job.uuid)
            return True
        if errored.intersection(parents) and job.config.on_missing_references == OnMissing.ERROR:
            errored.add(job.uuid)
            return False
        if heartbeat is not None:
            heartbeat()
        response = run_one(job)
        if response is None:
            errored.add(job.uuid)
            return False
        responses[job.uuid][job.index] = response
        if response.stop_children:
            stopped.add(job.uuid)
        if response.stop_jobflow:
            raise _StopFlow
        ok = True
        for new in (response.replace, response.detour, response.addition):
            if new is not None:
                ok = run(new) and ok
        return ok

    def run(root: Flow) -> bool:
        ok = True
        for job, parents in root.iterflow():
            stamp = datetime.now(tz=timezone.utc).strftime(SETTINGS.DIRECTORY_FORMAT)
            job_dir = root_dir / f"job_{stamp}-{randint(10000, 99999)}"
            job_dir.mkdir()
            with chdir(job_dir):
                ok = run_job(job, parents) and ok
        return ok

    try:
        run(flow)
    except _StopFlow:
        pass
    finally:
        errors.close()
    return dict(responses)


class _StopFlow(Exception):
    """A job asked to stop the whole flow (``Response.stop_jobflow``)."""


def job_failures(config: StoreConfig, run_id: str, attempt: str | None = None
                 ) -> list[dict[str, Any]]:
    """The failed jobs of run ``run_id``: ``uuid``, ``name`` and ``error``, oldest first.

    With ``attempt``, only those of that execution (a resumed run's earlier
    failures were completed since).
    """
    store = job_errors_store(config)
    criteria = {"run_id": run_id, **({"attempt": attempt} if attempt else {})}

    def read() -> list[dict[str, Any]]:
        store.connect()
        try:
            return list(store.query(criteria,
                                    properties=["uuid", "name", "error", "failed_at"]))
        finally:
            store.close()

    docs = retrying(read, config.retry_seconds, config.location)
    return [{k: d.get(k) for k in ("uuid", "name", "error")}
            for d in sorted(docs, key=lambda d: d.get("failed_at") or "")]

"""A local run's record: which process runs it, whether that process is still there.

A run executed by ``xtalloop run`` records its host, process id and the
process's start time; the record says ``running`` until the run ends. A run
that is killed (``kill -9``, a node that went down, a closed terminal) cannot
say so itself: the next ``xtalloop run`` or ``xtalloop status`` that finds a
``running`` record whose process is gone from this host marks it
``interrupted``, and ``xtalloop run`` then resumes it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xtalloop.config import StoreConfig
from xtalloop.errors import ConfigError
from xtalloop.retry import retrying
from xtalloop.store.results import ResultsDB, now, open_results

logger = logging.getLogger(__name__)


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22 of proc(5)


def this_process() -> dict[str, Any]:
    """``host``, ``pid`` and ``start_ticks`` of the running process, for its run record."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_ticks": _start_ticks(os.getpid())}


def process_gone(record: dict[str, Any]) -> bool:
    """Whether the process that runs ``record`` has ended (known only on its own host)."""
    process = record.get("process") or {}
    if process.get("host") != socket.gethostname() or not process.get("pid"):
        return False
    pid = int(process["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        pass
    ticks = process.get("start_ticks")
    return ticks is not None and _start_ticks(pid) not in (None, ticks)  # pid reused


def mark_if_lost(db: Any, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """Mark a ``running`` local run that stopped ``interrupted``; return the record.

    A run stopped if its process is gone from this host, or if it left a
    stop note in its folder (:func:`write_stop_marker`: it could not reach the
    store to say so).

    Parameters
    ----------
    db
        An open :class:`~xtalloop.store.results.ResultsDB`.
    record
        A run record (``None`` passes through).
    """
    if record is None or record.get("status") != "running" or record.get("submission"):
        return record
    reason = _stop_marker(record)  # the run left why it stopped (the store was unreachable)
    if reason is None:
        if not process_gone(record):
            return record
        process = record["process"]
        reason = (f"its process {process['pid']} on {process['host']} ended without "
                  "finishing (killed?); run it again to complete what is missing")
    update = {"id": record["id"], "status": "interrupted", "stopped_by": reason,
              "interrupted_at": now()}
    db.save_run(update)
    return {**record, **update}


STOPPED_FILE = "stopped.txt"


def write_stop_marker(run_dir: Path, reason: str) -> None:
    """Leave why a run stopped in its folder, for when the store cannot record it."""
    try:
        (run_dir / STOPPED_FILE).write_text(reason + "\n")
    except OSError:
        pass


def _stop_marker(record: dict[str, Any]) -> str | None:
    if not record.get("run_dir"):
        return None
    try:
        return (Path(record["run_dir"]) / STOPPED_FILE).read_text().strip() or None
    except OSError:
        return None


def clear_stop_marker(run_dir: Path) -> None:
    """Forget an earlier stop (the run resumes)."""
    (run_dir / STOPPED_FILE).unlink(missing_ok=True)


def check_output_dir(output_dir: str | Path) -> Path:
    """``output_dir`` resolved, or one line saying why run folders cannot go there.

    Checked before any work, and before the run folder is created: a path
    under a regular file, or in a folder this user cannot write, fails here.
    """
    path = Path(output_dir).expanduser()
    try:
        path = path.resolve()
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"output_dir: {output_dir}: {exc}") from None
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == path else f"is under {existing}, which is"
        raise ConfigError(f"output_dir: {path} {where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: cannot create run folders in {existing} "
                          "(no write permission)")
    return path


# -- writing the record while the run goes on -----------------------------------


def with_db(config: StoreConfig, call: Callable[[ResultsDB], Any]) -> Any:
    """``call(db)`` on a fresh connection, retried while the store is unreachable."""
    def attempt() -> Any:
        with open_results(config) as db:
            return call(db)

    return retrying(attempt, config.retry_seconds, config.location)


def save_run(config: StoreConfig, doc: dict[str, Any]) -> None:
    """Update the run record, waiting out a store outage (``store.retry_seconds``)."""
    with_db(config, lambda db: db.save_run(doc))


def heartbeat(config: StoreConfig, run_id: str, every: float = 30.0) -> Callable[[], None]:
    """A sign of life in the run record, at most every ``every`` seconds (best effort)."""
    last = [time.monotonic()]

    def beat() -> None:
        if time.monotonic() - last[0] < every:
            return
        last[0] = time.monotonic()
        try:
            with open_results(config) as db:
                db.save_run({"id": run_id, "heartbeat_at": now()})
        except Exception as exc:  # the next store write waits for the store
            logger.info("run %s: heartbeat not recorded: %s", run_id, exc)

    return beat


def record_stop(config: StoreConfig, run_id: str, run_dir: Path, reason: str) -> None:
    """Record why a run stopped: in the store if it answers now, else in its folder."""
    write_stop_marker(run_dir, reason)
    try:
        with open_results(config) as db:
            db.save_run({"id": run_id, "status": "interrupted", "stopped_by": reason,
                         "interrupted_at": now()})
    except Exception:  # the store is down: the note in the folder tells the next run
        return
    clear_stop_marker(run_dir)

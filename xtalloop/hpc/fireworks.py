"""The FireWorks engine: a run as one FireWorks workflow on a LaunchPad.

A cluster runs the workflow with FireWorks' own launchers (``rlaunch`` or
``qlaunch`` with a queue adapter, see ``configs/fireworks/``); every job
writes its outputs to the run's MongoDB job store and its validated
structures to the results collections, so ``xtalloop query`` sees them as
they finish.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from xtalloop.config import RunConfig
from xtalloop.errors import ConfigError, StoreError
from xtalloop.store.backends import client_options, connection_error, read_password

if TYPE_CHECKING:
    from jobflow import Flow

#: FireWorks states grouped the way ``xtalloop status`` reports them.
STATE_GROUPS = {
    "WAITING": "waiting", "READY": "waiting", "RESERVED": "waiting", "PAUSED": "waiting",
    "RUNNING": "running",
    "COMPLETED": "completed",
    "FIZZLED": "failed",
    "DEFUSED": "cancelled", "ARCHIVED": "cancelled",
}


def launchpad_for(config: RunConfig):
    """The FireWorks ``LaunchPad`` a run configuration names, connected and checked.

    ``submit.launchpad_file`` wins; otherwise the LaunchPad lives in the database
    ``submit.launchpad_database`` of the store's MongoDB server.

    Raises
    ------
    ConfigError
        Neither a LaunchPad file nor a MongoDB store, or an unreadable file.
    StoreError
        The server does not answer or refuses the credentials (one line, no password).
    """
    from fireworks import LaunchPad

    submit = config.submit
    if submit.launchpad_file:
        path = Path(submit.launchpad_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"submit.launchpad_file: {path} does not exist")
        try:
            launchpad = _launchpad_from_file(path)
        except StoreError:
            raise
        except Exception as exc:  # FireWorks raises whatever its YAML/Mongo layers raise
            raise ConfigError(f"submit.launchpad_file: cannot read {path}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from None
        where = f"the LaunchPad of {path}"
    else:
        store = config.store
        if store.backend != "mongodb":
            raise ConfigError(
                "submit: FireWorks needs a MongoDB server that the cluster's nodes reach: "
                "set store.backend: mongodb (and store.uri) or submit.launchpad_file")
        options = client_options(store)
        password = read_password(store.password_env, store.password_file)
        if password is not None:
            options["password"] = password
        launchpad = LaunchPad(host=store.uri, uri_mode=True, name=submit.launchpad_database,
                              mongoclient_kwargs=options, strm_lvl="ERROR")
        where = None
    try:
        launchpad.db.command("ping")
    except PyMongoError as exc:
        if where is None:
            raise connection_error(config.store.uri or "", submit.launchpad_database, exc) from None
        raise StoreError(f"cannot reach {where}: {str(exc).splitlines()[0]}") from None
    return launchpad


def _launchpad_from_file(path: Path):
    """``LaunchPad.from_file``, reading ``mongoclient_kwargs.password_env`` itself.

    FireWorks' own commands read that variable through the client class that
    ``FW_config.yaml`` names (:mod:`xtalloop.mongo_client`); xtalloop reads it
    here, so ``--launchpad`` works without that configuration.
    """
    import yaml
    from fireworks import LaunchPad

    data = yaml.safe_load(path.read_text())  # YAML or JSON, as FireWorks reads it
    kwargs = dict(data.get("mongoclient_kwargs") or {})
    password_env = kwargs.pop("password_env", None)
    if password_env is not None and "password" not in kwargs:
        value = os.environ.get(password_env)
        if not value:
            raise StoreError(f"the MongoDB password variable {password_env} "
                             f"(mongoclient_kwargs.password_env of {path}) is not set")
        kwargs["password"] = value
    return LaunchPad.from_dict({**data, "mongoclient_kwargs": kwargs})


def submit_to_fireworks(
    config: RunConfig, flow: Flow, run: dict[str, Any], launchpad=None
) -> dict[str, Any]:
    """Add ``flow`` to the LaunchPad as one workflow tagged with the run id.

    ``launchpad`` defaults to :func:`launchpad_for` ``(config)``.

    Returns
    -------
    dict
        ``engine``, ``workflow_id`` (the first FireWork's id) and ``n_jobs``.
    """
    from jobflow.managers.fireworks import flow_to_workflow

    from xtalloop.store import job_store

    launchpad = launchpad or launchpad_for(config)
    if config.submit.category:
        flow.update_config({"manager_config": {"_category": config.submit.category}})
    workflow = flow_to_workflow(flow, store=job_store(config.store),
                                metadata={"xtalloop_run": run["id"], "xtalloop_name": run["name"]})
    try:
        if (launchpad.fw_id_assigner.count_documents({}) == 0
                and launchpad.fireworks.count_documents({}) == 0):
            # a new, empty LaunchPad database: initialise it (what `lpad reset` does)
            launchpad.reset("", require_password=False)
        ids = launchpad.add_wf(workflow)
    except PyMongoError as exc:
        raise connection_error(config.store.uri or "", config.submit.launchpad_database,
                               exc) from None
    return {"engine": "fireworks", "workflow_id": min(ids.values()), "n_jobs": len(ids)}


def _workflow(launchpad, run_id: str) -> dict[str, Any]:
    doc = launchpad.workflows.find_one({"metadata.xtalloop_run": run_id})
    if doc is None:
        raise StoreError(f"no FireWorks workflow of run {run_id!r} on the LaunchPad")
    return doc


def fireworks_status(config: RunConfig, run_id: str) -> dict[str, Any]:
    """Job counts of a submitted run by state, and the failed jobs with their last error line.

    Returns
    -------
    dict
        ``counts`` (``waiting``, ``running``, ``completed``, ``failed``,
        ``cancelled``), ``states`` (FireWorks' own counts), ``failed``
        (``{"id", "name", "error"}`` per failed job) and ``running``
        (``{"id", "name", "host", "launch_dir", "last_seen"}`` per running job:
        ``last_seen`` is how many seconds ago its worker last pinged; a queue job
        killed by the scheduler stops pinging, see :func:`rerun_failed_fireworks`).
    """
    launchpad = launchpad_for(config)
    doc = _workflow(launchpad, run_id)
    states = Counter(doc["fw_states"].values())
    counts = Counter({group: 0 for group in dict.fromkeys(STATE_GROUPS.values())})
    for state, n in states.items():
        counts[STATE_GROUPS.get(state, "waiting")] += n
    failed = []
    fizzled = [int(i) for i, state in doc["fw_states"].items() if state == "FIZZLED"]
    for fw in launchpad.fireworks.find({"fw_id": {"$in": fizzled}}, {"fw_id": 1, "name": 1}):
        failed.append({"id": fw["fw_id"], "name": fw["name"],
                       "error": _last_error(launchpad, fw["fw_id"])})
    return {"counts": dict(counts), "states": dict(states), "failed": failed,
            "running": _running(launchpad, doc)}


def _running(launchpad, doc: dict[str, Any]) -> list[dict[str, Any]]:
    ids = [int(i) for i, state in doc["fw_states"].items() if state == "RUNNING"]
    names = {fw["fw_id"]: fw["name"]
             for fw in launchpad.fireworks.find({"fw_id": {"$in": ids}}, {"fw_id": 1, "name": 1})}
    now = datetime.now(timezone.utc)
    running = []
    for launch in launchpad.launches.find({"fw_id": {"$in": ids}, "state": "RUNNING"},
                                          {"fw_id": 1, "host": 1, "launch_dir": 1,
                                           "state_history": 1}):
        seen = [h.get("updated_on") for h in launch.get("state_history", [])
                if h.get("state") == "RUNNING" and h.get("updated_on")]
        last = datetime.fromisoformat(seen[-1]) if seen else None
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=timezone.utc)
        running.append({"id": launch["fw_id"], "name": names.get(launch["fw_id"], "?"),
                        "host": launch.get("host"), "launch_dir": launch.get("launch_dir"),
                        "last_seen": None if last is None else (now - last).total_seconds()})
    return sorted(running, key=lambda r: r["id"])


def _last_error(launchpad, fw_id: int) -> str:
    launch = launchpad.launches.find_one({"fw_id": fw_id, "state": "FIZZLED"},
                                         sort=[("time_end", -1)])
    if launch is None:
        return "unknown error (lost run?)"
    data = (launch.get("action") or {}).get("stored_data") or {}
    trace = (data.get("_exception") or {}).get("_stacktrace") or ""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def rerun_failed_fireworks(config: RunConfig, run_id: str, lost_after: float | None = None) -> int:
    """Requeue every failed (fizzled) job of a run, and its lost runs; returns how many.

    A lost run is a job left ``RUNNING`` by a worker that died without a word:
    a queue job cancelled (``scancel``) or killed at its walltime, a node that
    crashed. FireWorks' workers ping the LaunchPad every ``PING_TIME_SECS``;
    a job not heard from for ``lost_after`` seconds (default: FireWorks'
    ``RUN_EXPIRATION_SECS``, both set in ``FW_config.yaml``) is lost.
    """
    from fireworks.fw_config import RUN_EXPIRATION_SECS

    lost = recover_lost_fireworks(config, run_id, RUN_EXPIRATION_SECS if lost_after is None
                                  else lost_after)
    launchpad = launchpad_for(config)
    doc = _workflow(launchpad, run_id)
    ids = [int(i) for i, state in doc["fw_states"].items() if state == "FIZZLED"]
    for fw_id in ids:
        launchpad.rerun_fw(fw_id)
    return len(ids) + lost


def recover_lost_fireworks(config: RunConfig, run_id: str, expiration_secs: int = 4 * 3600) -> int:
    """Requeue jobs left ``RUNNING`` by a dead worker (no ping for ``expiration_secs``)."""
    launchpad = launchpad_for(config)
    doc = _workflow(launchpad, run_id)
    _, lost, _ = launchpad.detect_lostruns(expiration_secs=expiration_secs, rerun=True,
                                           query={"fw_id": {"$in": doc["nodes"]}})
    return len(lost)

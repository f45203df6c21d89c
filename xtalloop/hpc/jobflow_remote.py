"""The jobflow-remote engine: a run's flow submitted to a jobflow-remote project.

jobflow-remote keeps its queue and job outputs in the project's own stores
(``~/.jfremote/<project>.yaml``, example in ``configs/jobflow-remote/``;
:func:`project_stores` puts them on the run's MongoDB database, password-free);
xtalloop's validated structures still go to the run's ``store``. A project's
runner (``jf runner start``) submits the jobs to the worker's scheduler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jobflow import Flow

from xtalloop.config import RunConfig, StoreConfig
from xtalloop.errors import ConfigError, StoreError, XtalloopError

#: jobflow-remote job states (``JobState`` of jobflow-remote 1.0) grouped the way
#: ``xtalloop status`` reports them. ``SUBMITTED`` jobs wait in the scheduler's queue;
#: ``RUN_FINISHED`` and ``DOWNLOADED`` ones have run and wait for the runner to
#: store their outputs.
STATE_GROUPS = {
    "WAITING": "waiting", "READY": "waiting", "CHECKED_OUT": "waiting", "UPLOADED": "waiting",
    "SUBMITTED": "waiting", "BATCH_SUBMITTED": "waiting", "PAUSED": "waiting",
    "RUNNING": "running", "BATCH_RUNNING": "running", "RUN_FINISHED": "running",
    "DOWNLOADED": "running",
    "COMPLETED": "completed",
    "FAILED": "failed", "REMOTE_ERROR": "failed",
    "STOPPED": "cancelled", "USER_STOPPED": "cancelled",
}


#: Collections of the jobflow-remote queue when it shares the run's database.
QUEUE_COLLECTIONS = {"collection_name": "jfr_jobs", "flows_collection": "jfr_flows",
                     "auxiliary_collection": "jfr_auxiliary", "batches_collection": "jfr_batches"}


def project_stores(store: StoreConfig) -> dict[str, Any]:
    """The ``queue`` and ``jobstore`` sections of a jobflow-remote project for a run's store.

    Both use xtalloop's own MongoDB stores, which read the password from
    ``store.password_env`` or ``store.password_file`` when they connect: the
    project file holds no password (the runner needs the variable or file).
    The job outputs go where the other engines put them (``jobs`` and the
    ``job_data`` GridFS of the store's database), the queue to the ``jfr_*``
    collections of the same database, so one database user suffices.

    Parameters
    ----------
    store
        The run's store; it must be ``backend: mongodb``.

    Returns
    -------
    dict
        ``{"queue": ..., "jobstore": ...}``, plain data to write into
        ``~/.jfremote/<project>.yaml`` (example in ``configs/jobflow-remote/``).
    """
    if store.backend != "mongodb":
        raise ConfigError("store.backend: mongodb is needed for jobflow-remote (its runner "
                          "and the cluster's jobs share the database)")
    from xtalloop.store.backends import collection_store, job_store

    queue = collection_store(store, QUEUE_COLLECTIONS["collection_name"]).as_dict()
    return {"queue": {"store": queue, **{k: v for k, v in QUEUE_COLLECTIONS.items()
                                         if k != "collection_name"}},
            "jobstore": job_store(store).as_dict()}


def _jobflow_remote():
    try:
        import jobflow_remote
    except ImportError:
        raise XtalloopError("jobflow-remote is not installed: pip install 'xtalloop[hpc]' "
                            "(or pip install jobflow-remote)") from None
    return jobflow_remote


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _last_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _db_id_order(info: Any) -> tuple[int, str]:
    """Jobs in the order they were added: ``db_id`` is a counter (after an optional prefix)."""
    return len(info.db_id), info.db_id


def _project_name(config: RunConfig, project: str | None) -> str | None:
    return project or config.submit.project


@contextmanager
def _controller(config: RunConfig, project: str | None = None) -> Iterator[Any]:
    """A ``JobController`` of the project, connected to its queue; closed on exit."""
    jfr = _jobflow_remote()
    name = _project_name(config, project)
    try:
        controller = jfr.JobController.from_project_name(name)
    except Exception as exc:  # jobflow-remote's config and connection errors
        raise StoreError(f"jobflow-remote project {name!r}: {_first_line(exc)} (projects "
                         f"folder {jfr.SETTINGS.projects_folder})") from None
    try:
        yield controller
    finally:
        controller.close()


def _jobs(controller: Any, name: str | None, flow_uuid: str) -> list[Any]:
    try:
        return controller.get_jobs_info(flow_ids=[flow_uuid])
    except Exception as exc:  # unreachable queue database
        raise StoreError(f"jobflow-remote project {name!r}: cannot read the queue: "
                         f"{_first_line(exc)}") from None


def submit_to_jobflow_remote(config: RunConfig, flow: Flow, run: dict[str, Any]) -> dict[str, Any]:
    """Submit ``flow`` to the configured project and worker; the flow's uuid identifies the run.

    Parameters
    ----------
    config
        The run configuration; ``submit.project``, ``submit.worker`` and
        optionally ``submit.exec_config`` and ``submit.resources`` say where.
    flow
        The run's flow (:func:`xtalloop.workflows.csp.run_flow`).
    run
        ``{"id", "name"}`` of the run; the id is added to every job's metadata.

    Returns
    -------
    dict
        ``engine``, ``flow_uuid``, ``project``, ``worker`` and ``n_jobs``.
    """
    submit = config.submit
    if not submit.project or not submit.worker:
        raise ConfigError("submit: engine jobflow-remote needs submit.project and submit.worker")
    jfr = _jobflow_remote()
    flow.update_metadata({"xtalloop_run": run["id"]})
    try:
        ids = jfr.submit_flow(flow, worker=submit.worker, project=submit.project,
                              exec_config=submit.exec_config, resources=submit.resources)
    except Exception as exc:  # unknown project/worker, unreachable or uninitialised queue
        raise StoreError(f"jobflow-remote could not submit to project {submit.project!r}: "
                         f"{_first_line(exc)}") from None
    return {"engine": "jobflow-remote", "flow_uuid": flow.uuid, "project": submit.project,
            "worker": submit.worker, "n_jobs": len(ids)}


def jobflow_remote_status(config: RunConfig, flow_uuid: str,
                          project: str | None = None) -> dict[str, Any]:
    """Job counts of a submitted flow by state, and the failed jobs with their last error line.

    Parameters
    ----------
    config
        The run configuration.
    flow_uuid
        The uuid of the submitted flow (in the run's record).
    project
        The project the flow was submitted to (default: ``submit.project``).

    Returns
    -------
    dict
        ``counts`` (``waiting``, ``running``, ``completed``, ``failed``,
        ``cancelled``), ``states`` (jobflow-remote's own counts) and ``failed``
        (``{"id", "name", "error"}`` per failed job, ``id`` the job's ``db_id``).
    """
    name = _project_name(config, project)
    with _controller(config, project) as controller:
        jobs = _jobs(controller, name, flow_uuid)
    states = Counter(info.state.value for info in jobs)
    counts = Counter({group: 0 for group in dict.fromkeys(STATE_GROUPS.values())})
    for state, n in states.items():
        counts[STATE_GROUPS.get(state, "waiting")] += n
    failed = [
        # FAILED: the job raised (``error`` holds its traceback) or its queue job ended
        # without a result (``scancel``, walltime: "likely killed before completing");
        # REMOTE_ERROR: the runner could not upload, submit or download it (``remote.error``)
        {"id": info.db_id, "name": info.name,
         "error": _last_line(info.error) or _last_line(info.remote.error) or "unknown error"}
        for info in sorted(jobs, key=_db_id_order)
        if STATE_GROUPS.get(info.state.value) == "failed"
    ]
    return {"counts": dict(counts), "states": dict(states), "failed": failed}


def rerun_failed_jobflow_remote(config: RunConfig, flow_uuid: str,
                                project: str | None = None) -> int:
    """Requeue every failed job of a submitted flow; returns how many.

    A failed job's completed descendants (the composition's record, which runs
    without the failed pick) go back to waiting, so that they run again once
    the job has. A job whose SLURM job was cancelled or killed is ``FAILED``
    too (the runner finds no result once the scheduler no longer lists it) and
    is requeued the same way (tests/test_slurm_jobflow_remote.py).
    """
    name = _project_name(config, project)
    with _controller(config, project) as controller:
        jobs = _jobs(controller, name, flow_uuid)
        failed = [info.db_id for info in sorted(jobs, key=_db_id_order)
                  if STATE_GROUPS.get(info.state.value) == "failed"]
        n = 0
        for db_id in failed:
            try:
                # a failed job downstream of another one was reset with it: skip it
                info = controller.get_job_info(db_id=db_id)
                if info is None or STATE_GROUPS.get(info.state.value) != "failed":
                    continue
                controller.rerun_job(db_id=db_id, force=True)
            except Exception as exc:  # a job locked by a runner, unreachable queue
                raise StoreError(f"jobflow-remote project {name!r}: could not rerun job "
                                 f"{db_id}: {_first_line(exc)}") from None
            n += 1
    return n

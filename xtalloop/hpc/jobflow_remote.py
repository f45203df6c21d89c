"""The jobflow-remote engine: a run's flow submitted to a jobflow-remote project.

jobflow-remote keeps its queue and job outputs in the project's own stores
(``~/.jfremote/<project>.yaml``, example in ``configs/jobflow-remote/``);
xtalloop's validated structures still go to the run's ``store``. A project's
runner (``jf runner start``) submits the jobs to the worker's scheduler.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from jobflow import Flow

from xtalloop.config import RunConfig
from xtalloop.errors import ConfigError, StoreError, XtalloopError

#: jobflow-remote job states grouped the way ``xtalloop status`` reports them.
STATE_GROUPS = {
    "WAITING": "waiting", "READY": "waiting", "CHECKED_OUT": "waiting", "UPLOADED": "waiting",
    "BATCH_SUBMITTED": "waiting", "SUBMITTED": "waiting", "PAUSED": "waiting",
    "STOPPED": "cancelled", "USER_STOPPED": "cancelled",
    "RUNNING": "running", "BATCH_RUNNING": "running", "TERMINATED": "running",
    "DOWNLOADED": "running",
    "COMPLETED": "completed",
    "FAILED": "failed", "REMOTE_ERROR": "failed",
}


def _jobflow_remote():
    try:
        import jobflow_remote
    except ImportError:
        raise XtalloopError("jobflow-remote is not installed: pip install 'xtalloop[hpc]' "
                            "(or pip install jobflow-remote)") from None
    return jobflow_remote


def _controller(config: RunConfig):
    jfr = _jobflow_remote()
    try:
        return jfr.JobController.from_project_name(config.submit.project)
    except Exception as exc:  # jobflow-remote's config and connection errors
        raise StoreError(f"jobflow-remote project {config.submit.project!r}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None


def submit_to_jobflow_remote(config: RunConfig, flow: Flow, run: dict[str, Any]) -> dict[str, Any]:
    """Submit ``flow`` to the configured project and worker; the flow's uuid identifies the run.

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
    except Exception as exc:  # unknown project/worker, unreachable queue database
        raise StoreError(f"jobflow-remote could not submit to project {submit.project!r}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None
    return {"engine": "jobflow-remote", "flow_uuid": flow.uuid, "project": submit.project,
            "worker": submit.worker, "n_jobs": len(ids)}


def jobflow_remote_status(config: RunConfig, flow_uuid: str) -> dict[str, Any]:
    """Job counts by state of a submitted flow, and its failed jobs with their error."""
    controller = _controller(config)
    jobs = controller.get_jobs_info(flow_ids=[flow_uuid])
    states = Counter(info.state.name for info in jobs)
    counts = Counter({group: 0 for group in dict.fromkeys(STATE_GROUPS.values())})
    for state, n in states.items():
        counts[STATE_GROUPS.get(state, "waiting")] += n
    failed = [
        {"id": info.db_id, "name": info.name,
         "error": (info.error or info.remote.error or "unknown error").strip().splitlines()[-1]
         if (info.error or getattr(info.remote, "error", None)) else "unknown error"}
        for info in jobs if STATE_GROUPS.get(info.state.name) == "failed"
    ]
    return {"counts": dict(counts), "states": dict(states), "failed": failed}


def rerun_failed_jobflow_remote(config: RunConfig, flow_uuid: str) -> int:
    """Requeue every failed job of a submitted flow; returns how many."""
    controller = _controller(config)
    jobs = controller.get_jobs_info(flow_ids=[flow_uuid])
    failed = [info.db_id for info in jobs if STATE_GROUPS.get(info.state.name) == "failed"]
    if failed:
        controller.rerun_jobs(db_ids=failed, force=True)
    return len(failed)

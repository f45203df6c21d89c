"""Submit a run to a cluster's workflow manager, follow it, requeue its failures.

The engine (``submit.engine`` in the config) is recorded in the run's record
in the results store, so ``xtalloop status`` and ``xtalloop rerun-failed``
find the run again from its id alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xtalloop.config import RunConfig
from xtalloop.errors import StoreError
from xtalloop.store.results import now, open_results

if TYPE_CHECKING:
    from xtalloop.dft.result import DftMaker


def submit(
    config: RunConfig,
    run_id: str | None = None,
    relax_maker: DftMaker | None = None,
) -> dict[str, Any]:
    """Build the run's flow and hand it to the configured engine; record the run.

    Parameters
    ----------
    config
        A validated run configuration; ``submit`` says which engine.
    run_id
        Id of the run (default: the config name and a timestamp).
    relax_maker
        Replaces the DFT relaxation maker the config's ``dft`` section describes.

    Returns
    -------
    dict
        The run record: ``id``, ``engine`` and what the engine returned
        (workflow id or flow uuid, number of jobs).
    """
    launchpad = None
    if config.submit.engine == "fireworks":
        from xtalloop.hpc.fireworks import launchpad_for

        launchpad = launchpad_for(config)  # before the slow imports: an unreachable server fails fast
    from xtalloop.runner import new_run_id
    from xtalloop.workflows.csp import run_flow

    run_id = run_id or new_run_id(config.name)
    run = {"id": run_id, "name": config.name}
    if config.loop is not None:  # one job that adds each round's jobs as it runs
        from xtalloop.workflows.loop import loop_flow

        flow = loop_flow(config, run_id, relax_maker=relax_maker)
    else:
        flow = run_flow(config, run, progress=False, relax_maker=relax_maker)
    if launchpad is not None:
        from xtalloop.hpc.fireworks import submit_to_fireworks

        submitted = submit_to_fireworks(config, flow, run, launchpad)
    else:
        from xtalloop.hpc.jobflow_remote import submit_to_jobflow_remote

        submitted = submit_to_jobflow_remote(config, flow, run)
    record = {"id": run_id, "name": config.name, "status": "submitted", "submitted_at": now(),
              **({"kind": "loop"} if config.loop is not None else {}),
              "config": config.redacted_dump(), "compositions": list(config.compositions),
              "submission": submitted}
    with open_results(config.store) as db:
        db.save_run(record)
    return record


def _run_record(config: RunConfig, run_id: str | None) -> dict[str, Any]:
    """The run's record; a local run whose process is gone is marked ``interrupted``."""
    from xtalloop.run_record import mark_if_lost

    with open_results(config.store, create=False) as db:  # status: never make a store
        record = mark_if_lost(db, db.get_run(run_id) if run_id else db.latest_run(config.name))
    if record is None:
        which = f"run {run_id!r}" if run_id else f"run of {config.name!r}"
        raise StoreError(f"no {which} in {config.store.location}")
    return record


def run_status(config: RunConfig, run_id: str | None = None) -> dict[str, Any]:
    """Where a run stands: its record, job counts by state and failed jobs.

    For a submitted run the counts come from the engine's own state
    (FireWorks LaunchPad, jobflow-remote queue); for a local run the failed
    jobs come from the store's ``job_errors`` collection, and a ``running``
    record whose process is gone becomes ``interrupted``. A submitted run's
    ``status`` becomes ``completed`` (or ``completed with failures``) once no
    job is waiting or running.

    Returns
    -------
    dict
        ``run`` (the record), ``counts``, ``failed`` (id, name and error line
        per failed job), ``validated`` (structures stored by the run, or by
        every round of a loop) and ``rounds`` (a loop's round records).
    """
    record = _run_record(config, run_id)
    submission = record.get("submission")
    running = None  # FireWorks: the running jobs, with where they run and when last heard of
    if submission is None:  # a local run: it ran in one process
        from xtalloop.local_jobs import job_failures

        failed = [{"id": f["uuid"], "name": f["name"], "error": f["error"]}
                  for f in job_failures(config.store, record["id"], record.get("attempt"))]
        if not failed and "attempt" not in record:  # recorded before job_errors existed
            failed = [{"id": None, "name": m.split(":", 1)[0],
                       "error": m.split(":", 1)[-1].strip()}
                      for m in record.get("failed_jobs", [])]
        counts = None
    elif submission["engine"] == "fireworks":
        from xtalloop.hpc.fireworks import fireworks_status

        state = fireworks_status(config, record["id"])
        counts, failed, running = state["counts"], state["failed"], state["running"]
    else:
        from xtalloop.hpc.jobflow_remote import jobflow_remote_status

        state = jobflow_remote_status(config, submission["flow_uuid"], submission.get("project"))
        counts, failed = state["counts"], state["failed"]
    with open_results(config.store) as db:
        rounds = db.rounds(record["id"]) if record.get("kind") == "loop" else []
        run_ids = [r["run_id"] for r in rounds] or [record["id"]]
        validated = list({d["uuid"]: d for rid in run_ids
                          for d in db.find_validated(run_id=rid)}.values())
        if counts is not None and not counts.get("waiting") and not counts.get("running"):
            status = "completed" if not counts.get("failed") else "completed with failures"
            if record.get("status") != status:
                record = {**record, "status": status, "finished_at": now()}
                db.save_run(record)
    return {"run": record, "counts": counts, "failed": failed, "validated": validated,
            "rounds": rounds, **({"running": running} if running is not None else {})}


def rerun_failed(config: RunConfig, run_id: str | None = None,
                 lost_after: float | None = None) -> int:
    """Requeue the failed jobs of a submitted run; returns how many were requeued.

    For FireWorks this includes lost runs: jobs whose worker has not pinged for
    ``lost_after`` seconds (see :func:`~xtalloop.hpc.fireworks.rerun_failed_fireworks`).
    """
    record = _run_record(config, run_id)
    submission = record.get("submission")
    if submission is None:
        raise StoreError(f"run {record['id']!r} ran locally: run `xtalloop run` again; it "
                         "completes the compositions without a result (stored results are "
                         "merged, never duplicated)")
    if submission["engine"] == "fireworks":
        from xtalloop.hpc.fireworks import rerun_failed_fireworks

        n = rerun_failed_fireworks(config, record["id"], lost_after)
    else:
        from xtalloop.hpc.jobflow_remote import rerun_failed_jobflow_remote

        n = rerun_failed_jobflow_remote(config, submission["flow_uuid"],
                                        submission.get("project"))
    if n:
        with open_results(config.store) as db:
            db.save_run({**record, "status": "submitted"})
    return n

"""Run a configuration locally: build the flows, execute them, write the run folder."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from jobflow import Flow, Job
from monty.json import MontyEncoder
from pymatgen.core import Structure

from xtalloop.config import RunConfig, StoreConfig
from xtalloop.dft.result import DftMaker
from xtalloop.local_jobs import job_failures, run_jobs
from xtalloop.retry import RetryingJobStore, StoreUnavailableError
from xtalloop.run_record import (
    check_output_dir, clear_stop_marker, heartbeat, mark_if_lost, record_stop, save_run,
    this_process, with_db,
)
from xtalloop.store import job_store
from xtalloop.store.results import ResultsDB, check_store, now, open_results
from xtalloop.workflows.csp import run_flow
from xtalloop.workflows.outputs import plain

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run produced: per-composition summaries and the files written."""

    run_id: str
    run_dir: Path
    compositions: list[dict[str, Any]]
    failed_jobs: list[str] = field(default_factory=list)
    energy_model: dict[str, Any] | None = None
    """What the learning job did (``learn.energy_model.enabled``), else ``None``."""
    missing: list[str] = field(default_factory=list)
    """Compositions that did not reach the record step (a job failed)."""
    resumed: bool = False
    """Whether this run completed an interrupted run of the same id."""

    @property
    def validated(self) -> list[dict[str, Any]]:
        """Every validated structure of the run, most stable first per formula."""
        rows = [v for c in self.compositions for v in c.get("validated", [])]
        return sorted(rows, key=lambda r: (r["formula"], r.get("e_above_hull") or 0.0,
                                           r["energy_per_atom"]))


def new_run_id(name: str) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>``: unique per second, sortable."""
    return f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def unfinished_run(config: RunConfig) -> dict[str, Any] | None:
    """The newest plain run of ``config.name`` left unfinished, if its config is the same.

    Unfinished: ``interrupted`` (a ``running`` record whose process is gone is
    marked so first), or finished with compositions that have no result.
    """
    with open_results(config.store) as db:
        record = mark_if_lost(db, db.latest_run(config.name))
    if (record and record.get("kind") != "loop"
            and (record.get("status") == "interrupted" or record.get("missing"))
            and record.get("config") == config.redacted_dump()):
        return record
    return None


def execute(
    config: RunConfig,
    progress: bool = True,
    run_id: str | None = None,
    relax_maker: DftMaker | None = None,
    resume: bool = True,
) -> RunResult:
    """Run every composition of ``config`` through generate → prefilter → DFT → store.

    Parameters
    ----------
    config
        A validated run configuration.
    progress
        Show progress bars.
    run_id
        Name of the run folder and record (default: the config name and a timestamp).
    relax_maker
        Replaces the DFT relaxation maker the config's ``dft`` section describes.
    resume
        Complete the newest interrupted run of the same name and config (killed,
        or stopped by a store outage): only its compositions without a recorded
        result run again. Ignored when ``run_id`` is given.

    Raises
    ------
    StoreUnavailableError
        The store stopped answering for longer than ``store.retry_seconds``;
        the record (or, failing that, ``stopped.txt`` in the run folder) says
        so, and running again completes what is missing.
    """
    output_dir = check_output_dir(config.output_dir)  # before any work or folder
    check_store(config.store)  # a damaged store fails now, not after the DFT
    previous = unfinished_run(config) if resume and run_id is None else None
    run_id = previous["id"] if previous else (run_id or new_run_id(config.name))
    run_dir = output_dir / run_id
    run = {"id": run_id, "name": config.name}
    attempt = f"{now()} {uuid4().hex[:8]}"  # which execution of a resumed run
    with open_results(config.store) as db:  # an unreachable store fails here, fast
        done = {r["formula"]: r for r in db.composition_results(run_id)} if previous else {}
        db.save_run({"id": run_id, "name": config.name, "status": "running", "attempt": attempt,
                     "config": config.redacted_dump(), "run_dir": str(run_dir),
                     "compositions": list(config.compositions), "process": this_process(),
                     "heartbeat_at": now(), "stopped_by": None,
                     **({"resumed_at": now()} if previous else {"started_at": now()})})
    (run_dir / "jobs").mkdir(parents=True, exist_ok=True)
    clear_stop_marker(run_dir)
    (run_dir / "config.json").write_text(json.dumps(config.redacted_dump(), indent=2))

    todo = [text for text, c in zip(config.compositions, config.parsed_compositions(),
                                    strict=True) if c.reduced_formula not in done]
    flow = run_flow(config.model_copy(update={"compositions": todo}), run, progress,
                    relax_maker)
    store = RetryingJobStore.wrap(job_store(config.store), config.store.retry_seconds)
    try:
        with _quiet():
            run_jobs(flow, store, config.store, run_dir / "jobs", run_id,
                     heartbeat(config.store, run_id), attempt)
        compositions, learning = _collect(flow, store)
        failed_jobs = [f"{f['name']}: {f['error']}"
                       for f in job_failures(config.store, run_id, attempt)]
        earlier = _with_structures(config.store, run_id, list(done.values()))
    except StoreUnavailableError as exc:
        record_stop(config.store, run_id, run_dir, str(exc))
        raise
    except KeyboardInterrupt:
        record_stop(config.store, run_id, run_dir,
                    "interrupted by the user; run it again to complete what is missing")
        raise
    order = {c.reduced_formula: i for i, c in enumerate(config.parsed_compositions())}
    compositions = sorted([*earlier, *compositions], key=lambda c: order.get(c["formula"], 0))
    missing = [c["formula"] for c in compositions if c.get("error")]
    result = RunResult(run_id, run_dir, compositions, failed_jobs, learning, missing,
                       previous is not None)
    write_run_folder(result)
    status = "completed" if not failed_jobs and not missing else "completed with failures"
    try:
        save_run(config.store, {
            "id": run_id, "name": config.name, "finished_at": now(), "status": status,
            "failed_jobs": failed_jobs, "missing": missing, "config": config.redacted_dump(),
            "run_dir": str(run_dir),
            "funnel": {c["formula"]: c.get("funnel", {}) for c in compositions},
            "validated": [v["uuid"] for v in result.validated], "energy_model": learning})
    except StoreUnavailableError as exc:  # results are stored; a rerun only records the run
        record_stop(config.store, run_id, run_dir, str(exc))
        raise
    return result


def _collect(flow: Flow, store: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each composition's summary from the job store (or why it has none), and the learning."""
    compositions, learning = [], None
    store.connect()
    try:
        for composition_flow in flow:
            if isinstance(composition_flow, Job):  # the energy-model training job
                learning = _output_or_none(store, composition_flow.uuid)
                continue
            formula = composition_flow.name.split(" ", 1)[1]
            summary = _output_or_none(store, composition_flow.jobs[-1].uuid)
            if not isinstance(summary, dict) or "validated" not in summary:
                summary = {"formula": formula, "validated": [], "failed": [], "funnel": {},
                           "error": "did not reach DFT validation"}
            compositions.append(summary)
    finally:
        store.close()
    return compositions, learning


def _with_structures(config: StoreConfig, run_id: str,
                     results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded composition results of a resumed run, their structures read back from the store."""
    if not results:
        return []

    def read(db: ResultsDB) -> dict[str, Any]:
        return {d["uuid"]: d["structure"] for d in db.find_validated(run_id=run_id)}

    structures = with_db(config, read)
    return [dict(r, validated=[dict(v, structure=structures[v["uuid"]])
                               for v in r.get("validated", []) if v["uuid"] in structures])
            for r in results]


@dataclass
class LoopResult:
    """What an active-learning loop did: its round records and where its files are."""

    loop_id: str
    run_dir: Path
    rounds: list[dict[str, Any]]
    status: str
    stopped_by: str | None
    resumed_from: int | None = None
    """The round a resumed loop started with (``None``: a new loop)."""
    failed_jobs: list[str] = field(default_factory=list)
    report: Path | None = None


def unfinished_loop(config: RunConfig) -> dict[str, Any] | None:
    """The newest loop of ``config.name`` in the store that did not finish, if any.

    A ``running`` loop whose process is gone (killed) is marked ``interrupted`` first.
    """
    with open_results(config.store) as db:
        record = mark_if_lost(db, db.latest_run(config.name))
    if (record and record.get("kind") == "loop"
            and record.get("status") in ("running", "interrupted")):
        return record
    return None


def execute_loop(
    config: RunConfig,
    progress: bool = True,
    relax_maker: DftMaker | None = None,
    resume: bool = True,
) -> LoopResult:
    """Run ``config``'s active-learning loop locally, round after round, until it stops.

    Parameters
    ----------
    config
        A validated run configuration with a ``loop`` section.
    progress
        Show progress bars.
    relax_maker
        Replaces the DFT relaxation maker the config's ``dft`` section describes.
    resume
        Continue the newest unfinished loop of the same name (killed or failed)
        from the round it was in; ``False`` starts a new loop.
    """
    from xtalloop.workflows.loop import loop_flow

    if config.loop is None:
        raise ValueError("execute_loop needs a config with a loop section")
    output_dir = check_output_dir(config.output_dir)  # before any work or folder
    check_store(config.store)  # a damaged store fails now, not after the DFT
    previous = unfinished_loop(config) if resume else None
    first_round = 1
    with open_results(config.store) as db:
        if previous is not None:
            loop_id = previous["id"]
            done = [r for r in db.rounds(loop_id) if r.get("status") == "completed"]
            first_round = len(done) + 1
        else:
            loop_id = new_run_id(config.name)
        run_dir = output_dir / loop_id
        attempt = f"{now()} {uuid4().hex[:8]}"
        db.save_run({"id": loop_id, "name": config.name, "kind": "loop", "status": "running",
                     "attempt": attempt,
                     "config": config.redacted_dump(), "run_dir": str(run_dir),
                     "process": this_process(), "heartbeat_at": now(), "stopped_by": None,
                     **({"started_at": now()} if previous is None
                        else {"resumed_at": now(), "resumed_from_round": first_round})})
    (run_dir / "jobs").mkdir(parents=True, exist_ok=True)
    clear_stop_marker(run_dir)
    (run_dir / "config.json").write_text(json.dumps(config.redacted_dump(), indent=2))
    flow = loop_flow(config, loop_id, first_round, relax_maker, progress)
    store = RetryingJobStore.wrap(job_store(config.store), config.store.retry_seconds)
    try:
        with _quiet():
            run_jobs(flow, store, config.store, run_dir / "jobs", loop_id,
                     heartbeat(config.store, loop_id), attempt)
        failed_jobs = [f"{f['name']}: {f['error']}"
                       for f in job_failures(config.store, loop_id, attempt)]
    except StoreUnavailableError as exc:
        record_stop(config.store, loop_id, run_dir, str(exc))
        raise

    def finish(db: ResultsDB) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        record = db.get_run(loop_id) or {}
        if record.get("status") == "running":  # a round job failed: the loop can resume
            record = dict(record, status="interrupted",
                          stopped_by="a job failed; run again to resume")
            db.save_run({"id": loop_id, "status": "interrupted",
                         "stopped_by": record["stopped_by"], "failed_jobs": failed_jobs})
        return record, db.rounds(loop_id)

    record, rounds = with_db(config.store, finish)
    result = LoopResult(loop_id, run_dir, rounds, record.get("status", "?"),
                        record.get("stopped_by"),
                        first_round if previous is not None else None, failed_jobs)
    (run_dir / "rounds.json").write_text(json.dumps(rounds, indent=2, default=str))
    from xtalloop.report import write_report

    result.report = write_report(config.store, loop_id, run_dir / "report")
    return result


def _output_or_none(store: Any, uuid: str) -> dict[str, Any] | None:
    """A finished job's output as plain dicts; ``None`` if it did not finish."""
    try:
        output = store.get_output(uuid, which="last", load=True)
    except ValueError:
        return None
    return plain(json.loads(json.dumps(output, cls=MontyEncoder)))


def write_run_folder(result: RunResult) -> None:
    """CIFs of the validated structures, ``summary.json`` and ``funnel.png``."""
    from xtalloop.plots import plot_funnel

    cif_dir = result.run_dir / "cifs"
    cif_dir.mkdir(parents=True, exist_ok=True)
    for row in result.validated:
        structure = Structure.from_dict(row["structure"])
        name = f"{row['formula']}_{row['space_group'].replace('/', '_')}_{row['uuid'][:8]}.cif"
        structure.to(filename=str(cif_dir / name), symprec=0.1)
        row["cif"] = str(Path("cifs") / name)
    summary = {
        "run_id": result.run_id,
        "failed_jobs": result.failed_jobs,
        "energy_model": result.energy_model,
        "compositions": [
            {k: v for k, v in c.items() if k != "validated"}
            | {"validated": [{k: v for k, v in row.items() if k != "structure"}
                             for row in c.get("validated", [])]}
            for c in result.compositions
        ],
    }
    (result.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot_funnel(result.compositions, result.run_dir / "funnel.png")


class _quiet:
    """Silence library chatter while jobs run (failures are recorded in the store)."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._levels = {}
        for name in ("maggma", "pymatgen", "atomate2"):
            log = logging.getLogger(name)
            self._levels[name] = log.level
            log.setLevel(logging.ERROR)
        self._jobflow = logging.getLogger("jobflow")
        self._jobflow_level = self._jobflow.level
        self._jobflow.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._jobflow.setLevel(self._jobflow_level)
        self._warnings.__exit__(*exc)

"""Run a configuration locally: build the flows, execute them, write the run folder."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jobflow import Job, run_locally
from monty.json import MontyEncoder
from pymatgen.core import Structure

from xtalloop.config import RunConfig
from xtalloop.dft.result import DftMaker
from xtalloop.store import job_store
from xtalloop.store.results import now, open_results
from xtalloop.workflows.csp import run_flow

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

    @property
    def validated(self) -> list[dict[str, Any]]:
        """Every validated structure of the run, most stable first per formula."""
        rows = [v for c in self.compositions for v in c.get("validated", [])]
        return sorted(rows, key=lambda r: (r["formula"], r.get("e_above_hull") or 0.0,
                                           r["energy_per_atom"]))


def new_run_id(name: str) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>``: unique per second, sortable."""
    return f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def execute(
    config: RunConfig,
    progress: bool = True,
    run_id: str | None = None,
    relax_maker: DftMaker | None = None,
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
    """
    run_id = run_id or new_run_id(config.name)
    run_dir = Path(config.output_dir).resolve() / run_id
    (run_dir / "jobs").mkdir(parents=True, exist_ok=True)
    run = {"id": run_id, "name": config.name}
    with open_results(config.store) as db:
        db.save_run({"id": run_id, "name": config.name, "status": "running",
                     "started_at": now(), "config": config.redacted_dump(),
                     "run_dir": str(run_dir)})
    (run_dir / "config.json").write_text(json.dumps(config.redacted_dump(), indent=2))

    flow = run_flow(config, run, progress, relax_maker)
    store = job_store(config.store)
    with _quiet() as failures:
        run_locally(flow, store=store, create_folders=True,
                    root_dir=run_dir / "jobs", log=False, ensure_success=False)
    failed_jobs = failures.messages

    compositions = []
    learning = None
    store.connect()
    try:
        for composition_flow in flow:
            if isinstance(composition_flow, Job):  # the energy-model training job
                learning = _output_or_none(store, composition_flow.uuid)
                continue
            formula = composition_flow.name.split(" ", 1)[1]
            validate_uuid = composition_flow.jobs[-1].uuid
            try:
                summary = store.get_output(validate_uuid, which="last", load=True)
                summary = json.loads(json.dumps(summary, cls=MontyEncoder))  # plain dicts
            except ValueError:  # the composition stopped before its validation finished
                summary = {"formula": formula, "validated": [], "failed": [],
                           "funnel": {}, "error": "did not reach DFT validation"}
            compositions.append(summary)
    finally:
        store.close()

    result = RunResult(run_id, run_dir, compositions, failed_jobs, learning)
    write_run_folder(result)
    with open_results(config.store) as db:
        db.save_run({"id": run_id, "name": config.name, "finished_at": now(),
                     "status": "completed" if not failed_jobs else "completed with failures",
                     "failed_jobs": failed_jobs, "config": config.redacted_dump(),
                     "run_dir": str(run_dir),
                     "funnel": {c["formula"]: c.get("funnel", {}) for c in compositions},
                     "validated": [v["uuid"] for v in result.validated],
                     "energy_model": learning})
    return result


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
    """The newest loop of ``config.name`` in the store that did not finish, if any."""
    with open_results(config.store) as db:
        record = db.latest_run(config.name)
    if record and record.get("kind") == "loop" and record.get("status") == "running":
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
    previous = unfinished_loop(config) if resume else None
    first_round = 1
    with open_results(config.store) as db:
        if previous is not None:
            loop_id = previous["id"]
            done = [r for r in db.rounds(loop_id) if r.get("status") == "completed"]
            first_round = len(done) + 1
        else:
            loop_id = new_run_id(config.name)
        run_dir = Path(config.output_dir).resolve() / loop_id
        (run_dir / "jobs").mkdir(parents=True, exist_ok=True)
        db.save_run({"id": loop_id, "name": config.name, "kind": "loop", "status": "running",
                     "config": config.redacted_dump(), "run_dir": str(run_dir),
                     **({"started_at": now()} if previous is None
                        else {"resumed_at": now(), "resumed_from_round": first_round})})
    (run_dir / "config.json").write_text(json.dumps(config.redacted_dump(), indent=2))
    flow = loop_flow(config, loop_id, first_round, relax_maker, progress)
    store = job_store(config.store)
    with _quiet() as failures:
        run_locally(flow, store=store,
                    create_folders=True, root_dir=run_dir / "jobs", log=False,
                    ensure_success=False)

    with open_results(config.store) as db:
        record = db.get_run(loop_id) or {}
        rounds = db.rounds(loop_id)
        if record.get("status") == "running":  # a round job failed: the loop can resume
            record = dict(record, status="interrupted",
                          stopped_by="a job failed; run again to resume")
            db.save_run({"id": loop_id, "status": "running",
                         "failed_jobs": failures.messages})
    result = LoopResult(loop_id, run_dir, rounds, record.get("status", "?"),
                        record.get("stopped_by"),
                        first_round if previous is not None else None, failures.messages)
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
    return json.loads(json.dumps(output, cls=MontyEncoder))


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


class _FailureLog(logging.Handler):
    """Collects ``<job name>: <error>`` for every job jobflow reports as failed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if " failed with exception:" in text:
            name, _, trace = text.partition(" failed with exception:")
            last = [line for line in trace.strip().splitlines() if line.strip()]
            self.messages.append(f"{name}: {last[-1].strip() if last else 'unknown error'}")


class _quiet:
    """Silence library chatter while jobs run; collect the failures jobflow reports."""

    def __enter__(self) -> _FailureLog:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._levels = {}
        for name in ("maggma", "pymatgen", "atomate2"):
            log = logging.getLogger(name)
            self._levels[name] = log.level
            log.setLevel(logging.ERROR)
        self._failures = _FailureLog()
        self._jobflow = logging.getLogger("jobflow.managers.local")
        self._jobflow_state = (self._jobflow.level, self._jobflow.propagate,
                               self._jobflow.disabled)
        self._jobflow.setLevel(logging.INFO)
        self._jobflow.propagate = False
        # a logging.config.dictConfig elsewhere in the process (jobflow-remote has one)
        # may have disabled the logger: the failures must be collected regardless
        self._jobflow.disabled = False
        self._jobflow.addHandler(self._failures)
        return self._failures

    def __exit__(self, *exc: object) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._jobflow.removeHandler(self._failures)
        self._jobflow.setLevel(self._jobflow_state[0])
        self._jobflow.propagate = self._jobflow_state[1]
        self._jobflow.disabled = self._jobflow_state[2]
        self._warnings.__exit__(*exc)

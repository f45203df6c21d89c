"""``xtalloop submit``, ``status`` and ``rerun-failed``: runs on a cluster's workflow manager."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from xtalloop.cli_errors import user_errors


class Engine(str, Enum):
    fireworks = "fireworks"
    jobflow_remote = "jobflow-remote"


def _config(path: Path, engine: Engine | None = None, launchpad: Path | None = None):
    from xtalloop.config import load_config

    config = load_config(path)
    update = {}
    if engine is not None:
        update["engine"] = engine.value
    if launchpad is not None:
        update["launchpad_file"] = str(launchpad)
    if update:
        config = config.model_copy(update={"submit": config.submit.model_copy(update=update)})
    return config


@user_errors
def submit(
    config: Path = typer.Argument(..., help="YAML run configuration with a MongoDB store."),
    engine: Engine | None = typer.Option(None, help="Overrides submit.engine of the config."),
    launchpad: Path | None = typer.Option(
        None, help="FireWorks my_launchpad.yaml (overrides submit.launchpad_file)."),
) -> None:
    """Add the run's flows to FireWorks or jobflow-remote; a cluster's workers run them."""
    from xtalloop.hpc.submit import submit as submit_run

    cfg = _config(config, engine, launchpad)
    record = submit_run(cfg)
    sub = record["submission"]
    typer.echo(f"submitted run {record['id']}: {len(cfg.compositions)} compositions, "
               f"{sub['n_jobs']} jobs to start with ({sub['engine']})")
    if sub["engine"] == "fireworks":
        typer.echo("run them on the cluster with `qlaunch rapidfire` (or `rlaunch rapidfire` "
                   "on a node); see configs/fireworks/")
    else:
        typer.echo(f"run them with `jf -p {sub['project']} runner start`, from a shell where "
                   "the store's password variable is exported (the scheduler hands the "
                   "runner's environment to the jobs); see configs/jobflow-remote/")
    typer.echo(f"follow it with `xtalloop status {config} --run {record['id']}`")


@user_errors
def status(
    config: Path = typer.Argument(..., help="The run configuration (where the store is)."),
    run_id: str | None = typer.Option(None, "--run", help="Run id (default: the newest run)."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """How many jobs of a run wait, run, completed and failed, and why the failed ones failed."""
    from xtalloop.errors import ConfigError
    from xtalloop.hpc.submit import run_status

    if fmt not in ("table", "json"):
        raise ConfigError(f"--format: use table or json, not {fmt!r}")
    cfg = _config(config)
    state = run_status(cfg, run_id)
    run = state["run"]
    if fmt == "json":
        typer.echo(json.dumps({**state, "validated": [
            {k: v for k, v in d.items() if k not in ("trajectory", "structure",
                                                     "initial_structure", "forces")}
            for d in state["validated"]]}, indent=2, default=str))
        return
    engine = (run.get("submission") or {}).get("engine", "local")
    typer.echo(f"run {run['id']} ({engine}): {run.get('status', '?')}")
    if state["counts"] is not None:
        typer.echo("jobs: " + ", ".join(f"{n} {name}" for name, n in state["counts"].items()))
    for failure in state["failed"]:
        typer.echo(f"failed: {failure['name']}: {failure['error']}")
    for job in state.get("running", []):
        seen = "" if job["last_seen"] is None else f", last heard of {job['last_seen']:.0f} s ago"
        typer.echo(f"running: {job['name']} on {job['host']}{seen} ({job['launch_dir']})")
    for r in state.get("rounds", []):
        hit = r.get("hit_rate")
        typer.echo(f"round {r['round']} ({r.get('status')}): "
                   f"{', '.join(r.get('compositions') or []) or 'no compositions'}; "
                   f"{r.get('dft_calls', '?')} DFT calls, {r.get('stable', '?')} stable"
                   + ("" if hit is None else f", hit rate {hit:.0%}"))
    if run.get("stopped_by"):
        typer.echo(f"stopped: {run['stopped_by']}")
    if run.get("missing"):
        typer.echo(f"no result for: {', '.join(run['missing'])} (`xtalloop run` completes them)")
    validated = state["validated"]
    stable = [d for d in validated if d.get("e_above_hull") is not None
              and d["e_above_hull"] <= 0.1]
    typer.echo(f"validated structures: {len(validated)} ({len(stable)} within 0.1 eV/atom "
               "of the hull)")


@user_errors
def rerun_failed(
    config: Path = typer.Argument(..., help="The run configuration (where the store is)."),
    run_id: str | None = typer.Option(None, "--run", help="Run id (default: the newest run)."),
    lost_after: float | None = typer.Option(
        None, "--lost-after", min=0,
        help="FireWorks: also requeue running jobs whose worker has not pinged for this many "
             "seconds (a queue job cancelled or killed at its walltime). Default: "
             "RUN_EXPIRATION_SECS of FW_config.yaml (FireWorks: 4 h)."),
) -> None:
    """Requeue the failed jobs of a submitted run, and FireWorks jobs whose worker died."""
    from xtalloop.hpc.submit import rerun_failed as requeue

    n = requeue(_config(config), run_id, lost_after)
    typer.echo(f"requeued {n} failed jobs" if n else "no failed jobs to requeue")

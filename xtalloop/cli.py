"""The ``xtalloop`` command line: run a configuration, query validated structures."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from xtalloop.cli_benchmark import benchmark_app
from xtalloop.cli_db import (
    DATABASE_HELP, PASSWORD_ENV_HELP, STORE_HELP, URI_HELP, checked_filters, db_app, export,
    store_from_options,
)
from xtalloop.cli_errors import user_errors
from xtalloop.cli_generator import generator_app
import xtalloop.cli_wyckoff  # noqa: F401,E402  (registers generator train-wyckoff)
from xtalloop.cli_model import model_app
from xtalloop.cli_hpc import rerun_failed, status, submit
from xtalloop.errors import XtalloopError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Active-learning crystal structure prediction: generate, ML-prefilter, DFT-validate.",
)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left",
                  caption="E: DFT energy, E_hull: DFT energy above hull (eV/atom); "
                          "seed#i: generator seed and candidate index",
                  caption_justify="left")
    # with prefilter.prior_picks, which rule sent each structure to DFT
    prior = any(row.get("picked_by") == "prior" for row in rows)
    for column, justify in [
        ("formula", "left"), ("space group", "left"), ("E (eV/atom)", "right"),
        ("E_hull", "right"), ("atoms", "right"),
        ("generator", "left"), ("seed#i", "right"), ("converged", "center"),
        *([("pick", "left")] if prior else []),
    ]:
        table.add_column(column, justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(
            row["formula"],
            f"{row['space_group']} ({row['space_group_number']})",
            _fmt(row["energy_per_atom"], 4),
            _fmt(row.get("e_above_hull")),
            str(row.get("nsites", "")),
            str(row.get("generator", "")),
            f"{row.get('seed', '')}" + (f"#{row['index']}" if row.get("index") is not None else ""),
            "yes" if row.get("converged") else "no",
            *([str(row.get("picked_by") or "")] if prior else []),
        )
    console = Console()
    if not console.is_terminal:  # logs and pipes: do not squeeze the table to 80 columns
        console = Console(width=max(console.width, 120))
    console.print(table)


@app.command()
@user_errors
def run(
    config: Path = typer.Argument(..., help="YAML run configuration (see configs/)."),
    store: str | None = typer.Option(None, help="Embedded store folder (overrides the config)."),
    output_dir: str | None = typer.Option(None, help="Where run folders go (overrides the config)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    new: bool = typer.Option(False, "--new", help="Start a new run (or loop) instead of "
                             "completing an interrupted one of the same name."),
) -> None:
    """Predict the structures of the config's compositions: generate → ML prefilter → DFT → store.

    A config with a ``loop`` section runs an active-learning loop (rounds of the
    above, learning in between); an unfinished loop of the same name resumes.
    A plain run interrupted (killed, or stopped by a store outage) resumes too:
    only its compositions without a result run again.
    """
    from xtalloop.config import load_config

    overrides: dict[str, Any] = {}
    if output_dir:
        overrides["output_dir"] = output_dir
    cfg = load_config(config)
    if store:
        cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"path": store})})
    if overrides:
        cfg = cfg.model_copy(update=overrides)

    from xtalloop.dft.factory import check_dft_runs_here
    from xtalloop.run_record import check_output_dir

    check_output_dir(cfg.output_dir)  # before the store is opened or any folder made
    check_dft_runs_here(
        cfg.dft, sorted({el.symbol for c in cfg.parsed_compositions() for el in c.elements}))
    if cfg.loop is not None:
        _run_loop(cfg, progress, resume=not new)
        return
    from xtalloop.runner import execute, unfinished_run

    typer.echo(f"xtalloop: {len(cfg.compositions)} compositions "
               f"({', '.join(cfg.compositions)}), store {cfg.store.location}")
    previous = None if new else unfinished_run(cfg)
    if previous is not None:
        why = previous.get("stopped_by") or f"no result for {', '.join(previous['missing'])}"
        typer.echo(f"completing run {previous['id']} ({why}); --new starts another")
    result = execute(cfg, progress=progress, resume=not new)
    rows = [
        dict(row, nsites=len(row["structure"]["sites"]))
        for row in result.validated
    ]
    _table(rows, f"Validated structures — run {result.run_id}")
    for comp in result.compositions:
        for failure in comp.get("failed", []):
            replaced = (f" (replaced by pick {failure['replaced_by']})"
                        if failure.get("replaced_by") else "")
            typer.echo(f"failed: {comp['formula']} pick {failure['rank'] + 1}: "
                       f"{failure['reason']}{replaced}")
        if comp.get("error"):
            typer.echo(f"failed: {comp['formula']}: {comp['error']}")
    for message in result.failed_jobs:
        typer.echo(f"job failed: {message}")
    if result.missing:
        typer.echo(f"no result for {', '.join(result.missing)}: run again to complete them "
                   "(stored results are merged, never duplicated)")
    if result.energy_model:
        from xtalloop.cli_model import learning_line

        typer.echo(learning_line(result.energy_model))
    typer.echo(f"run folder: {result.run_dir} (CIFs in cifs/, funnel.png, summary.json)")
    if not rows:
        raise typer.Exit(1)


def _run_loop(cfg: Any, progress: bool, resume: bool) -> None:
    """Run (or resume) an active-learning loop and print its rounds."""
    from xtalloop.runner import execute_loop, unfinished_loop

    previous = unfinished_loop(cfg) if resume else None
    loop = cfg.loop
    typer.echo(f"xtalloop loop: {len(cfg.compositions)} compositions "
               f"({', '.join(cfg.compositions)}), up to {loop.total_rounds} rounds, "
               f"store {cfg.store.location}")
    if previous is not None:
        typer.echo(f"resuming loop {previous['id']} (use --new to start another)")
    result = execute_loop(cfg, progress=progress, resume=resume)
    _rounds_table(result.rounds, f"Loop {result.loop_id}")
    for message in result.failed_jobs:
        typer.echo(f"job failed: {message}")
    typer.echo(f"loop {result.status}" + (f": {result.stopped_by}" if result.stopped_by else ""))
    typer.echo(f"run folder: {result.run_dir} (report/report.html, rounds.json)")
    if result.status != "completed":
        raise typer.Exit(1)


def _rounds_table(rounds: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from xtalloop.cli_model import learning_line

    table = Table(title=title, title_justify="left",
                  caption="hit rate: DFT-validated picks within the stability tolerance of "
                          "the DFT hull / DFT calls", caption_justify="left")
    for column in ("round", "arities", "compositions", "DFT calls", "stable", "new stable",
                   "hit rate", "prefilter model", "learned"):
        table.add_column(column, no_wrap=column not in ("compositions", "learned"))
    for r in rounds:
        hit = r.get("hit_rate")
        learned = learning_line(r["energy_model"]) if r.get("energy_model") else "—"
        if (r.get("generator") or {}).get("checkpoint"):
            learned += f"; generator {r['generator']['reason']}"
        table.add_row(
            str(r["round"]), "+".join(map(str, r["arities"])) if r.get("arities") else "all",
            ", ".join(r.get("compositions_validated") or r.get("compositions") or []),
            str(r.get("dft_calls", "—")), str(r.get("stable", "—")),
            str(r.get("new_stable", "—")), "—" if hit is None else f"{hit:.0%}",
            str(r.get("energy_model_used", "—")),
            learned if r.get("status") == "completed" else str(r.get("status")))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    console.print(table)


@app.command()
@user_errors
def report(
    run_ref: str = typer.Argument(..., metavar="RUN",
                                  help="A run folder (runs/<id>) or a run or loop id."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Folder to write (default: <run folder>/report)."),
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
) -> None:
    """Write the HTML/PNG report of a run or loop: rounds, funnel, hulls, models, best CIFs."""
    from xtalloop.errors import ConfigError
    from xtalloop.report import run_folder_store, write_report

    folder = Path(run_ref)
    if (folder / "config.json").is_file():
        config = run_folder_store(folder)
        run_id = folder.resolve().name
        out = out or folder / "report"
    elif folder.exists() or "/" in run_ref:
        raise ConfigError(f"{run_ref}: not a run folder (no config.json in it)")
    else:
        config = store_from_options(store, uri, database, password_env)
        run_id = run_ref
        out = out or Path(f"report-{run_id}")
    path = write_report(config, run_id, out)
    typer.echo(f"report: {path} (PNGs and cifs/ beside it)")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    cif = "cif"


@app.command()
@user_errors
def query(
    formula: str | None = typer.Option(None, help="Composition, e.g. NaCl."),
    chemsys: str | None = typer.Option(None, help="Chemical system, e.g. Na-Cl."),
    max_e_above_hull: float | None = typer.Option(None, help="eV/atom."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, json or cif."),
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="With --format cif: folder to write one CIF per structure."),
) -> None:
    """List validated structures, filtered by formula, chemical system and hull distance."""
    from xtalloop.export import check_export_target
    from xtalloop.store.results import open_results

    formula, chemsys = checked_filters(formula, chemsys, max_e_above_hull)
    if output is not None:
        if fmt is not OutputFormat.cif:
            raise XtalloopError("--output: only with --format cif (json and table go to stdout)")
        check_export_target("cif", output, force=True, what="--output")
    config = store_from_options(store, uri, database, password_env)
    with open_results(config) as db:
        docs = db.find_validated(formula=formula, chemsys=chemsys,
                                 max_e_above_hull=max_e_above_hull)
    if not docs:
        typer.echo("no validated structures match", err=True)
        raise typer.Exit(1)
    if fmt is OutputFormat.json:
        for doc in docs:
            doc.pop("trajectory", None)
        typer.echo(json.dumps(docs, indent=2, default=str))
    elif fmt is OutputFormat.cif:
        _write_cifs(docs, output)
    else:
        rows = [
            {
                "formula": d["formula"], "space_group": d["space_group"],
                "space_group_number": d["space_group_number"],
                "energy_per_atom": d["energy_per_atom"], "e_above_hull": d.get("e_above_hull"),
                "nsites": d["nsites"], "generator": d["generator"].get("generator"),
                "seed": d["generator"].get("seed"), "index": d["generator"].get("index"),
                "converged": d["dft"]["converged"],
                "picked_by": (d.get("prefilter") or {}).get("picked_by"),
            }
            for d in docs
        ]
        _table(rows, f"{len(rows)} validated structures in {config.location}")


def _write_cifs(docs: list[dict[str, Any]], output: Path | None) -> None:
    from xtalloop.export import cif_text, file_stem, write_cifs

    if output is not None:
        for path in write_cifs(docs, output, force=True, what="--output"):
            typer.echo(str(path))
        return
    for doc in docs:
        typer.echo(f"# {file_stem(doc)}.cif\n{cif_text(doc)}")


app.add_typer(generator_app, name="generator",
              help="Train, fine-tune and sample the diffusion generator.")
app.add_typer(benchmark_app, name="benchmark", help="Benchmarks: CSP match rate of generators.")
app.add_typer(db_app, name="db", help="The results database: counts of what is stored.")
app.add_typer(model_app, name="model",
              help="Energy models trained on the store's DFT data: list them, train one now.")
app.command()(export)
app.command()(submit)
app.command()(status)
app.command(name="rerun-failed")(rerun_failed)


def main() -> None:
    """Entry point of the ``xtalloop`` script."""
    import warnings

    warnings.filterwarnings("ignore")
    try:
        app()
    except XtalloopError as exc:  # errors raised while typer parses options
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

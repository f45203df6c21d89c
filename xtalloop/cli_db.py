"""``xtalloop export`` and ``xtalloop db stats``: the stored results, as files and as counts.

Both read the embedded store (``--store``) or a MongoDB server (``--uri``),
exactly as ``xtalloop query`` does.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from xtalloop.cli_errors import user_errors
from xtalloop.config import StoreConfig
from xtalloop.errors import ConfigError, StoreError

db_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The results database: counts of what is stored.",
)

STORE_HELP = "Embedded store folder."
URI_HELP = ("Use a MongoDB store instead: mongodb://[user@]host[:port] "
            "(no password in it; see --password-env).")
DATABASE_HELP = "With --uri: the MongoDB database."
PASSWORD_ENV_HELP = "With --uri: environment variable holding the MongoDB password."


def store_from_options(
    path: str, uri: str | None, database: str, password_env: str | None
) -> StoreConfig:
    """The store a reading command uses: the embedded folder, or MongoDB with ``--uri``.

    Raises
    ------
    ConfigError
        A bad ``--uri``, ``--database`` or ``--password-env`` (one line naming the option).
    StoreError
        The embedded folder holds no xtalloop store.
    """
    from pydantic import ValidationError

    from xtalloop.config import config_error_message

    if uri is None and password_env is not None:
        raise ConfigError("--password-env: only with --uri (an embedded store has no password)")
    settings: dict[str, Any] = {"backend": "embedded", "path": path}
    if uri is not None:
        settings = {"backend": "mongodb", "uri": uri, "database": database,
                    "password_env": password_env}
    try:
        config = StoreConfig(**settings)
    except ValidationError as exc:
        message = config_error_message(exc).replace("uri:", "--uri:").replace(
            "database:", "--database:").replace("password_env:", "--password-env:")
        raise ConfigError(message) from None
    if config.backend == "embedded" and not (config.resolved_path / "xtalloop").is_dir():
        raise StoreError(f"no xtalloop store at {config.resolved_path} "
                         "(run `xtalloop run` first or pass --store or --uri)")
    return config


def checked_chemsys(chemsys: str) -> str:
    """``--chemsys`` as the store writes it: element symbols, sorted, joined by ``-``.

    ``Na-Cl``, ``Cl-Na``, ``NaCl``, ``Na Cl``, ``Na,Cl`` and ``na-cl`` all give
    ``Cl-Na``: a chemical system is a set of elements, and a user who types
    the formula-like ``CuAu`` means the Au-Cu system.

    Raises
    ------
    CompositionError
        Empty, or not element symbols (one line saying the format).
    """
    from xtalloop.composition import check_symbol
    from xtalloop.errors import CompositionError

    parts = [p for p in re.split(r"[-,\s]+", chemsys.strip()) if p]
    if not parts:
        raise CompositionError("--chemsys is empty: give element symbols, e.g. Na-Cl")
    symbols: set[str] = set()
    for part in parts:
        if part.islower() and len(part) <= 2:
            part = part.capitalize()  # "na-cl"
        if not re.fullmatch(r"([A-Z][a-z]?)+", part):
            raise CompositionError(f"--chemsys: cannot read {part!r}: give element symbols "
                                   "without counts, e.g. Na-Cl or NaCl")
        for symbol in re.findall(r"[A-Z][a-z]?", part):
            check_symbol(symbol, chemsys)
            symbols.add(symbol)
    return "-".join(sorted(symbols))


def checked_filters(
    formula: str | None, chemsys: str | None, max_e_above_hull: float | None = None
) -> tuple[str | None, str | None]:
    """Check the ``--formula``, ``--chemsys`` and ``--max-e-above-hull`` filters.

    Returns
    -------
    (formula, chemsys)
        The reduced formula and the chemical system as the store writes them
        (``None`` where not given).

    Raises
    ------
    CompositionError
        An empty filter, an unknown element or an unreadable formula (one line).
    ConfigError
        A hull distance that is not a number.
    """
    from xtalloop.composition import parse_composition
    from xtalloop.errors import CompositionError

    if max_e_above_hull is not None and math.isnan(max_e_above_hull):
        raise ConfigError("--max-e-above-hull: not a number (eV/atom, e.g. 0.1)")
    if chemsys is not None:
        chemsys = checked_chemsys(chemsys)
    if formula is not None:
        if not formula.strip():
            raise CompositionError("--formula is empty: give a composition, e.g. NaCl")
        try:
            formula = parse_composition(formula, charge_balance="off").reduced_formula
        except CompositionError as exc:
            raise CompositionError(f"--formula: {exc}") from None
    return formula, chemsys


class ExportFormat(str, Enum):
    cif = "cif"
    extxyz = "extxyz"
    json = "json"


@user_errors
def export(
    out: Path = typer.Argument(..., help="A folder (cif) or a file (extxyz, json)."),
    fmt: ExportFormat = typer.Option(ExportFormat.cif, "--format",
                                     help="cif (one file each), extxyz or json."),
    formula: str | None = typer.Option(None, help="Only this composition, e.g. NaCl."),
    chemsys: str | None = typer.Option(None, help="Only this chemical system, e.g. Na-Cl."),
    max_e_above_hull: float | None = typer.Option(None, help="eV/atom."),
    run_id: str | None = typer.Option(None, "--run", help="Only structures found by this run."),
    trajectory: bool = typer.Option(False, help="json: keep the relaxation trajectories."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
) -> None:
    """Write validated structures with their provenance (generator, seed, models, DFT, run)."""
    from xtalloop.export import check_export_target, export_structures
    from xtalloop.store.results import open_results

    formula, chemsys = checked_filters(formula, chemsys, max_e_above_hull)
    check_export_target(fmt.value, out, force)
    config = store_from_options(store, uri, database, password_env)
    with open_results(config) as db:
        docs = db.find_validated(formula=formula, chemsys=chemsys,
                                 max_e_above_hull=max_e_above_hull, run_id=run_id)
    if not docs:
        typer.echo("no validated structures match", err=True)
        raise typer.Exit(1)
    from xtalloop.store.files import FileStore

    with FileStore(config, create=False) as files:
        paths = export_structures(docs, fmt.value, out, with_trajectory=trajectory, force=force,
                                  files=files)
    where = out if fmt is ExportFormat.cif else paths[0]
    typer.echo(f"exported {len(docs)} structures to {where} ({fmt.value})")


@db_app.command()
@user_errors
def stats(
    fmt: str = typer.Option("table", "--format", help="table or json."),
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
) -> None:
    """Counts of validated structures per chemical system, arity, run and DFT code; runs by status."""
    from xtalloop.store.results import open_results

    if fmt not in ("table", "json"):
        raise ConfigError(f"--format: use table or json, not {fmt!r}")
    config = store_from_options(store, uri, database, password_env)
    with open_results(config) as db:
        counts = db.stats()
    if fmt == "json":
        typer.echo(json.dumps(counts, indent=2))
        return
    _print_stats(counts, config.location)


@db_app.command()
@user_errors
def check(
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
) -> None:
    """Check that the store can be used: every collection file readable, or the server answering."""
    from xtalloop.store.results import open_results

    config = store_from_options(store, uri, database, password_env)
    with open_results(config, create=False) as db:
        db.check()
    typer.echo(f"{config.location}: ok")


@db_app.command()
@user_errors
def repair(
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
) -> None:
    """Move the damaged collection files of an embedded store aside, so that it works again.

    Nothing is deleted: a damaged ``<name>.collection`` becomes
    ``<name>.collection.corrupt-<time>`` (restore from a backup or recover
    from it), and that collection starts empty.
    """
    from xtalloop.store.backends import DATABASE_NAME
    from xtalloop.store.health import repair_store_files

    config = store_from_options(store, None, "xtalloop", None)
    moved = repair_store_files(config.resolved_path, DATABASE_NAME)
    for path, target, problem in moved:
        typer.echo(f"moved {path.name} ({problem}) to {target}")
    if not moved:
        typer.echo(f"{config.location}: nothing to repair")
    else:
        typer.echo(f"{len(moved)} collection(s) start empty; their old files are kept beside them")


def _print_stats(counts: dict[str, Any], location: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{location}: {counts['validated']} validated structures "
        f"({counts['stable']} within {counts['stable_within']} eV/atom of the hull, "
        f"{counts['unconverged']} unconverged), {counts['references']} reference phases")
    arity_names = {1: "unary", 2: "binary", 3: "ternary", 4: "quaternary", 5: "quinary"}
    sections = [
        ("chemical system", counts["by_chemsys"]),
        ("arity", {arity_names.get(int(k), f"{k} elements"): v
                   for k, v in counts["by_arity"].items()}),
        ("run", counts["by_run"]),
        ("DFT code", counts["by_dft_code"]),
        ("runs by status", counts["runs_by_status"]),
    ]
    for title, values in sections:
        if not values:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column(title)
        table.add_column("count", justify="right")
        for key, value in values.items():
            table.add_row(str(key), str(value))
        console.print(table)

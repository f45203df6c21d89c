"""``xtalloop model``: the registry of energy models the loop trained, and training on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xtalloop.cli_db import DATABASE_HELP, PASSWORD_ENV_HELP, STORE_HELP, URI_HELP, store_from_options
from xtalloop.cli_errors import user_errors

model_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Energy models trained on the store's DFT data: list them, train one now, "
         "trust one.",
)


def _mae(metrics: dict[str, Any] | None, key: str) -> str:
    value = (metrics or {}).get(key)
    return "-" if value is None else f"{value:.1f}"


def learning_line(summary: dict[str, Any]) -> str:
    """One line on what the learning job did."""
    if not summary.get("model_id"):
        return f"energy model: not trained ({summary.get('reason')})"
    verdict = "promoted" if summary["promoted"] else "not promoted"
    how = "fine-tuned from" if summary.get("fine_tuned") else "trained from scratch; parent"
    if summary.get("base") and summary["base"] != summary["parent"]:
        how = f"fine-tuned from {summary['base']}; parent"
    n = summary.get("n_structures", {})
    return (f"energy model: {summary['model_id']} {verdict} ({how} {summary['parent']}; "
            f"{n.get('train', '?')} structures, {n.get('holdout', '?')} held out): "
            f"{summary['reason']}")


def _members(files: list[dict[str, Any]]) -> int:
    """Ensemble members: one description (or, in registries of old, one ``.model``) each."""
    return sum(1 for f in files if f["name"].endswith((".mace.json", ".chgnet.json", ".model")))


@model_app.command("list")
@user_errors
def list_models(
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
) -> None:
    """Every registered model with its parent and held-out errors (* = in use)."""
    from rich.console import Console
    from rich.table import Table

    from xtalloop.learn.registry import ModelRegistry
    from xtalloop.store.results import open_results

    with open_results(store_from_options(store, uri, database, password_env)) as db:
        registry = ModelRegistry(db)
        models = registry.all()
        current = registry.promoted()
    if not models:
        typer.echo("no energy models registered yet (enable learn.energy_model in a run config)")
        return
    table = Table(title="Energy models (errors on held-out DFT structures)")
    for column in ("model", "parent", "members", "train / held-out structures",
                   "E MAE meV/atom", "parent E MAE", "F MAE meV/Å", "hull F1", "promoted"):
        table.add_column(column)
    for doc in models:
        metrics = doc.get("metrics", {})
        f1 = metrics.get("f1")
        mark = "*" if current and doc["model_id"] == current["model_id"] else ""
        table.add_row(
            doc["model_id"] + mark, str(doc["parent"]), str(_members(doc["files"])),
            f"{len(doc.get('training_structures', []))} / "
            f"{len(doc.get('holdout_structures', []))}",
            _mae(metrics, "energy_mae"), _mae(doc.get("parent_metrics"), "energy_mae"),
            _mae(metrics, "force_mae"), "-" if f1 is None else f"{f1:.2f}",
            "yes" if doc["promoted"] else "no")
    console = Console()
    if not console.is_terminal:  # logs and pipes: do not squeeze the table
        console = Console(width=max(console.width, 140))
    console.print(table)


@model_app.command("train")
@user_errors
def train(
    config: Path = typer.Argument(..., help="The run configuration (its store, prefilter and "
                                  "learn.energy_model sections are used)."),
) -> None:
    """Train the energy model on the store's DFT data now, as a run's learning job would."""
    from jobflow import run_locally

    from xtalloop.config import load_config
    from xtalloop.dft.factory import dft_maker
    from xtalloop.runner import new_run_id
    from xtalloop.workflows.csp import energy_model_training_maker

    cfg = load_config(config)
    run = {"id": new_run_id(f"{cfg.name}-train"), "name": cfg.name}
    key = dft_maker(cfg.dft, progress=False).settings_key()
    job = energy_model_training_maker(cfg, run, key).make()
    folder = Path(cfg.output_dir).resolve() / run["id"]
    folder.mkdir(parents=True, exist_ok=True)
    responses = run_locally(job, root_dir=folder, create_folders=True, log=False,
                            ensure_success=True)
    typer.echo(learning_line(responses[job.uuid][1].output))


@model_app.command("promote")
@user_errors
def promote(
    model_id: str = typer.Argument(..., help="e.g. mace-3 (see xtalloop model list)."),
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
) -> None:
    """Make a registered model the prefilter's model (``prefilter: {model: registry}``)."""
    from xtalloop.learn.registry import ModelRegistry
    from xtalloop.store.results import open_results

    with open_results(store_from_options(store, uri, database, password_env)) as db:
        ModelRegistry(db).promote(model_id)
    typer.echo(f"{model_id} is now the prefilter's model for 'model: registry'")


def _model_files(path: Path) -> list[Path]:
    """The files ``xtalloop model trust PATH`` vouches for: a file, or a folder's models."""
    from xtalloop.errors import DataError
    from xtalloop.models.mace_format import (
        PICKLE_SUFFIXES,
        SUFFIX,
        is_native,
        pickle_refused,
        weights_path,
    )

    if path.is_dir():
        files = sorted({*path.glob(f"*{SUFFIX}"), *path.glob("*.mace.pt"),
                        *path.glob("*.chgnet.json"), *path.glob("*.chgnet.pt")})
        if not files:
            raise DataError(f"{path}: no model files (*{SUFFIX}, *.mace.pt, *.chgnet.json) in it")
        return files
    if path.suffix in PICKLE_SUFFIXES and not is_native(path):
        raise pickle_refused(path)  # trusting it would change nothing: it is never unpickled
    return [path, weights_path(path)] if is_native(path) and weights_path(path).is_file() \
        else [path]


@model_app.command("trust")
@user_errors
def trust(
    what: str = typer.Argument(..., help="A model file or folder, or a registry id such as "
                               "mace-3 (its stored files), that you have reviewed."),
    store: str = typer.Option("xtalloop-data", help=STORE_HELP),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str = typer.Option("xtalloop", help=DATABASE_HELP),
    password_env: str | None = typer.Option(None, help=PASSWORD_ENV_HELP),
) -> None:
    """Put a model on this machine's trust list, so a registry model from a shared store is used.

    Models trained on this machine are trusted already; a registry model
    that someone else wrote to a shared store is fetched only after this
    command. Pickled MACE ``.model`` files are never loaded, trusted or not.
    """
    import re

    from xtalloop.errors import DataError
    from xtalloop.models.trust import add_files, trust_file

    path = Path(what).expanduser()
    if path.exists():
        files = _model_files(path)
        add_files(files)
        for file in files:
            typer.echo(f"trusted {file}")
    elif re.fullmatch(r"[A-Za-z0-9_.-]+-\d+", what):
        from xtalloop.learn.registry import ModelRegistry
        from xtalloop.store.results import open_results

        with open_results(store_from_options(store, uri, database, password_env)) as db:
            digests = ModelRegistry(db).trust(what)
        typer.echo(f"trusted registry model {what} ({len(digests)} files)")
    else:
        raise DataError(f"{what}: no such file or folder, and not a registry id such as mace-3")
    typer.echo(f"trust list: {trust_file()}")

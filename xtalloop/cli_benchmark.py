"""``xtalloop benchmark``: crystal-structure-prediction match rates of generators.

``xtalloop benchmark csp`` runs :func:`~xtalloop.benchmark.run_csp_benchmark`
for every named generator with the same table, seed and ``k`` values, so all
generators see the same compositions. Each generator's full result goes to
its own sub-folder (``results.json`` and ``match_rate.png``); the folder
itself gets a combined ``results.json`` (without the per-composition records)
and ``results.md``, the table also printed to the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from xtalloop.cli_errors import user_errors
from xtalloop.errors import ConfigError, DataError, XtalloopError

benchmark_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmarks: CSP match rate of generators.",
)


class GeneratorKind(str, Enum):
    """Generators the benchmark can run."""

    random_symmetric = "random_symmetric"
    prototype_substitution = "prototype_substitution"
    diffusion = "diffusion"
    templates_then_diffusion = "templates+diffusion"


DEFAULT_MAX_ATOMS = 20  # MP-20's largest cell


# --- helpers -----------------------------------------------------------------------


def parse_ks(text: str) -> list[int]:
    """Read ``"1,20"`` into sorted distinct positive integers.

    Raises
    ------
    ConfigError
        If an entry is not a positive integer or there is none.
    """
    ks: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"--k takes positive integers separated by commas, got {text!r}")
        ks.add(int(part))
    if not ks:
        raise ConfigError(f"--k takes positive integers separated by commas, got {text!r}")
    return sorted(ks)


def build_generators(
    kinds: Sequence[GeneratorKind],
    max_atoms: int | None = None,
    checkpoint: Path | None = None,
    reference_csv: str | None = None,
    n_steps: int | None = None,
    device: str = "cpu",
) -> list[Any]:
    """One generator per distinct kind, in the order given, checked before any run.

    Parameters
    ----------
    kinds
        Generators to build (repeats are dropped).
    max_atoms
        Largest cell a generator may return (``None``: 20, or for the diffusion
        generator its checkpoint's largest training cell).
    checkpoint
        Diffusion checkpoint (needed for ``diffusion`` and ``templates+diffusion``,
        which interleaves prototype substitution's candidates with the model's).
    reference_csv
        Prototype table of ``prototype_substitution`` (``None``: its default).
    n_steps
        Reverse steps of the diffusion sampler (``None``: all).
    device
        Torch device of the diffusion generator.

    Raises
    ------
    ConfigError, DataError
        A diffusion generator without a readable checkpoint, a missing reference table.
    """
    generators: list[Any] = []
    for kind in dict.fromkeys(kinds):
        if kind is GeneratorKind.random_symmetric:
            from xtalloop.generators.random_symmetric import RandomSymmetricGenerator

            generators.append(RandomSymmetricGenerator(max_atoms=max_atoms or DEFAULT_MAX_ATOMS))
        elif kind is GeneratorKind.prototype_substitution:
            generators.append(_prototype_generator(max_atoms, reference_csv))
        elif kind is GeneratorKind.diffusion:
            generators.append(_diffusion_generator(max_atoms, checkpoint, n_steps, device))
        else:
            from xtalloop.generators.pooled import PooledGenerator

            generators.append(PooledGenerator(
                [_prototype_generator(max_atoms, reference_csv),
                 _diffusion_generator(max_atoms, checkpoint, n_steps, device)],
                name=kind.value))
    return generators


def _prototype_generator(max_atoms: int | None, reference_csv: str | None) -> Any:
    from xtalloop.generators.prototype_substitution import (
        DEFAULT_REFERENCE_CSV,
        PrototypeSubstitutionGenerator,
    )

    reference = reference_csv or DEFAULT_REFERENCE_CSV
    if not Path(reference).is_file():
        raise DataError(f"reference table of prototype_substitution not found: {reference} "
                        "(pass --reference-csv)")
    return PrototypeSubstitutionGenerator(reference_csv=str(reference),
                                          max_atoms=max_atoms or DEFAULT_MAX_ATOMS)


def _diffusion_generator(
    max_atoms: int | None, checkpoint: Path | None, n_steps: int | None, device: str
) -> Any:
    from xtalloop.cli_generator import check_device, unreadable_checkpoint
    from xtalloop.generators.diffusion import DiffusionGenerator

    if checkpoint is None:
        raise ConfigError("--generator diffusion needs --checkpoint")
    if not checkpoint.is_file():
        raise DataError(f"checkpoint not found: {checkpoint}")
    check_device(device)
    generator = DiffusionGenerator(checkpoint=str(checkpoint), n_steps=n_steps, device=device,
                                   max_atoms=max_atoms)
    try:
        generator.load()  # fail now, not once per composition
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise DataError(unreadable_checkpoint(checkpoint, exc)) from None
    return generator


def make_relax(spec: str, device: str, fmax: float, steps: int) -> Callable[[list], list]:
    """A ``relax(structures) -> structures`` that relaxes with an ML energy model.

    Parameters
    ----------
    spec
        ``chgnet``, ``emt`` or a MACE model file (see
        :func:`~xtalloop.models.load_energy_model`).
    device
        Torch device of the model.
    fmax, steps
        Force threshold (eV/Å) and step limit of the batched FIRE relaxation.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtalloop.cli_generator import one_line
    from xtalloop.models import load_energy_model
    from xtalloop.rankers.batch_relax import BatchRelaxer

    relaxer = BatchRelaxer(load_energy_model(spec, device), fmax=fmax, steps=steps,
                           progress=False)

    def relax(structures: list) -> list:
        try:
            results = relaxer.relax([AseAtomsAdaptor.get_atoms(s) for s in structures])
        except Exception as exc:  # e.g. a model without parameters for an element
            formula = structures[0].composition.reduced_formula
            raise XtalloopError(f"relaxation with {spec!r} failed on {formula}: "
                                f"{one_line(exc)}") from None
        return [AseAtomsAdaptor.get_structure(r.atoms) for r in results]

    return relax


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def summary_markdown(results: dict[str, dict[str, Any]], relax_model: str | None = None) -> str:
    """Two markdown tables: overall match rate, RMSE and timings; match rate per arity.

    Parameters
    ----------
    results
        :func:`~xtalloop.benchmark.run_csp_benchmark` results keyed by generator name
        (all with the same ``ks``).
    relax_model
        Name of the ML model the candidates were relaxed with, if any.
    """
    first = next(iter(results.values()))
    ks = [str(k) for k in first["ks"]]
    header = (["generator"] + [f"match@{k}" for k in ks] + [f"RMSE@{k}" for k in ks]
              + ["no candidates", "failed", "gen s/structure", "wall s"])
    rows = [
        [name]
        + [_percent(r["match_rate"][k]) for k in ks]
        + [_number(r["rmse"][k]) for k in ks]
        + [str(r["n_zero_candidates"]), str(r["n_failed"]),
           _number(r["time_per_structure_s"], 3), f"{r['wall_time_s']:.1f}"]
        for name, r in results.items()
    ]
    labels = list(first["per_arity"])
    arity_header = ["generator", "k"] + [
        f"{label} el. (n={first['per_arity'][label]['n']})" for label in labels
    ]
    arity_rows = [
        [name, k] + [_percent(r["per_arity"][label]["match_rate"][k]) for label in labels]
        for name, r in results.items()
        for k in ks
    ]
    relaxed = ""
    if first["relaxed"]:
        relaxed = f", candidates relaxed with {relax_model or 'an ML model'}"
    title = (f"CSP benchmark: {first['n_compositions']} compositions of "
             f"{Path(first['data_csv']).name}, seed {first['seed']}{relaxed}")
    lines = [f"## {title}", "", *_markdown(header, rows), "",
             "Match rate by number of distinct elements:", "", *_markdown(arity_header, arity_rows)]
    return "\n".join(lines) + "\n"


def combined_results(
    results: dict[str, dict[str, Any]], relax_model: str | None = None
) -> dict[str, Any]:
    """The run's settings and each generator's summary (per-composition records left out)."""
    first = next(iter(results.values()))
    return {
        "data_csv": first["data_csv"],
        "n_compositions": first["n_compositions"],
        "ks": first["ks"],
        "seed": first["seed"],
        "relaxed": first["relaxed"],
        "relax_model": relax_model,
        "matcher": first["matcher"],
        "material_ids": [r["material_id"] for r in first["per_composition"]],
        "generators": {
            name: {k: v for k, v in r.items() if k != "per_composition"}
            for name, r in results.items()
        },
    }


def write_combined(
    results: dict[str, dict[str, Any]], out: Path, relax_model: str | None = None
) -> tuple[Path, Path, str]:
    """Write ``results.json`` and ``results.md`` for all generators; return them and the table."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(combined_results(results, relax_model), indent=2) + "\n")
    table = summary_markdown(results, relax_model)
    md_path = out / "results.md"
    md_path.write_text(table)
    return json_path, md_path, table


# --- command -----------------------------------------------------------------------


@benchmark_app.command()
@user_errors
def csp(
    data: Path = typer.Option(..., "--data", help="Ground-truth CSV with a 'cif' column "
                                                  "(e.g. MP-20 val.csv.gz)."),
    generator: list[GeneratorKind] = typer.Option(
        ..., "--generator", help="Generator to benchmark (repeatable)."),
    n: int = typer.Option(100, "--n", min=1, help="Compositions (table rows) to sample."),
    k: str = typer.Option("1,20", "--k", help="Candidates per composition at which to "
                                               "report, comma-separated."),
    checkpoint: Path | None = typer.Option(None, help="Checkpoint of the diffusion generator."),
    reference_csv: str | None = typer.Option(
        None, help="Prototype table of prototype_substitution (default: MP-20 train_partial)."),
    max_atoms: int | None = typer.Option(
        None, min=1, help="Largest cell a generator may return (default: 20; diffusion: the "
                          "checkpoint's largest training cell)."),
    n_steps: int | None = typer.Option(None, min=1, help="Reverse steps of the diffusion "
                                                         "sampler (default: all)."),
    device: str = typer.Option("cpu", help="Torch device of the diffusion generator and relaxer."),
    relax: str | None = typer.Option(None, help="Relax candidates first with this ML model: "
                                                "chgnet, emt or a MACE .model file."),
    relax_fmax: float = typer.Option(0.05, min=0.0, help="Relaxation force threshold (eV/Å)."),
    relax_steps: int = typer.Option(300, min=1, help="Relaxation step limit."),
    seed: int = typer.Option(0, help="Seeds the composition sample and every generator call."),
    out: Path = typer.Option(Path("csp-benchmark"), "--out", help="Folder for the results."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Match rate and RMSE of generators on the same compositions of a structure table."""
    from xtalloop.benchmark import run_csp_benchmark, write_results
    from xtalloop.generators.prototype_substitution import read_structure_csv

    ks = parse_ks(k)
    n_rows = min(n, len(read_structure_csv(data)))  # a missing or bad table fails here
    generators = build_generators(generator, max_atoms, checkpoint, reference_csv, n_steps,
                                  device)
    if reference_csv and Path(reference_csv).resolve() == data.resolve() and any(
        g.name == GeneratorKind.prototype_substitution.value for g in generators
    ):
        typer.echo("warning: the reference table is the benchmark table; prototype_substitution "
                   "can copy the answers", err=True)
    relax_fn = make_relax(relax, device, relax_fmax, relax_steps) if relax else None
    results: dict[str, dict[str, Any]] = {}
    for gen in generators:
        typer.echo(f"{gen.name}: {n_rows} compositions of {data.name}, "
                   f"k = {', '.join(map(str, ks))}")
        result = run_csp_benchmark(data, gen, n, ks=ks, seed=seed, relax=relax_fn,
                                   progress=progress)
        write_results(result, out / gen.name)
        results[gen.name] = result
    json_path, md_path, table = write_combined(results, out, relax)
    typer.echo(table)
    typer.echo(f"results: {json_path}, {md_path}; per generator: "
               + ", ".join(f"{out / name}/" for name in results))

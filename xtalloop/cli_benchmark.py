"""``xtalloop benchmark``: crystal-structure-prediction match rates of generators.

``xtalloop benchmark csp`` runs :func:`~xtalloop.benchmark.run_csp_benchmark`
for every named generator with the same table, seed and ``k`` values, so all
generators see the same compositions. Each generator's full result goes to
its own sub-folder (``results.json`` and ``match_rate.png``); the folder
itself gets a combined ``results.json`` (without the per-composition records)
and ``results.md``, the table also printed to the terminal.

Defaults follow the evaluated table (:mod:`xtalloop.benchmark.references`):
templates from the ``train_partial`` split beside it, with any template that
is one of its rows refused, the shipped Wyckoff checkpoint trained on the same
data set's train split, and cells up to its largest. With ``--relax`` the
candidates of each composition are relaxed in one batch and ``ranked@1``
(whether the lowest-energy candidate matches) is reported beside match@k.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from xtalloop.benchmark.generators import (
    TEMPLATE_KINDS,
    WYCKOFF_KINDS,
    GeneratorKind,
    build_generators,
)
from xtalloop.benchmark.tables import markdown as _markdown
from xtalloop.benchmark.tables import number as _number
from xtalloop.benchmark.tables import percent as _percent
from xtalloop.cli_errors import user_errors
from xtalloop.errors import ConfigError

benchmark_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmarks: CSP match rate of generators.",
)


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


def _window(result: dict[str, Any]) -> float | None:
    """ranked@1 within the energy window (absent from results written before it existed)."""
    return (result.get("window_match_rate") or {}).get("1")


def summary_markdown(results: dict[str, dict[str, Any]], relax_model: str | None = None) -> str:
    """Two markdown tables: overall match rate, RMSE, ranked@1 and timings; the rates per arity.

    ranked@1 (the lowest-energy relaxed candidate matches) and ranked@1 ±window (the
    generator's first candidate within ``RANK_WINDOW`` of the lowest energy matches) and
    first+lowest@2 (the generator's first candidate or the lowest-energy one matches: the
    loop's picks with ``prefilter.prior_picks: 1, top_k: 2``) read ``n/a`` without relaxation.

    Parameters
    ----------
    results
        :func:`~xtalloop.benchmark.run_csp_benchmark` results keyed by generator name
        (all with the same ``ks``).
    relax_model
        Name of the ML model the candidates were relaxed with, if any.
    """
    from xtalloop.benchmark.csp import RANK_WINDOW

    first = next(iter(results.values()))
    ks = [str(k) for k in first["ks"]]
    window = f"ranked@1 ±{1000 * first.get('rank_window_ev', RANK_WINDOW):g} meV"
    header = (["generator"] + [f"match@{k}" for k in ks] + [f"RMSE@{k}" for k in ks]
              + ["ranked@1", window, "first+lowest@2", "no candidates", "failed",
                 "gen s/structure", "wall s"])
    rows = [
        [name]
        + [_percent(r["match_rate"][k]) for k in ks]
        + [_number(r["rmse"][k]) for k in ks]
        + [_percent(r["ranked_match_rate"]["1"], "n/a") if r["relaxed"] else "n/a",
           _percent(_window(r), "n/a") if r["relaxed"] else "n/a",
           _percent((r.get("pair_match_rate") or {}).get("2"), "n/a") if r["relaxed"] else "n/a",
           str(r["n_zero_candidates"]), str(r["n_failed"]),
           _number(r["time_per_structure_s"], 3), f"{r['wall_time_s']:.1f}"]
        for name, r in results.items()
    ]
    labels = list(first["per_arity"])
    arity_header = ["generator", "k"] + [
        f"{label} el. (n={first['per_arity'][label]['n']})" for label in labels
    ]
    arity_rows = []
    for name, r in results.items():
        arity_rows += [[name, k] + [_percent(r["per_arity"][label]["match_rate"][k])
                                    for label in labels] for k in ks]
        if r["relaxed"]:
            arity_rows.append([name, "ranked@1"] + [
                _percent(r["per_arity"][label]["ranked_match_rate"]["1"]) for label in labels])
            arity_rows.append([name, window] + [
                _percent(_window(r["per_arity"][label])) for label in labels])
    relaxed = ""
    if first["relaxed"]:
        relaxed = f", candidates relaxed with {relax_model or 'an ML model'}"
    title = (f"CSP benchmark: {first['n_compositions']} compositions of "
             f"{Path(first['data_csv']).name}, seed {first['seed']}{relaxed}")
    lines = [f"## {title}", "", *_markdown(header, rows), "",
             "Match rate (and ranked@1) by number of distinct elements:", "",
             *_markdown(arity_header, arity_rows)]
    return "\n".join(lines) + "\n"


def combined_results(
    results: dict[str, dict[str, Any]],
    relax_model: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's settings and each generator's summary (per-composition records left out).

    ``settings`` (such as ``max_atoms`` and the templates used) are added as they are.
    """
    first = next(iter(results.values()))
    return (settings or {}) | {
        "data_csv": first["data_csv"],
        "n_compositions": first["n_compositions"],
        "ks": first["ks"],
        "seed": first["seed"],
        "relaxed": first["relaxed"],
        "relax_model": relax_model,
        "matcher": first["matcher"],
        "material_ids": [r["material_id"] for r in first["per_composition"]],
        "unreadable_targets": first["unreadable_targets"],
        "generators": {
            name: {k: v for k, v in r.items() if k != "per_composition"}
            for name, r in results.items()
        },
    }


def write_combined(
    results: dict[str, dict[str, Any]],
    out: Path,
    relax_model: str | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[Path, Path, str]:
    """Write ``results.json`` and ``results.md`` for all generators; return them and the table."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    combined = combined_results(results, relax_model, settings)
    json_path.write_text(json.dumps(combined, indent=2) + "\n")
    from xtalloop.benchmark.subsets import hull_markdown, no_template_markdown

    table = (summary_markdown(results, relax_model) + no_template_markdown(results)
             + hull_markdown(results))
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
        ..., "--generator", help="Generator to benchmark (repeatable). templates+wyckoff "
                                 "takes two template candidates per model candidate and "
                                 "skips a crystal already pooled."),
    n: int = typer.Option(100, "--n", min=1, help="Compositions (table rows) to sample."),
    k: str = typer.Option("1,20", "--k", help="Candidates per composition at which to "
                                               "report, comma-separated."),
    checkpoint: Path | None = typer.Option(None, help="Checkpoint of the diffusion generator."),
    wyckoff_checkpoint: Path | None = typer.Option(
        None, help="Checkpoint of the Wyckoff generator (default: the shipped one trained on "
                   "the train split of --data's data set: wyckoff-mp20.pt for mp_20, "
                   "wyckoff-mpts52.pt for mpts_52, else wyckoff.pt)."),
    reference_csv: str | None = typer.Option(
        None, help="Templates of prototype_substitution (default: train_partial.csv.gz beside "
                   "--data); templates whose material_id is a row of --data are refused."),
    max_atoms: int | None = typer.Option(
        None, min=1, help="Largest cell a generator may return (default: the largest cell of "
                          "--data; diffusion: the checkpoint's largest training cell)."),
    n_steps: int | None = typer.Option(None, min=1, help="Reverse steps of the diffusion "
                                                         "sampler (default: all)."),
    device: str = typer.Option("cpu", help="Torch device of the learned generators and relaxer."),
    relax: str | None = typer.Option(None, help="Relax each composition's candidates in one "
                                                "batch with this ML model (chgnet, sevennet, "
                                                "sevennet:7net-0, diep, emt or a MACE model "
                                                "file) and report ranked@1."),
    relax_fmax: float = typer.Option(0.05, min=0.0, help="Relaxation force threshold (eV/Å)."),
    relax_steps: int = typer.Option(300, min=1, help="Relaxation step limit."),
    rerank: str | None = typer.Option(None, help="As the prefilter's rerank_model: relax the "
                                                 "--rerank-top lowest distinct structures "
                                                 "after --relax again with this model, whose "
                                                 "energies alone rank (e.g. chgnet, then diep)."),
    rerank_top: int = typer.Option(8, min=1, help="Distinct structures --rerank relaxes."),
    rerank_first: bool = typer.Option(
        False, "--rerank-first", help="--rerank relaxes the generator's first candidate too "
        "(what the loop's second model ranks with prefilter.prior_picks: 1)."),
    seed: int = typer.Option(0, help="Seeds the composition sample and every generator call."),
    out: Path = typer.Option(Path("csp-benchmark"), "--out", help="Folder for the results."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    resume: bool = typer.Option(False, help="Continue a killed run with the same settings and "
                                            "--out: compositions in its journal (written as "
                                            "each finishes) are not computed again."),
) -> None:
    """Match rate, RMSE and (with --relax) ranked@1 of generators on the same compositions."""
    from xtalloop.benchmark import run_csp_benchmark, write_results
    from xtalloop.benchmark.references import (
        default_reference_csv,
        default_wyckoff_checkpoint,
        largest_cell,
        prepare_templates,
    )
    from xtalloop.benchmark.relax import make_relax
    from xtalloop.generators.prototype_substitution import read_structure_csv

    ks = parse_ks(k)
    if rerank and not relax:
        raise ConfigError("--rerank needs --relax (the model that screens first)")
    if rerank_first and not rerank:
        raise ConfigError("--rerank-first needs --rerank (the model that relaxes the first again)")
    table = read_structure_csv(data)  # a missing or bad table fails here
    n_rows = min(n, len(table))
    data_max_atoms = largest_cell(table, data)  # no readable row fails here
    if max_atoms is not None and max_atoms < data_max_atoms:
        typer.echo(f"warning: --max-atoms {max_atoms} is below the largest cell of {data.name} "
                   f"({data_max_atoms} atoms); larger targets cannot be matched", err=True)
    settings: dict[str, Any] = {"max_atoms": max_atoms or data_max_atoms}
    if WYCKOFF_KINDS.intersection(generator):  # checked before the templates are prepared
        from xtalloop.benchmark.generators import checked_wyckoff

        wyckoff_checkpoint = checked_wyckoff(wyckoff_checkpoint or default_wyckoff_checkpoint(data))
        typer.echo(f"wyckoff checkpoint: {wyckoff_checkpoint}")
        settings["wyckoff_checkpoint"] = str(wyckoff_checkpoint)
    templates = None
    if TEMPLATE_KINDS.intersection(generator):
        reference = reference_csv or default_reference_csv(data)
        templates = prepare_templates(reference, data, table, out)
        typer.echo(f"templates: {templates.n_used} of {templates.n_rows} rows of "
                   f"{templates.source}, cells up to {settings['max_atoms']} atoms")
        if templates.n_refused:
            typer.echo(f"warning: refused {templates.n_refused} templates whose material_id is "
                       f"a row of {data.name}", err=True)
        if templates.n_unreadable:
            typer.echo(f"warning: skipped {templates.n_unreadable} template rows with an "
                       "unreadable CIF or formula", err=True)
        settings["templates"] = {"reference_csv": str(templates.source),
                                 "used_csv": str(templates.path), "n_rows": templates.n_rows,
                                 "n_refused": templates.n_refused,
                                 "n_unreadable": templates.n_unreadable}
    generators = build_generators(generator, max_atoms, checkpoint,
                                  str(templates.path) if templates else None, n_steps, device,
                                  default_max_atoms=data_max_atoms,
                                  wyckoff_checkpoint=wyckoff_checkpoint)
    relax_fn = make_relax(relax, device, relax_fmax, relax_steps, rerank, rerank_top,
                          rerank_first) if relax else None
    run_key = {"relax": relax, "relax_fmax": relax_fmax, "relax_steps": relax_steps} if relax \
        else {}
    relax_label = relax
    if rerank:  # only then in the key: journals of runs without a re-rank stay resumable
        run_key |= {"rerank": rerank, "rerank_top": rerank_top}
        settings["rerank"] = {"model": rerank, "top": rerank_top}
        relax_label = f"{relax}, the {rerank_top} lowest distinct again with {rerank}"
        if rerank_first:
            run_key["rerank_first"] = settings["rerank"]["first"] = True
            relax_label += " (the generator's first among them)"
    results: dict[str, dict[str, Any]] = {}
    for gen in generators:
        typer.echo(f"{gen.name}: {n_rows} compositions of {data.name}, "
                   f"k = {', '.join(map(str, ks))}")
        result = run_csp_benchmark(data, gen, n, ks=ks, seed=seed, relax=relax_fn,
                                   progress=progress, journal=out / gen.name / "journal.jsonl",
                                   resume=resume, run_key=run_key,
                                   report=lambda line, name=gen.name: typer.echo(f"{name} {line}"))
        if rerank and not rerank_first:  # the generator's first has no energy of the pick's
            for summary in (result, *result["per_arity"].values()):
                summary["pair_match_rate"] = {"2": None}
        if result["n_resumed"]:
            typer.echo(f"{gen.name}: {result['n_resumed']} compositions taken from the journal")
        if result["unreadable_targets"] and not results:
            typer.echo(f"warning: skipped {len(result['unreadable_targets'])} of {n_rows} sampled "
                       f"rows of {data.name} with an unreadable CIF", err=True)
        write_results(result, out / gen.name)
        results[gen.name] = result
    if templates is not None:
        from xtalloop.benchmark.subsets import mark_template_coverage

        mark_template_coverage(results, str(templates.path), settings["max_atoms"])
    if results and next(iter(results.values()))["relaxed"]:
        from xtalloop.benchmark.subsets import mark_hull_targets

        mark_hull_targets(results, str(data))
    json_path, md_path, table_md = write_combined(results, out, relax_label, settings)
    typer.echo(table_md)
    typer.echo(f"results: {json_path}, {md_path}; per generator: "
               + ", ".join(f"{out / name}/" for name in results))


# --- prefilter ---------------------------------------------------------------------


@benchmark_app.command()
@user_errors
def prefilter(
    model: list[str] = typer.Option(..., "--model", help="Energy model (repeatable): chgnet, "
                                    "sevennet, sevennet:7net-0, diep, emt or a MACE model file."),
    data: list[Path] = typer.Option(..., "--data", help="Table with cif and "
                                    "formation_energy_per_atom (repeatable), e.g. "
                                    "wbm_sample/val.csv.gz, mp_20/val.csv.gz."),
    n: int = typer.Option(200, "--n", min=1, help="Structures sampled from each table."),
    seed: int = typer.Option(0, help="Seed of the samples."),
    mp20_dir: Path = typer.Option(Path("../shared/data/mp_20"), help="MP-20 folder "
                                  "(train_partial + val): the hull and the polymorphs."),
    polymorphs: int = typer.Option(40, min=0, help="MP-20 compositions with several "
                                   "structures whose energy order is scored."),
    device: str = typer.Option("cpu", help="Torch device."),
    out: Path = typer.Option(Path("prefilter-benchmark"), "--out", help="Folder for the results."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Formation-energy MAE, stable/unstable call, polymorph order and speed of energy models."""
    from xtalloop.benchmark.prefilter import prefilter_markdown, run_prefilter_benchmark
    from xtalloop.models.energy_model import load_energy_model

    for spec in model:  # a bad name or file fails before any work
        load_energy_model(spec, device)
    result = run_prefilter_benchmark(model, [str(d) for d in data], n=n, seed=seed,
                                     mp20_dir=mp20_dir, n_polymorphs=polymorphs, device=device,
                                     progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = prefilter_markdown(result)
    (out / "results.md").write_text(table)
    typer.echo(table)
    typer.echo(f"results: {out / 'results.json'}, {out / 'results.md'}")

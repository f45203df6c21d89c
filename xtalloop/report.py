"""The report of a run or an active-learning loop: one HTML page, its PNGs and CIFs.

:func:`write_report` reads everything from the results store (run and round
records, composition results, validated structures, reference phases, the
model registry), so a report can be written at any time, from any machine
that reaches the store, for a finished, running or interrupted loop.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure

from xtalloop.config import StoreConfig
from xtalloop.errors import ConfigError, XtalloopError
from xtalloop.preflight import check_output_folder, writing_into
from xtalloop.store.results import ResultsDB, open_results

STABLE_WITHIN = 0.1
"""eV/atom above the DFT hull counted as stable for a plain run (a loop sets its own)."""


@dataclass
class ReportData:
    """What the report shows, gathered from the store."""

    run: dict[str, Any]
    rounds: list[dict[str, Any]]
    docs: list[dict[str, Any]]
    """Validated structures found (or found again) by the run, each with ``round``."""
    models: list[dict[str, Any]] = field(default_factory=list)
    stable_within: float = STABLE_WITHIN


def gather(db: ResultsDB, run_id: str) -> ReportData:
    """Collect the report's data for run or loop ``run_id``.

    Raises
    ------
    XtalloopError
        If the store has no run of that id.
    """
    from xtalloop.active_learning import summarise_round
    from xtalloop.learn.registry import ModelRegistry

    run = db.get_run(run_id)
    if run is None:
        raise XtalloopError(f"no run {run_id!r} in the store {db.config.location}")
    stable_within = ((run.get("config") or {}).get("loop") or {}).get("stable_within",
                                                                        STABLE_WITHIN)
    if run.get("kind") == "loop":
        rounds = db.rounds(run_id)
    else:  # a plain run is one round
        results = db.composition_results(run_id)
        hull = {d["uuid"]: d.get("e_above_hull") for d in db.find_validated(run_id=run_id)}
        summary = summarise_round(results, stable_within, hull)
        if not results:  # a run from before composition results were recorded
            summary["funnel"] = _summed_funnel(run.get("funnel") or {})
        rounds = [{"round": 1, "run_id": run_id, "status": run.get("status"),
                   "compositions": [r["formula"] for r in results] or list(run.get("funnel", {})),
                   "energy_model": run.get("energy_model"), **summary}]
    round_of = {r["run_id"]: r["round"] for r in rounds}
    docs: dict[str, dict[str, Any]] = {}
    for record in rounds:
        for doc in db.find_validated(run_id=record["run_id"]):
            if doc["uuid"] not in docs:
                doc.pop("trajectory", None)
                producer = (doc.get("run") or {}).get("id")
                doc["new"] = producer in round_of  # its stored result comes from this run
                doc["round"] = round_of.get(producer, record["round"])
                docs[doc["uuid"]] = doc
    models = [m for m in ModelRegistry(db).all() if m.get("run", {}).get("id") in round_of]
    for model in models:
        model["round"] = round_of[model["run"]["id"]]
        model["n_train_structures"] = len([g for g in model.get("training_structures", [])
                                           if not g.startswith("reference:")])
    return ReportData(run, rounds, list(docs.values()), models, stable_within)


def _summed_funnel(per_formula: dict[str, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for funnel in per_formula.values():
        for key, value in funnel.items():
            total[key] = total.get(key, 0) + int(value)
    return total


def hull_points(db: ResultsDB, chemsys: list[str], settings_key: str,
                new_ids: set[str]) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """Phases of a chemical system for :func:`~xtalloop.plots.plot_hull`, and hull edges.

    Every validated structure of the system and its subsystems (these DFT
    settings) and the elemental references enter pymatgen's ``PhaseDiagram``;
    ``new_ids`` are the uuids found by the reported run.
    """
    entries, meta = [], []
    for element in chemsys:
        ref = db.get_reference(element, settings_key)
        if ref is None:
            return [], []
        entries.append(PDEntry(Composition(element), ref["energy_per_atom"], name=element))
        meta.append({"uuid": None, "label": element, "reference": True})
    for doc in db.find_validated(chemsys="-".join(chemsys), settings_key=settings_key,
                                 within_chemsys=True):
        comp = Composition(doc["formula"])
        entries.append(PDEntry(comp, doc["energy_per_atom"] * comp.num_atoms, name=doc["formula"]))
        meta.append({"uuid": doc["uuid"], "label": f"{doc['formula']} {doc['space_group']}",
                     "reference": False})
    diagram = PhaseDiagram(entries)
    points = []
    for entry, info in zip(entries, meta, strict=True):
        fractions = entry.composition.fractional_composition
        points.append({
            "composition": {el.symbol: float(fractions[el]) for el in fractions.elements},
            "formation_energy": float(diagram.get_form_energy_per_atom(entry)),
            "e_above_hull": float(diagram.get_e_above_hull(entry, allow_negative=True)),
            "on_hull": entry in diagram.stable_entries,
            "label": info["label"], "new": info["uuid"] in new_ids,
            "reference": info["reference"],
        })
    edges: set[tuple[int, int]] = set()
    index = {id(e): i for i, e in enumerate(entries)}
    for facet in diagram.facets:
        members = [index[id(diagram.qhull_entries[i])] for i in facet
                   if id(diagram.qhull_entries[i]) in index]
        edges.update((min(a, b), max(a, b)) for a in members for b in members if a != b)
    return points, sorted(edges)


def run_folder_store(folder: Path) -> StoreConfig:
    """The store settings saved in a run folder's ``config.json``.

    Raises
    ------
    ConfigError
        One line naming the file: unreadable, not JSON, or without valid
        ``store`` settings (the message never holds a password).
    """
    from pydantic import ValidationError

    from xtalloop.config import config_error_message

    path = folder / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not valid JSON (damaged or truncated)"
        raise ConfigError(f"{path}: {reason}; pass the run id instead "
                          "(xtalloop report <id> --store ...)") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("store"), dict):
        raise ConfigError(f"{path}: no store settings in it; pass the run id instead")
    try:
        return StoreConfig(**saved["store"])
    except ValidationError as exc:
        raise ConfigError(f"{path}: store settings: {config_error_message(exc)}") from None


def write_report(store: StoreConfig, run_id: str, out_dir: str | Path) -> Path:
    """Write ``report.html`` (self-contained: PNGs embedded) with PNGs and CIFs beside it.

    Parameters
    ----------
    store
        The results store holding the run.
    run_id
        A loop id or a plain run id.
    out_dir
        Folder to write into (created once the run is found).

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    XtalloopError
        No such run in the store, or ``out_dir`` cannot be a folder; in both
        cases nothing is written.
    """
    out = Path(out_dir)
    check_output_folder(out, "--out")
    with open_results(store) as db:
        data = gather(db, run_id)
        with writing_into(out / "cifs", "--out"):
            return _write_report(db, data, out)


def _write_report(db: ResultsDB, data: ReportData, out: Path) -> Path:
    """Plots, CIFs and the HTML page of ``data`` into the existing folder ``out``."""
    from xtalloop.plots import plot_hull, plot_model_history, plot_round_funnel, plot_rounds

    figures: list[tuple[str, Path]] = []
    if data.rounds:
        figures.append(("Rounds: DFT calls, stable structures, hit rate",
                        plot_rounds(data.rounds, out / "rounds.png")))
        figures.append(("Energy funnel", plot_round_funnel(data.rounds, out / "funnel.png")))
    new_ids = {d["uuid"] for d in data.docs if d["new"]}
    keys = sorted({d["dft"]["settings_key"] for d in data.docs})
    hull_notes = []
    for chemsys in sorted({d["chemsys"] for d in data.docs if d["nelements"] > 1}):
        elements = chemsys.split("-")
        if len(elements) > 3:
            hull_notes.append(f"{chemsys}: {len(elements)} elements, no hull drawing "
                              "(energies above hull are in the table)")
            continue
        for key in keys:
            points, edges = hull_points(db, elements, key, new_ids)
            if points:
                name = f"hull_{chemsys}.png" if len(keys) == 1 else f"hull_{chemsys}_{key}.png"
                figures.append((f"{chemsys} convex hull (DFT, {key})",
                                plot_hull(points, elements, out / name, edges)))
    if data.models:
        figures.append(("Energy models trained by the loop",
                        plot_model_history(data.models, out / "models.png")))
    best = _best_structures(data.docs, out / "cifs")
    path = out / "report.html"
    path.write_text(_html(data, figures, best, hull_notes))
    return path


def _best_structures(docs: list[dict[str, Any]], cif_dir: Path) -> list[dict[str, Any]]:
    """The lowest structure above the hull per formula, each written as a CIF."""
    from xtalloop.export import cif_text, file_stem

    best: dict[str, dict[str, Any]] = {}
    for doc in docs:
        key = (doc.get("e_above_hull") if doc.get("e_above_hull") is not None else 1e9,
               doc["energy_per_atom"])
        old = best.get(doc["formula"])
        if old is None or key < old["_key"]:
            best[doc["formula"]] = dict(doc, _key=key)
    rows = []
    for formula in sorted(best):
        doc = best[formula]
        name = f"{file_stem(doc)}.cif"
        (cif_dir / name).write_text(cif_text(doc))
        rows.append({"formula": formula, "space_group": doc["space_group"],
                     "space_group_number": doc["space_group_number"],
                     "nsites": len(Structure.from_dict(doc["structure"])),
                     "energy_per_atom": doc["energy_per_atom"],
                     "e_above_hull": doc.get("e_above_hull"), "round": doc["round"],
                     "generator": (doc.get("generator") or {}).get("generator"),
                     "energy_model": ((doc.get("prefilter") or {}).get("energy_model") or {}
                                      ).get("registry_id") or ((doc.get("prefilter") or {}).get(
                                          "energy_model") or {}).get("name"),
                     "picked_by": (doc.get("prefilter") or {}).get("picked_by"),
                     "converged": doc["dft"]["converged"], "cif": f"cifs/{name}"})
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _known_hits(record: dict[str, Any]) -> str:
    """A campaign round's hits against the known structures (see benchmark.campaign_score)."""
    known = record.get("known_structure")
    if not known:
        return "—"
    per_100 = known.get("hits_per_100")
    rate = "" if per_100 is None else f" ({per_100:.0f} per 100)"
    return (f"{known['hits']} of {known['validations']}{rate}, "
            f"{known['ground_states']} ground states")


def _learned(record: dict[str, Any]) -> str:
    model = record.get("energy_model") or {}
    if not model:
        return "—"
    if not model.get("model_id"):
        return html.escape(f"not trained: {model.get('reason', '')}")
    mae = (model.get("metrics") or {}).get("energy_mae")
    parent = (model.get("parent_metrics") or {}).get("energy_mae")
    text = f"{model['model_id']} ({'promoted' if model.get('promoted') else 'kept parent'}"
    if mae is not None and parent is not None:
        text += f"; {mae:.0f} vs {parent:.0f} meV/atom"
    return html.escape(text + ")")


def _html(data: ReportData, figures: list[tuple[str, Path]], best: list[dict[str, Any]],
          hull_notes: list[str]) -> str:
    run = data.run
    kind = "Active-learning loop" if run.get("kind") == "loop" else "Run"
    status = run.get("status", "?")
    if run.get("stopped_by"):
        status += f" — {run['stopped_by']}"
    calls = sum(r.get("dft_calls", 0) for r in data.rounds)
    stable = sum(r.get("stable", 0) for r in data.rounds)
    known = any("known_structure" in r for r in data.rounds)  # a scored campaign arm
    round_rows = [[
        str(r["round"]), _fmt("+".join(map(str, r["arities"])) if r.get("arities") else "all"),
        _fmt(", ".join(r.get("compositions_validated") or r.get("compositions") or [])),
        _fmt(r.get("status")), str(r.get("dft_calls", 0)), str(r.get("validated", 0)),
        str(r.get("stable", 0)), str(r.get("new_stable", 0)),
        "—" if r.get("hit_rate") is None else f"{100 * r['hit_rate']:.0f} %",
        _fmt(r.get("energy_model_used")), _learned(r),
        _fmt((r.get("generator") or {}).get("reason")),
        *([_known_hits(r)] if known else []),
    ] for r in data.rounds]
    best_rows = [[
        _fmt(b["formula"]), _fmt(f"{b['space_group']} ({b['space_group_number']})"),
        str(b["nsites"]), _fmt(b["energy_per_atom"], 4), _fmt(b["e_above_hull"]),
        str(b["round"]), _fmt(b["generator"]), _fmt(b["energy_model"]), _fmt(b["picked_by"]),
        "yes" if b["converged"] else "no", f'<a href="{b["cif"]}">CIF</a>',
    ] for b in best]
    images = "".join(
        f"<figure><img src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}' alt='{html.escape(title)}'>"
        f"<figcaption>{html.escape(title)} ({p.name})</figcaption></figure>"
        for title, p in figures)
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in hull_notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>xtalloop report {html.escape(run['id'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #eee; }} img {{ max-width: 100%; }} .note {{ color: #666; }}
</style></head><body>
<h1>{kind} {html.escape(run['id'])}</h1>
<p>Status: {html.escape(status)}. {len(data.rounds)} round(s), {calls} DFT relaxations of picks,
{stable} stable structures (within {data.stable_within} eV/atom of the DFT hull);
hit rate = stable / DFT calls.</p>
<h2>Rounds</h2>
{_table(["round", "arities", "compositions", "status", "DFT calls", "validated", "stable",
         "new stable", "hit rate", "prefilter model", "energy model trained", "generator",
         *(["known-structure hits"] if known else [])],
        round_rows)}
<h2>Best structure per composition</h2>
{_table(["formula", "space group", "atoms", "E (eV/atom)", "E above hull (eV/atom)", "round",
         "generator", "prefilter model", "picked by", "converged", "file"], best_rows)}
<h2>Figures</h2>
<p class="note">Hulls hold the phases of this store computed with the same DFT settings:
elemental references and validated structures. A competing phase that no run has computed
is missing, so energies above hull are lower bounds: "stable" means stable against what
is known.</p>
{notes}{images}
</body></html>
"""

"""Prefilter benchmark: how well an energy model screens known, DFT-relaxed structures.

In the spirit of Matbench Discovery, on the shared data: for a seeded sample of a
table's structures (already relaxed with DFT, so one single-point energy each,
batched), the model's formation energy per atom comes from its total energy and
its own elemental chemical potentials (the lowest of the relaxed elemental
prototypes, :meth:`~xtalloop.rankers.ml_ranker.MLRanker.reference_phases`).
It is compared with the table's formation energy (MAE), placed against a convex
hull of MP-20 formation energies (the stable/unstable call: F1, precision,
recall, DAF) and used to order polymorphs of MP-20 compositions; the time of the
single points gives the throughput.

Caveats (the ``mae_by_correction`` split measures the first): MP's (and
WBM's) formation energies include the MP2020 anion and GGA+U corrections; a
model's energies include them only as far as its training data did (MPtrj for
CHGNet and SevenNet; DIEP is fitted to r2SCAN, not PBE), so the MAE can mix model
error with the correction (the corrections are mostly negative: a model without
them errs upward on the corrected structures). The model's elemental references come
from simple prototypes (fcc, bcc, hcp, diamond, simple cubic, dimers), not each
element's true ground state, which biases formation energies of compounds of
elements such as Se, P, C or O downward (see ``benchmarks/README.md``). The hull holds only MP-20
(≤ 20 atoms, 58 % of train, + val), so it is higher than MP's full hull and
more structures count as stable than Matbench Discovery's ≈ 16 %.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from xtalloop.benchmark.prefilter_metrics import (
    FormationHull,
    classification,
    error_stats,
    mp2020_corrected,
    polymorph_ordering,
)
from xtalloop.benchmark.tables import markdown, number, percent
from xtalloop.errors import DataError, XtalloopError
from xtalloop.generators.reference_set import _parse_cif, read_structure_csv

logger = logging.getLogger(__name__)

MP20_TABLES = ("train_partial.csv.gz", "val.csv.gz")
CHUNK = 32  # structures per predict call (progress granularity; models batch inside)


def _structure(cif: str) -> Structure | None:
    """The structure of a CIF, or None if it cannot be read."""
    try:
        return _parse_cif(cif)
    except Exception:  # noqa: BLE001  (pymatgen's CIF parser raises many types)
        return None


def load_sample(path: str | Path, n: int, seed: int) -> dict[str, Any]:
    """A seeded sample of ``n`` rows of a table with a formation energy per structure.

    Raises
    ------
    DataError
        If the table is unreadable or has no ``formation_energy_per_atom`` column.
    """
    table = read_structure_csv(path)
    if "formation_energy_per_atom" not in table.columns:
        raise DataError(f"structure table {path} has no 'formation_energy_per_atom' column")
    table = table[pd.to_numeric(table["formation_energy_per_atom"], errors="coerce").notna()]
    rows = table.sample(n=min(n, len(table)), random_state=seed)
    structures, kept, unreadable = [], [], 0
    for index, row in rows.iterrows():
        s = _structure(row["cif"])
        if s is None:
            unreadable += 1
            continue
        structures.append(s)
        kept.append(index)
    rows = rows.loc[kept]
    return {"path": str(path), "n_rows": len(table), "rows": rows, "structures": structures,
            "n_unreadable": unreadable,
            "ids": [str(r.get("material_id", i)) for i, r in rows.iterrows()]}


def load_mp20(mp20_dir: str | Path) -> pd.DataFrame:
    """MP-20 train_partial + val: material_id, reduced_formula, formation energy, cif."""
    parts = []
    for name in MP20_TABLES:
        table = read_structure_csv(Path(mp20_dir) / name)
        missing = {"material_id", "reduced_formula", "formation_energy_per_atom"} - set(table)
        if missing:
            raise DataError(f"{Path(mp20_dir) / name} lacks columns {sorted(missing)}")
        parts.append(table[["material_id", "reduced_formula", "formation_energy_per_atom",
                            "cif"]])
    return pd.concat(parts, ignore_index=True)


def hull_for(mp20: pd.DataFrame, exclude_ids: Sequence[str] = ()) -> FormationHull:
    """The MP-20 formation-energy hull without the rows ``exclude_ids`` (the evaluated ones)."""
    keep = mp20[~mp20["material_id"].astype(str).isin(set(exclude_ids))]
    return FormationHull((Composition(f), float(e)) for f, e in
                         zip(keep["reduced_formula"], keep["formation_energy_per_atom"],
                             strict=True))


def polymorph_sample(mp20: pd.DataFrame, n_compositions: int, seed: int,
                     max_per_composition: int = 6) -> list[list[tuple[Structure, float]]]:
    """Seeded compositions of MP-20 with ≥ 2 structures: ``(structure, formation energy)``."""
    counts = mp20["reduced_formula"].value_counts()
    formulas = sorted(counts[counts >= 2].index)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(formulas)[:n_compositions]
    groups = []
    for formula in chosen:
        rows = mp20[mp20["reduced_formula"] == formula].head(max_per_composition)
        group = [(s, float(e)) for s, e in
                 ((_structure(c), e) for c, e in zip(rows["cif"],
                                                     rows["formation_energy_per_atom"],
                                                     strict=True)) if s is not None]
        if len(group) >= 2:
            groups.append(group)
    return groups


def predict_per_atom(model: Any, structures: Sequence[Structure], progress: bool = False,
                     desc: str = "single points") -> tuple[list[float | None], float]:
    """Energy per atom of each structure (None where the model refuses it) and the seconds.

    A chunk the model refuses (an element it has no parameters for) is retried
    one structure at a time, so one odd structure does not sink the others.
    """
    from tqdm.auto import tqdm

    out: list[float | None] = []
    start = time.perf_counter()
    with tqdm(total=len(structures), desc=desc, unit="structure", disable=not progress) as bar:
        for i in range(0, len(structures), CHUNK):
            chunk = [AseAtomsAdaptor.get_atoms(s) for s in structures[i:i + CHUNK]]
            try:
                preds = [p.energy for p in model.predict(chunk)]
            except XtalloopError:
                preds = []
                for atoms in chunk:
                    try:
                        preds.append(model.predict([atoms])[0].energy)
                    except XtalloopError:
                        preds.append(None)
            out += [None if e is None else e / len(a) for e, a in zip(preds, chunk, strict=True)]
            bar.update(len(chunk))
    return out, time.perf_counter() - start


def formation_per_atom(structure: Structure, energy_per_atom: float,
                       mu: dict[str, float]) -> float:
    """Formation energy per atom from a total energy per atom and elemental energies."""
    comp = structure.composition.fractional_composition
    return energy_per_atom - sum(amount * mu[el.symbol] for el, amount in comp.items())


def evaluate_table(sample: dict[str, Any], energies: Sequence[float | None],
                   mu: dict[str, float], hull: FormationHull) -> dict[str, Any]:
    """MAE and the stable/unstable call of one model on one table sample."""
    records = []
    for sid, s, e, true in zip(sample["ids"], sample["structures"], energies,
                               sample["rows"]["formation_energy_per_atom"], strict=True):
        if e is None or any(el.symbol not in mu for el in s.composition.elements):
            continue
        pred = formation_per_atom(s, e, mu)
        comp = s.composition
        records.append({"id": sid, "formula": comp.reduced_formula, "true_e_form": float(true),
                        "pred_e_form": pred, "mp2020_corrected": mp2020_corrected(comp),
                        "true_e_hull": hull.e_above_hull(comp, float(true)),
                        "pred_e_hull": hull.e_above_hull(comp, pred)})
    true = [r["true_e_form"] for r in records]
    pred = [r["pred_e_form"] for r in records]
    split = {flag: error_stats([r["pred_e_form"] for r in records if r["mp2020_corrected"] == v],
                               [r["true_e_form"] for r in records if r["mp2020_corrected"] == v])
             for flag, v in (("corrected", True), ("uncorrected", False))}
    return {"n_evaluated": len(records), "n_refused": len(sample["structures"]) - len(records),
            "formation_energy": error_stats(pred, true), "mae_by_correction": split,
            "stability": classification([r["pred_e_hull"] for r in records],
                                        [r["true_e_hull"] for r in records]),
            "records": records}


def evaluate_model(spec: str, samples: dict[str, dict[str, Any]], hulls: dict[str, FormationHull],
                   polymorphs: list[list[tuple[Structure, float]]], device: str = "cpu",
                   progress: bool = False) -> dict[str, Any]:
    """Every metric of one model (loaded with ``load_energy_model(spec)``) on every sample.

    ``load_s`` is near 0 when the model was loaded before in this process (the CLI loads
    every model first, to fail fast); ``references_s`` is the elemental relaxations.
    """
    from xtalloop.models.energy_model import load_energy_model
    from xtalloop.rankers.ml_ranker import MLRanker

    start = time.perf_counter()
    model = load_energy_model(spec, device)
    load_s = time.perf_counter() - start
    result: dict[str, Any] = {"model": model.identity, "load_s": load_s, "tables": {}}
    energies, seconds, n_structures, n_atoms = {}, 0.0, 0, 0
    for name, sample in samples.items():
        energies[name], dt = predict_per_atom(model, sample["structures"], progress,
                                              f"{spec}: {name}")
        seconds += dt
        n_structures += len(sample["structures"])
        n_atoms += sum(len(s) for s in sample["structures"])
    elements = sorted({el.symbol for name, sample in samples.items()
                       for s, e in zip(sample["structures"], energies[name], strict=True)
                       if e is not None for el in s.composition.elements})
    ranker = MLRanker(model=spec, device=device, progress=False)
    start = time.perf_counter()
    mu = {}
    from tqdm.auto import tqdm

    for el in tqdm(elements, desc=f"{spec}: elemental references", unit="element",
                   disable=not progress):
        try:
            mu[el] = ranker.reference_phases([el])[0].energy_per_atom
        except (XtalloopError, ValueError) as exc:  # no parameters or every relax failed
            logger.warning("%s: no reference for %s: %s", spec, el, exc)
    result["references_s"] = time.perf_counter() - start
    result["chemical_potentials"] = mu
    result["throughput"] = {"structures": n_structures, "atoms": n_atoms, "seconds": seconds,
                            "structures_per_s": n_structures / seconds if seconds else None,
                            "atoms_per_s": n_atoms / seconds if seconds else None}
    for name, sample in samples.items():
        result["tables"][name] = evaluate_table(sample, energies[name], mu, hulls[name])
    flat = [s for group in polymorphs for s, _ in group]
    per_atom, dt = predict_per_atom(model, flat, progress, f"{spec}: polymorphs")
    groups, i = [], 0
    for group in polymorphs:
        pairs = [(true, per_atom[i + j]) for j, (_, true) in enumerate(group)]
        i += len(group)
        groups.append([(t, p) for t, p in pairs if p is not None])
    result["polymorphs"] = polymorph_ordering(groups) | {
        "min_gap_0.01": polymorph_ordering(groups, min_gap=0.01), "seconds": dt}
    return result


def run_prefilter_benchmark(models: Sequence[str], data: Sequence[str | Path], n: int = 200,
                            seed: int = 0, mp20_dir: str | Path = "../shared/data/mp_20",
                            n_polymorphs: int = 40, device: str = "cpu",
                            progress: bool = False) -> dict[str, Any]:
    """Run every model on the same seeded samples; the full result as a JSON-able dict.

    Parameters
    ----------
    models
        Specs accepted by :func:`~xtalloop.models.energy_model.load_energy_model`.
    data
        Tables with ``cif`` and ``formation_energy_per_atom`` (e.g. WBM sample, MP-20 val).
    n, seed
        Structures sampled from each table, and the sampling seed.
    mp20_dir
        Folder with MP-20's train_partial and val: the hull (without the sampled rows
        evaluated against it, matched by material_id) and the polymorphs.
    n_polymorphs
        MP-20 compositions with several structures whose order is scored (0: none).
    """
    samples, hulls = {}, {}
    for path in data:  # a bad table fails before MP-20 is read
        name = Path(path).parent.name + "/" + Path(path).name.split(".")[0]
        samples[name] = load_sample(path, n, seed)
    mp20 = load_mp20(mp20_dir)
    for name in samples:
        hulls[name] = hull_for(mp20, samples[name]["rows"].get("material_id",
                                                               pd.Series(dtype=str)).astype(str))
    polymorphs = polymorph_sample(mp20, n_polymorphs, seed) if n_polymorphs else []
    out: dict[str, Any] = {
        "n": n, "seed": seed, "mp20_dir": str(mp20_dir),
        "hull": "MP-20 train_partial + val formation energies, elements at 0 eV/atom; rows of "
                "the evaluated sample (by material_id) left out; stable = e_hull <= 0",
        "tables": {name: {"path": s["path"], "n_rows": s["n_rows"], "n_sampled": len(s["ids"]),
                          "n_unreadable": s["n_unreadable"]} for name, s in samples.items()},
        "polymorph_set": {"n_compositions": len(polymorphs),
                          "n_structures": sum(len(g) for g in polymorphs)},
        "models": {},
    }
    for spec in models:
        out["models"][spec] = evaluate_model(spec, samples, hulls, polymorphs, device, progress)
    return out


def prefilter_markdown(result: dict[str, Any]) -> str:
    """The prefilter benchmark's table: one row per model and table."""
    header = ["model", "table", "n", "MAE eV/atom", "MAE corr./uncorr.", "F1", "precision",
              "recall", "DAF", "polymorph pairs", "top-1", "structures/s"]
    rows = []
    for spec, r in result["models"].items():
        poly = r["polymorphs"]
        for name, t in r["tables"].items():
            fe, st, split = t["formation_energy"], t["stability"], t["mae_by_correction"]
            corr_uncorr = (f"{number(split['corrected']['mae'], 3)} / "
                           f"{number(split['uncorrected']['mae'], 3)}")
            rows.append([spec, name, str(t["n_evaluated"]), number(fe["mae"], 3), corr_uncorr,
                         number(st["f1"], 3), number(st["precision"], 3),
                         number(st["recall"], 3), number(st["daf"], 2),
                         percent(poly["pair_accuracy"]), percent(poly["top1"]),
                         number(r["throughput"]["structures_per_s"], 1)])
    prevalence = ", ".join(
        f"{name}: {percent(t['stability']['prevalence'])}"
        for name, t in next(iter(result["models"].values()))["tables"].items())
    poly = result["polymorph_set"]
    notes = [
        f"Hull: {result['hull']}. Prevalence of stable: {prevalence}.",
        (f"Polymorphs: {poly['n_structures']} structures of {poly['n_compositions']} MP-20 "
         "compositions (pairs: all pairs; top-1: lowest found)."),
        ("MAE corr./uncorr.: structures with / without an MP2020-corrected element "
         "(O, S, F, Cl, Br, I, N, Se, Si, Sb, Te, H; U metals in oxides, fluorides)."),
    ]
    lines = [f"## Prefilter benchmark: n = {result['n']} per table, seed {result['seed']}", "",
             *markdown(header, rows), "", *notes]
    return "\n".join(lines) + "\n"

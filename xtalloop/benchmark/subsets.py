"""Benchmark figures on subsets of the targets: no template; on or above the hull.

Prototype substitution can only propose a structure when a known crystal has
the target's anonymous formula (``ABC3``...). Where none does, a learned
generator must earn its place, so the benchmark reports every generator's
match rate on that subset too.

ranked@1 asks whether the lowest-energy candidate matches the target. About
45 % of MP-20's crystals lie above the Materials Project hull (up to 80
meV/atom): for those, a lower-energy candidate may be right, not a miss, so
ranked@1 is also reported separately for targets on the hull and above it,
where the table gives the target's energy above the hull.
"""

from __future__ import annotations

from typing import Any

from pymatgen.core import Composition

from xtalloop.benchmark.csp_scoring import summarise


def mark_template_coverage(results: dict[str, dict[str, Any]], reference_csv: str,
                           max_atoms: int) -> int:
    """Flag each composition record ``has_template`` and add a ``no_template`` summary.

    A composition has a template when ``reference_csv`` holds a crystal of its
    anonymous formula with at most ``max_atoms`` sites (what prototype
    substitution can use). Returns the number of compositions without one.
    """
    from xtalloop.generators.prototype_substitution import load_reference_set

    reference = load_reference_set(reference_csv)
    covered: dict[str, bool] = {}
    n_without = 0
    for result in results.values():
        records = result["per_composition"]
        for record in records:
            formula = record["formula"]
            if formula not in covered:
                covered[formula] = bool(reference.rows_like(Composition(formula), max_atoms))
            record["has_template"] = covered[formula]
        subset = [r for r in records if not r["has_template"]]
        result["no_template"] = summarise(subset, result["ks"], result["relaxed"])
        n_without = len(subset)
    return n_without


def no_template_markdown(results: dict[str, dict[str, Any]]) -> str:
    """A markdown table of match rates (and ranked@1) on the compositions without a template."""
    first = next(iter(results.values()))
    if "no_template" not in first:
        return ""
    ks = [str(k) for k in first["ks"]]
    n = first["no_template"]["n"]
    ranked = first["relaxed"]  # ranked@1 exists only for relaxed candidates
    columns = [f"match@{k}" for k in ks] + (["ranked@1"] if ranked else [])
    lines = [f"\nCompositions without a template (n={n} of {first['n_compositions']}):\n",
             "| generator | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, result in results.items():
        sub = result["no_template"]
        cells = [_percent(sub["match_rate"][k]) for k in ks]
        if ranked:
            cells.append(_percent(sub["ranked_match_rate"]["1"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: eV/atom above the hull under which a target counts as on the hull.
ON_HULL = 0.001
#: Columns of a structure table holding the energy above the hull (MP-20, MPTS-52).
HULL_COLUMNS = ("e_above_hull", "energy_above_hull")


def hull_energies(data_csv: str) -> dict[str, float] | None:
    """Each target's energy above the hull (eV/atom) by ``material_id``, NaN where unknown;
    ``None`` where the table has no such column or no ``material_id``."""
    import pandas as pd

    wanted = {"material_id", *HULL_COLUMNS}
    table = pd.read_csv(data_csv, usecols=lambda c: c in wanted)  # one read, no CIFs
    column = next((c for c in HULL_COLUMNS if c in table.columns), None)
    if column is None or "material_id" not in table.columns:
        return None
    return dict(zip(table["material_id"].astype(str), table[column], strict=True))


def mark_hull_targets(results: dict[str, dict[str, Any]], data_csv: str) -> int | None:
    """Add ``on_hull`` and ``above_hull`` summaries (targets ≤ / > :data:`ON_HULL` eV/atom).

    Returns the number of targets on the hull, or ``None`` (nothing added) where
    ``data_csv`` has no energy-above-hull column or ``material_id``.
    """
    import pandas as pd

    above = hull_energies(data_csv)
    if above is None:
        return None
    n_on = 0
    for result in results.values():
        records = result["per_composition"]
        for record in records:
            value = above.get(str(record.get("material_id")))
            record["target_e_above_hull"] = None if pd.isna(value) else float(value)
        known = [r for r in records if r["target_e_above_hull"] is not None]
        on = [r for r in known if r["target_e_above_hull"] <= ON_HULL]
        result["on_hull"] = summarise(on, result["ks"], result["relaxed"])
        result["above_hull"] = summarise([r for r in known if r not in on], result["ks"],
                                          result["relaxed"])
        n_on = len(on)
    return n_on


def hull_markdown(results: dict[str, dict[str, Any]]) -> str:
    """ranked@1 and the largest k's match rate for targets on and above the hull."""
    first = next(iter(results.values()))
    if "on_hull" not in first or not first["relaxed"]:
        return ""
    k = str(max(first["ks"]))
    n_on, n_above = first["on_hull"]["n"], first["above_hull"]["n"]
    lines = [f"\nTargets on the hull (≤ {1000 * ON_HULL:g} meV/atom above it in the table, "
             f"n={n_on}) and above it (n={n_above}):\n",
             f"| generator | on: match@{k} | on: ranked@1 | above: match@{k} | "
             "above: ranked@1 |", "|---|---|---|---|---|"]
    for name, result in results.items():
        on, above = result["on_hull"], result["above_hull"]
        cells = [_percent(on["match_rate"][k]), _percent(on["ranked_match_rate"]["1"]),
                 _percent(above["match_rate"][k]), _percent(above["ranked_match_rate"]["1"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"

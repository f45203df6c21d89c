"""Benchmark figures on the compositions no template covers.

Prototype substitution can only propose a structure when a known crystal has
the target's anonymous formula (``ABC3``...). Where none does, a learned
generator must earn its place, so the benchmark reports every generator's
match rate on that subset too.
"""

from __future__ import annotations

from typing import Any

from pymatgen.core import Composition

from xtalloop.benchmark.csp import _summarise


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
        result["no_template"] = _summarise(subset, result["ks"], result["relaxed"])
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


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"

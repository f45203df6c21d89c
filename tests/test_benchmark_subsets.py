"""The CSP benchmark's figures on compositions that no template covers."""

from __future__ import annotations

import pandas as pd
from pymatgen.core import Lattice, Structure

from xtalloop.benchmark.subsets import (
    hull_markdown,
    mark_hull_targets,
    mark_template_coverage,
    no_template_markdown,
)


def _record(formula: str, rms: list[float | None]) -> dict:
    return {"material_id": formula, "formula": formula, "arity": "2", "n_candidates": len(rms),
            "rms": rms, "energy_per_atom": None, "ranked_match": None, "error": None}


def test_no_template_subset_counts_only_uncovered_compositions(tmp_path):
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])
    table = tmp_path / "ref.csv"
    pd.DataFrame({"material_id": ["r1"], "cif": [rocksalt.to(fmt="cif")],
                  "nsites": [len(rocksalt)]}).to_csv(table, index=False)
    # KBr has a template (AB); Al2O3 (A2B3) and TiO2 (AB2) do not
    records = [_record("KBr", [0.1]), _record("Al2O3", [None, 0.2]), _record("TiO2", [None])]
    results = {"gen": {"per_composition": records, "ks": [1, 20], "relaxed": False,
                       "n_compositions": 3}}
    assert mark_template_coverage(results, str(table), max_atoms=20) == 2
    assert [r["has_template"] for r in records] == [True, False, False]
    summary = results["gen"]["no_template"]
    assert summary["n"] == 2
    assert summary["match_rate"] == {"1": 0.0, "20": 0.5}
    text = no_template_markdown(results)
    assert "n=2 of 3" in text and "| gen | 0.0% | 50.0% |" in text
    assert "ranked@1" not in text  # no relaxation, no ranked@1 column


def test_cell_limit_decides_whether_a_template_counts(tmp_path):
    big = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5]])  # 8-atom conventional cell
    table = tmp_path / "ref.csv"
    pd.DataFrame({"material_id": ["r1"], "cif": [big.to(fmt="cif")],
                  "nsites": [len(big)]}).to_csv(table, index=False)
    results = {"gen": {"per_composition": [_record("KBr", [0.1])], "ks": [1], "relaxed": False,
                       "n_compositions": 1}}
    assert mark_template_coverage(results, str(table), max_atoms=4) == 1


def test_ranked_at_1_is_split_by_the_targets_energy_above_the_hull(tmp_path):
    table = tmp_path / "val.csv"
    pd.DataFrame({"material_id": ["on", "above"], "cif": ["", ""],
                  "e_above_hull": [0.0, 0.03]}).to_csv(table, index=False)
    records = [  # on the hull: the lowest candidate matches; above: a lower one does not
        {**_record("on", [0.1, None]), "energy_per_atom": [-1.0, -0.5]},
        {**_record("above", [None, 0.1]), "energy_per_atom": [-1.0, -0.9]},
        {**_record("unknown", [0.1]), "energy_per_atom": [-1.0]},  # not in the table
    ]
    results = {"gen": {"per_composition": records, "ks": [1, 20], "relaxed": True,
                       "n_compositions": 3}}
    assert mark_hull_targets(results, str(table)) == 1
    assert [r["target_e_above_hull"] for r in records] == [0.0, 0.03, None]
    on, above = results["gen"]["on_hull"], results["gen"]["above_hull"]
    assert (on["n"], on["ranked_match_rate"]["1"]) == (1, 1.0)
    assert (above["n"], above["ranked_match_rate"]["1"], above["match_rate"]["20"]) == (
        1, 0.0, 1.0)
    assert "| gen | 100.0% | 100.0% | 100.0% | 0.0% |" in hull_markdown(results)
    # a table without the column adds nothing
    bare = tmp_path / "bare.csv"
    pd.DataFrame({"material_id": ["on"], "cif": [""]}).to_csv(bare, index=False)
    fresh = {"gen": {"per_composition": [_record("on", [0.1])], "ks": [1], "relaxed": True,
                     "n_compositions": 1}}
    assert mark_hull_targets(fresh, str(bare)) is None and hull_markdown(fresh) == ""

"""Behaviour of the CSP benchmark on a tiny structure table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.cif import CifWriter

from xtalloop.benchmark import run_csp_benchmark, write_results
from xtalloop.benchmark.csp import ARITY_LABELS
from xtalloop.errors import DataError
from xtalloop.generators.base import Candidate
from xtalloop.generators.prototype_substitution import PrototypeSubstitutionGenerator


def fcc_primitive(a: float) -> Lattice:
    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def structures() -> dict[str, Structure]:
    """Ground truths of arity 1, 2 and 3 (Cu, NaCl, ZnS, CuZn, SrTiO3)."""
    srtio3 = Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    return {
        "v-Cu": Structure(fcc_primitive(3.61), ["Cu"], [[0, 0, 0]]),
        "v-NaCl": Structure(fcc_primitive(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "v-ZnS": Structure(fcc_primitive(5.41), ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "v-CuZn": Structure(Lattice.cubic(2.95), ["Cu", "Zn"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "v-SrTiO3": srtio3,
    }


@pytest.fixture
def val_csv(tmp_path: Path) -> str:
    """A table shaped like the shared data, with a leading unnamed index column."""
    rows = []
    for material_id, s in structures().items():
        comp = s.composition
        rows.append(
            {
                "material_id": material_id,
                "cif": str(CifWriter(s)),
                "nsites": len(s),
                "n_elements": len(comp),
                "reduced_formula": comp.reduced_formula,
            }
        )
    path = tmp_path / "val.csv"
    pd.DataFrame(rows).to_csv(path)
    return str(path)


@dataclass
class NothingGenerator:
    name: str = "nothing"

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        return []


@dataclass
class RecordingGenerator:
    """Returns ``copies`` rocksalt NaCl structures, recording what it was asked."""

    name: str = "recording"
    copies: int = 3

    def __post_init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        self.calls.append((composition.formula, n, seed))
        s = structures()["v-NaCl"]
        return [Candidate(s.copy(), self.name, seed, i) for i in range(self.copies)]


def test_own_structures_as_templates_match_at_k1(val_csv):
    generator = PrototypeSubstitutionGenerator(reference_csv=val_csv)
    result = run_csp_benchmark(val_csv, generator, n_compositions=5, ks=(1, 3), progress=False)
    assert result["n_compositions"] == 5
    assert result["match_rate"] == {"1": 1.0, "3": 1.0}
    assert result["rmse"]["1"] == pytest.approx(0.0, abs=1e-3)
    assert set(result["per_arity"]) == set(ARITY_LABELS)
    assert {label: v["n"] for label, v in result["per_arity"].items()} == {
        "1": 1,
        "2": 3,
        "3": 1,
        "4": 0,
        "5+": 0,
    }
    assert result["per_arity"]["2"]["match_rate"]["1"] == 1.0
    assert result["per_arity"]["4"]["match_rate"]["1"] is None
    assert result["n_zero_candidates"] == 0
    assert result["time_per_structure_s"] > 0
    assert result["generator"] == "prototype_substitution"
    assert result["generator_settings"]["reference_csv"] == val_csv
    json.dumps(result, allow_nan=False)


def test_generator_with_no_candidates_scores_zero(val_csv):
    result = run_csp_benchmark(val_csv, NothingGenerator(), n_compositions=5, progress=False)
    assert result["match_rate"] == {"1": 0.0, "20": 0.0}
    assert result["rmse"] == {"1": None, "20": None}
    assert set(result["per_arity"]) == set(ARITY_LABELS)
    for label in ("1", "2", "3"):
        assert result["per_arity"][label]["match_rate"] == {"1": 0.0, "20": 0.0}
    assert result["n_zero_candidates"] == 5
    assert result["n_generated"] == 0
    assert result["time_per_structure_s"] is None
    json.dumps(result, allow_nan=False)


def test_generator_sees_only_reduced_composition_and_k_max(val_csv):
    generator = RecordingGenerator()
    result = run_csp_benchmark(val_csv, generator, n_compositions=5, ks=(2, 1), progress=False)
    assert result["ks"] == [1, 2]
    assert sorted(formula for formula, _, _ in generator.calls) == sorted(
        s.composition.reduced_composition.formula for s in structures().values()
    )
    assert {n for _, n, _ in generator.calls} == {2}
    # three candidates offered, only the first k_max = 2 are judged
    assert {r["n_candidates"] for r in result["per_composition"]} == {2}
    # only the NaCl row is matched by rocksalt NaCl
    assert result["match_rate"]["1"] == pytest.approx(1 / 5)
    assert result["per_arity"]["2"]["match_rate"]["1"] == pytest.approx(1 / 3)


def test_sampling_is_reproducible_and_relax_is_applied(val_csv):
    relaxed_batches = []

    def relax(batch: list[Structure]) -> list[Structure]:
        relaxed_batches.append(len(batch))
        return [s.copy() for s in batch]

    runs = [
        run_csp_benchmark(
            val_csv, RecordingGenerator(), n_compositions=3, ks=(1,), seed=7, relax=relax,
            progress=False,
        )
        for _ in range(2)
    ]
    ids = [[r["material_id"] for r in run["per_composition"]] for run in runs]
    assert ids[0] == ids[1] and len(set(ids[0])) == 3
    assert relaxed_batches == [1] * 6
    assert runs[0]["relaxed"] is True
    everything = run_csp_benchmark(val_csv, NothingGenerator(), 50, progress=False)
    assert everything["n_compositions"] == 5


def test_write_results(val_csv, tmp_path):
    result = run_csp_benchmark(val_csv, RecordingGenerator(), 5, ks=(1, 2), progress=False)
    json_path, png_path = write_results(result, tmp_path / "out")
    assert json.loads(json_path.read_text()) == result
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_without_cif_column_is_a_data_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("material_id,formula\nmp-1,NaCl\n")
    with pytest.raises(DataError, match="no 'cif' column"):
        run_csp_benchmark(path, NothingGenerator(), 1, progress=False)


def test_a_collapsed_cell_matches_nothing_and_does_not_hang_the_matcher():
    """A collapsed cell (0.4 Å³/atom, as an undertrained model can sample; pymatgen's Niggli
    reduction looped for ever on one) is scored as no match without reaching the matcher."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from xtalloop.benchmark.csp import MATCHER_SETTINGS, _rms, degenerate

    truth = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    flat = Lattice.from_parameters(11.6, 11.4, 10.4, 119.19, 169.68, 71.13)
    collapsed = Structure(flat, ["K", "K", "Cl", "Cl"],
                          [[0, 0, 0], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.7, 0.1, 0.9]])
    assert collapsed.volume / len(collapsed) < 1.0
    assert degenerate(collapsed) and not degenerate(truth)
    assert _rms(StructureMatcher(**MATCHER_SETTINGS), collapsed, truth) is None
    assert _rms(StructureMatcher(**MATCHER_SETTINGS), truth.copy(), truth) == pytest.approx(0)

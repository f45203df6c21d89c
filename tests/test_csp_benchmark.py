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
from xtalloop.benchmark.csp_scoring import RANK_WINDOW, pair_hit, ranked_hit, summarise
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

    def relax(batch: list[Structure]) -> tuple[list[Structure], list[float]]:
        relaxed_batches.append(len(batch))
        return [s.copy() for s in batch], [-1.0] * len(batch)

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
    assert runs[0]["per_composition"][0]["energy_per_atom"] == [-1.0]
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

    from xtalloop.benchmark.csp import MATCHER_SETTINGS
    from xtalloop.benchmark.csp_scoring import degenerate, rms_distance

    truth = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    flat = Lattice.from_parameters(11.6, 11.4, 10.4, 119.19, 169.68, 71.13)
    collapsed = Structure(flat, ["K", "K", "Cl", "Cl"],
                          [[0, 0, 0], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.7, 0.1, 0.9]])
    assert collapsed.volume / len(collapsed) < 1.0
    assert degenerate(collapsed) and not degenerate(truth)
    matcher = StructureMatcher(**MATCHER_SETTINGS)
    assert rms_distance(matcher, collapsed, truth) is None
    assert rms_distance(matcher, truth.copy(), truth) == pytest.approx(0)


@dataclass
class TwoPolymorphs:
    """Rocksalt then CsCl-type (B2) of the target's two elements: at most one matches."""

    name: str = "two polymorphs"

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        a, b = (str(el) for el in composition.elements)
        pair = [Structure(fcc_primitive(5.64), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]),
                Structure(Lattice.cubic(3.0), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])]
        return [Candidate(s, self.name, seed, i) for i, s in enumerate(pair[:n])]


def test_ranked_at_1_follows_the_lowest_energy_candidate(tmp_path):
    """Targets: rocksalt NaCl and B2 CuZn; each gets one right and one wrong polymorph.

    With rocksalt lowest in energy, the NaCl pick is right and the CuZn pick wrong; a failed
    relaxation (None) never ranks; without relaxation ranked@1 is not reported.
    """
    rows = [{"material_id": mid, "cif": str(CifWriter(structures()[mid]))}
            for mid in ("v-NaCl", "v-CuZn")]
    data = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(data, index=False)

    def relax_with(energies):
        return lambda batch: ([s.copy() for s in batch], list(energies))

    def run(energies):
        return run_csp_benchmark(data, TwoPolymorphs(), 2, ks=(1, 2), progress=False,
                                 relax=relax_with(energies) if energies else None)

    rocksalt_low = run([-2.0, -1.0])
    assert rocksalt_low["match_rate"] == {"1": 0.5, "2": 1.0}
    assert rocksalt_low["ranked_match_rate"] == {"1": 0.5}
    by_id = {r["material_id"]: r for r in rocksalt_low["per_composition"]}
    assert by_id["v-NaCl"]["energy_per_atom"] == [-2.0, -1.0]
    assert by_id["v-NaCl"]["ranked_match"] is True and by_id["v-CuZn"]["ranked_match"] is False
    assert rocksalt_low["per_arity"]["2"]["ranked_match_rate"] == {"1": 0.5}
    assert rocksalt_low["per_arity"]["3"]["ranked_match_rate"] == {"1": None}  # no ternary
    # a failed relaxation (NaN or None) never ranks: B2 is picked for both rows
    assert run([float("nan"), -1.0])["ranked_match_rate"] == {"1": 0.5}
    assert run([None, -1.0])["ranked_match_rate"] == {"1": 0.5}
    # B2 lowest: CuZn picked right, NaCl wrong; no energy at all: no pick
    b2_low = run([-1.0, -2.0])
    assert b2_low["ranked_match_rate"] == {"1": 0.5}
    assert [r["ranked_match"] for r in b2_low["per_composition"]] == [
        r["material_id"] == "v-CuZn" for r in b2_low["per_composition"]]
    assert run([None, None])["ranked_match_rate"] == {"1": 0.0}
    unrelaxed = run(None)
    assert unrelaxed["ranked_match_rate"] == {"1": None} and not unrelaxed["relaxed"]
    assert unrelaxed["per_composition"][0]["energy_per_atom"] is None
    json.dumps(rocksalt_low, allow_nan=False)


def test_a_run_without_progress_bar_reports_each_composition_and_the_running_figures(tmp_path):
    """One line per composition: its outcome, the figures so far and the time left."""
    rows = [{"material_id": mid, "cif": str(CifWriter(structures()[mid]))}
            for mid in ("v-NaCl", "v-CuZn")]
    data = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    lines: list[str] = []
    run_csp_benchmark(data, TwoPolymorphs(), 2, ks=(1, 2), progress=False, report=lines.append,
                      relax=lambda batch: ([s.copy() for s in batch], [-2.0, -1.0]))
    assert len(lines) == 2
    by_formula = {line.split()[1].rstrip(":"): line for line in lines}
    assert "match@2 yes, ranked@1 yes" in by_formula["NaCl"]
    assert "match@2 yes, ranked@1 no" in by_formula["ZnCu"]
    assert lines[0].startswith("1/2 ") and "so far match@2 100.0 %, ranked@1 100.0 %" in lines[0]
    assert lines[1].startswith("2/2 ") and "so far match@2 100.0 %, ranked@1 50.0 %" in lines[1]
    assert lines[1].endswith("0 min left")


def test_relax_returning_the_wrong_number_of_energies_is_refused(val_csv):
    def relax(batch):
        return batch, []

    with pytest.raises(ValueError, match="0 energies for 3 candidates"):
        run_csp_benchmark(val_csv, RecordingGenerator(), 1, ks=(3,), relax=relax,
                          progress=False)


def test_unreadable_targets_are_skipped_and_counted(tmp_path, val_csv):
    table = pd.read_csv(val_csv, index_col=0)
    table.loc[table["material_id"] == "v-Cu", "cif"] = "data_broken\n_cell_length_a 3\n"
    partly = tmp_path / "partly.csv"
    table.to_csv(partly, index=False)
    result = run_csp_benchmark(partly, RecordingGenerator(), 5, progress=False)
    assert result["unreadable_targets"] == ["v-Cu"] and result["n_compositions"] == 4
    table["cif"] = "not a cif"
    table.to_csv(partly, index=False)
    with pytest.raises(DataError, match="no usable target in .*none of the 5 sampled rows"):
        run_csp_benchmark(partly, RecordingGenerator(), 5, progress=False)


def shared_shape(rows: dict[str, Structure], nsites: bool = True) -> pd.DataFrame:
    """Rows shaped like MP-20 (with ``nsites``) or like MPTS-52 val (without)."""
    return pd.DataFrame([
        {"material_id": mid, "cif": str(CifWriter(s))} | ({"nsites": len(s)} if nsites else {})
        for mid, s in rows.items()
    ])


def test_defaults_follow_the_evaluated_data_set(tmp_path):
    from xtalloop.benchmark.references import default_reference_csv, largest_cell
    from xtalloop.errors import ConfigError

    for name in ("mp_20", "mpts_52"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_partial.csv.gz").write_bytes(b"")
    assert default_reference_csv(tmp_path / "mpts_52" / "val.csv.gz") == \
        tmp_path / "mpts_52" / "train_partial.csv.gz"
    assert default_reference_csv(tmp_path / "mp_20" / "val.csv.gz") == \
        tmp_path / "mp_20" / "train_partial.csv.gz"
    with pytest.raises(ConfigError, match="no training split .* pass --reference-csv"):
        default_reference_csv(tmp_path / "elsewhere.csv")

    rows = structures()
    big = rows["v-SrTiO3"].copy()
    big.make_supercell([2, 2, 2])  # 40 atoms
    rows["v-big"] = big
    assert largest_cell(shared_shape(rows), "x") == 40
    assert largest_cell(shared_shape(rows, nsites=False), "x") == 40  # from the CIFs' formulas
    broken = shared_shape(rows, nsites=False).assign(cif="garbage")
    with pytest.raises(DataError, match="no usable target in x"):
        largest_cell(broken, "x")


def test_templates_that_are_targets_are_refused(tmp_path):
    from xtalloop.benchmark.references import prepare_templates
    from xtalloop.generators.prototype_substitution import read_structure_csv

    rows = structures()
    data = shared_shape({mid: rows[mid] for mid in ("v-NaCl", "v-ZnS")})
    data_csv = tmp_path / "val.csv"
    data.to_csv(data_csv, index=False)
    reference = shared_shape({"t-" + mid: s for mid, s in rows.items()}
                             | {"v-NaCl": rows["v-NaCl"]})
    reference_csv = tmp_path / "train.csv"
    reference.to_csv(reference_csv, index=False)

    templates = prepare_templates(reference_csv, data_csv, data, tmp_path / "out")
    assert (templates.n_rows, templates.n_refused, templates.n_unreadable) == (6, 1, 0)
    assert templates.path == tmp_path / "out" / "templates.csv.gz"
    assert "v-NaCl" not in set(read_structure_csv(templates.path)["material_id"])
    assert templates.n_used == len(read_structure_csv(templates.path)) == 5

    clean = prepare_templates(tmp_path / "train.csv", data_csv, data.iloc[1:], tmp_path / "o2")
    assert clean.path == reference_csv and clean.n_refused == 0  # nothing to drop, no copy

    with pytest.raises(DataError, match="^templates include the targets"):
        prepare_templates(data_csv, data_csv, data, tmp_path / "out")
    pd.concat([reference, data]).to_csv(reference_csv, index=False)
    with pytest.raises(DataError, match="^templates include the targets"):
        prepare_templates(reference_csv, data_csv, data, tmp_path / "out")


def test_corrupt_templates_are_skipped_and_counted_or_refused(tmp_path):
    from xtalloop.benchmark.references import prepare_templates

    rows = structures()
    data = shared_shape({"v-NaCl": rows["v-NaCl"]})
    reference = shared_shape({"t-" + mid: s for mid, s in rows.items()})
    reference["reduced_formula"] = [s.composition.reduced_formula for s in rows.values()]
    reference.loc[:1, "cif"] = ["not a cif", "data_x\n_cell_length_a 3\n"]
    reference.to_csv(tmp_path / "train.csv", index=False)
    templates = prepare_templates(tmp_path / "train.csv", tmp_path / "val.csv", data,
                                  tmp_path / "out")
    assert (templates.n_unreadable, templates.n_used) == (2, 3)

    # every CIF broken (one truncated after its first atom-site header): no template at all
    truncated = str(CifWriter(rows["v-NaCl"]))
    reference["cif"] = "garbage"
    reference.loc[0, "cif"] = truncated[: truncated.index("_atom_site_type_symbol") + 30]
    reference.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match="^no usable template in .*train.csv"):
        prepare_templates(tmp_path / "train.csv", tmp_path / "val.csv", data, tmp_path / "out")


def test_the_pick_within_the_energy_window_follows_the_generator_order():
    """Lowest energy first; within RANK_WINDOW of it, the generator's earlier candidate."""
    near = {"energy_per_atom": [0.010, 0.0, None], "rms": [0.1, None, 0.2]}
    assert not ranked_hit(near)  # the lowest-energy candidate (second) does not match
    assert ranked_hit(near, RANK_WINDOW)  # the first lies 10 meV/atom above: it is picked
    far = {"energy_per_atom": [RANK_WINDOW + 0.01, 0.0], "rms": [0.1, None]}
    assert not ranked_hit(far, RANK_WINDOW)
    assert not ranked_hit({"energy_per_atom": [None, None], "rms": [0.1, 0.1]}, RANK_WINDOW)


def test_the_rerank_takes_one_structure_of_each_kind_in_energy_order():
    """Equal structures (StructureMatcher's defaults) count once, the lowest-energy one kept."""
    from xtalloop.benchmark.relax import _distinct

    fcc = Structure(fcc_primitive(3.6), ["Cu"], [[0, 0, 0]])
    bcc = Structure(Lattice.cubic(2.87), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structures = [bcc, fcc, fcc.copy(), bcc.copy()]
    assert _distinct([2, 0, 1, 3], structures) == [2, 0]
    assert _distinct([3], structures) == [3] and _distinct([], structures) == []


def test_the_pair_is_the_generators_first_relaxed_candidate_and_the_lowest():
    first = {"energy_per_atom": [-1.0, -1.2, -1.1], "rms": [0.1, None, None]}
    lowest = {"energy_per_atom": [-1.0, -1.2, -1.1], "rms": [None, 0.1, None]}
    third = {"energy_per_atom": [-1.0, -1.2, -1.1], "rms": [None, None, 0.1]}
    unrelaxed_first = {"energy_per_atom": [None, -1.1, -1.2], "rms": [None, 0.2, None]}
    assert pair_hit(first) and pair_hit(lowest) and not pair_hit(third)
    # a candidate whose relaxation failed is no pick: the first that relaxed (second) is
    assert pair_hit(unrelaxed_first)
    rows = [dict(r, n_candidates=3) for r in (first, lowest, third)]
    assert summarise(rows, [1], ranked=True)["pair_match_rate"]["2"] == pytest.approx(2 / 3)
    assert summarise(rows, [1], ranked=False)["pair_match_rate"]["2"] is None


def test_rerank_first_relaxes_the_generators_first_candidate_again_whatever_its_energy():
    from xtalloop.benchmark.relax import make_relax

    fcc = Structure(fcc_primitive(3.6), ["Cu"], [[0, 0, 0]])
    bcc = Structure(Lattice.cubic(2.87), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    # EMT puts fcc Cu below bcc: the second model's one slot goes to fcc, unless the
    # generator's first candidate (bcc here) is kept for it
    _, energies = make_relax("emt", "cpu", 0.05, 50, rerank="emt", rerank_top=1)([bcc, fcc])
    assert energies[0] is None and energies[1] is not None
    _, energies = make_relax("emt", "cpu", 0.05, 50, rerank="emt", rerank_top=1,
                             rerank_first=True)([bcc, fcc])
    assert energies[0] is not None and energies[1] is None

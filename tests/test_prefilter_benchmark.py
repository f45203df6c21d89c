"""``xtalloop benchmark prefilter``: metrics on hand-made numbers, a tiny EMT run, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import fcc, rocksalt, zincblende
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.cif import CifWriter
from typer.testing import CliRunner

from xtalloop.benchmark.prefilter import run_prefilter_benchmark
from xtalloop.benchmark.prefilter_metrics import (
    FormationHull,
    classification,
    error_stats,
    mp2020_corrected,
    polymorph_ordering,
)
from xtalloop.cli import app
from xtalloop.models.energy_model import load_energy_model
from xtalloop.rankers.ml_ranker import MLRanker


def test_classification_on_a_known_confusion() -> None:
    # truth: 4 stable (<= 0), 6 unstable; predicted stable: 3 right, 2 wrong
    true = [-0.1, 0.0, -0.2, -0.05, 0.1, 0.2, 0.3, 0.05, 0.4, 0.5]
    pred = [-0.1, -0.1, 0.0, 0.2, -0.01, 0.0, 0.3, 0.05, 0.4, 0.5]
    r = classification(pred, true)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 2, 1, 4)
    assert r["precision"] == pytest.approx(3 / 5)
    assert r["recall"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["prevalence"] == pytest.approx(0.4)
    assert r["daf"] == pytest.approx(0.6 / 0.4)
    none = classification([1.0, 1.0], [-1.0, 1.0])  # nothing predicted stable
    assert none["precision"] is None and none["daf"] is None and none["recall"] == 0


def test_error_stats_and_polymorph_ordering() -> None:
    e = error_stats([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])
    assert e["mae"] == pytest.approx(0.5) and e["median_ae"] == pytest.approx(0.5)
    assert e["mean_error"] == pytest.approx(0.5 / 3)
    groups = [[(0.0, 5.0), (0.1, 5.2), (0.2, 5.1)],  # pairs: right, right, wrong; top-1 right
              [(0.0, 1.0), (0.005, 0.9)],           # wrong pair, top-1 wrong; a tie at 0.01
              [(0.3, 0.0)]]                         # one structure: not counted
    r = polymorph_ordering(groups)
    assert (r["n_compositions"], r["n_pairs"]) == (2, 4)
    assert r["pair_accuracy"] == pytest.approx(2 / 4) and r["top1"] == pytest.approx(1 / 2)
    gapped = polymorph_ordering(groups, min_gap=0.01)
    assert gapped["n_pairs"] == 3 and gapped["pair_accuracy"] == pytest.approx(2 / 3)


def test_formation_hull() -> None:
    hull = FormationHull([(Composition("NaCl"), -2.0), (Composition("NaCl2"), -1.0)])
    assert hull.e_above_hull(Composition("NaCl"), -1.5) == pytest.approx(0.5)
    assert hull.e_above_hull(Composition("NaCl"), -2.2) == pytest.approx(-0.2)
    # NaCl2 lies above the NaCl–Cl tie line at x(Cl)=2/3: -2 * (1/3)/(1/2) = -4/3
    assert hull.e_above_hull(Composition("NaCl2"), -1.0) == pytest.approx(1 / 3)
    assert hull.e_above_hull(Composition("KCl"), -0.1) == pytest.approx(-0.1)  # no phases
    assert mp2020_corrected(Composition("Fe2O3")) and not mp2020_corrected(Composition("CuAl"))


def _write(path: Path, rows: list[tuple[str, Structure, float]]) -> None:
    pd.DataFrame({
        "material_id": [r[0] for r in rows],
        "cif": [str(CifWriter(r[1])) for r in rows],
        "reduced_formula": [r[1].composition.reduced_formula for r in rows],
        "formation_energy_per_atom": [r[2] for r in rows],
    }).to_csv(path, index=False)


@pytest.fixture(scope="module")
def tiny_mp20(tmp_path_factory) -> Path:
    """An MP-20 look-alike of EMT elements: two CuAl polymorphs, CuNi, AgAu."""
    folder = tmp_path_factory.mktemp("data") / "mp_20"
    folder.mkdir()
    cscl = Structure(Lattice.cubic(2.95), ["Cu", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    _write(folder / "train_partial.csv.gz", [
        ("mp-1", cscl, -0.20), ("mp-2", rocksalt("Cu", "Al", 5.2), 0.30),
        ("mp-3", zincblende("Cu", "Al", 5.6), 0.50),
    ])
    _write(folder / "val.csv.gz", [
        ("mp-4", Structure(Lattice.cubic(3.0), ["Cu", "Ni"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
         -0.01),
        ("mp-5", rocksalt("Ag", "Au", 5.9), 0.05),
        ("mp-6", Structure(fcc(3.6), ["Cu"], [[0, 0, 0]]), 0.0),
    ])
    return folder


def test_emt_run_on_a_tiny_table(tiny_mp20: Path) -> None:
    result = run_prefilter_benchmark(["emt"], [tiny_mp20 / "val.csv.gz"], n=10, seed=0,
                                     mp20_dir=tiny_mp20, n_polymorphs=5)
    r = result["models"]["emt"]
    table = r["tables"]["mp_20/val"]
    assert table["n_evaluated"] == 3 and table["n_refused"] == 0
    model = load_energy_model("emt")
    refs = MLRanker(model="emt", progress=False).reference_phases(["Cu", "Ni", "Ag", "Au"])
    mu = {ref.element: ref.energy_per_atom for ref in refs}
    for rec in table["records"]:
        s = Structure.from_str(
            pd.read_csv(tiny_mp20 / "val.csv.gz").set_index("material_id").loc[rec["id"], "cif"],
            fmt="cif")
        e = model.predict([s.to_ase_atoms()])[0].energy / len(s)
        expected = e - sum(x * mu[el.symbol]
                           for el, x in s.composition.fractional_composition.items())
        assert rec["pred_e_form"] == pytest.approx(expected, abs=1e-6)
        # the val rows are left out of their own hull: nothing of CuNi, AgAu in train
        assert rec["true_e_hull"] == pytest.approx(rec["true_e_form"])
    # one composition with three structures, ordered by EMT against the table's energies
    assert r["polymorphs"]["n_compositions"] == 1 and r["polymorphs"]["n_pairs"] == 3
    assert r["throughput"]["structures"] == 3 and r["throughput"]["structures_per_s"] > 0


def test_cli_writes_the_table(tiny_mp20: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["benchmark", "prefilter", "--model", "emt", "--data",
                                   str(tiny_mp20 / "val.csv.gz"), "--mp20-dir", str(tiny_mp20),
                                   "--n", "2", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["tables"]["mp_20/val"]["n_sampled"] == 2
    assert "| emt | mp_20/val | 2 |" in (out / "results.md").read_text()


@pytest.mark.parametrize("spec", ["nonsense", "missing.mace.json"])
def test_cli_bad_model_is_one_line(spec: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["benchmark", "prefilter", "--model", spec, "--data",
                                   str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2  # (importing MACE prints a notice on stdout: not ours)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")


def test_cli_missing_table_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["benchmark", "prefilter", "--model", "emt", "--data",
                                   str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stderr.strip().startswith("error:")
    assert len(res.stderr.strip().splitlines()) == 1 and "x.csv" in res.stderr

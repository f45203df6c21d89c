"""``benchmarks/csp_journal.py``: a relaxed run's figures and picks plot from its journal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "csp_journal.py"


def record(material_id: str, arity: str, rms: list, energies: list) -> dict:
    return {"material_id": material_id, "formula": "X", "arity": arity, "n_candidates": len(rms),
            "rms": rms, "energy_per_atom": energies, "error": None, "wall_s": 1.0}


def test_the_journal_gives_the_picks_per_arity_and_a_plot(tmp_path):
    data = tmp_path / "val.csv"
    pd.DataFrame({"material_id": ["a", "b", "c"], "e_above_hull": [0.0, 0.0, 0.1]}).to_csv(data)
    journal = tmp_path / "journal.jsonl"
    rows = [
        record("a", "2", [0.1, None, None], [-1.0, -1.2, -1.1]),  # the generator's first only
        record("b", "2", [None, 0.1, None], [-1.0, -1.2, -1.1]),  # the lowest only
        record("c", "3", [None, None, 0.1], [-1.0, -1.2, -1.1]),  # neither
    ]
    journal.write_text("\n".join(json.dumps(r) for r in [
        {"format": "xtalloop-csp-journal-1", "key": {"data_csv": str(data), "k_max": 3,
                                                     "generator": "g", "relax": "emt"}},
        *rows]) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(journal), "--plot",
                          str(tmp_path / "picks.png")], capture_output=True, text=True,
                         check=True)
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in out.stdout.splitlines() if line.startswith("| ")}
    # n, match@1, match@3, ranked@1, ±25 meV, first+lowest@2, match@2
    assert lines["2"] == ["2", "50.0 %", "100.0 %", "50.0 %", "50.0 %", "100.0 %", "100.0 %"]
    assert lines["all"][5] == "66.7 %"
    assert (tmp_path / "picks.png").stat().st_size > 10_000

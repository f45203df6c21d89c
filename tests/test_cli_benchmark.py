"""``xtalloop benchmark csp``: several generators, one run, the same compositions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import fcc, rocksalt, zincblende
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from typer.testing import CliRunner

from xtalloop.cli import app
from xtalloop.cli_benchmark import parse_ks
from xtalloop.errors import ConfigError
from xtalloop.generators.diffusion import (
    DiffusionConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    structures_to_dataset,
    train,
)


def tiny_structures() -> dict[str, Structure]:
    """Five small crystals of one, two and three elements."""
    return {
        "t-NaCl": rocksalt("Na", "Cl", 5.64),
        "t-KCl": rocksalt("K", "Cl", 6.29),
        "t-ZnS": zincblende("Zn", "S", 5.41),
        "t-Cu": Structure(fcc(3.61), ["Cu"], [[0, 0, 0]]),
        "t-SrTiO3": Structure(
            Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        ),
    }


def shared_rows(structures: dict[str, Structure]) -> pd.DataFrame:
    """Rows shaped like the shared data."""
    return pd.DataFrame([
        {"material_id": mid, "cif": str(CifWriter(s)), "nsites": len(s),
         "n_elements": len(s.composition), "reduced_formula": s.composition.reduced_formula}
        for mid, s in structures.items()
    ])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with ``tiny.csv`` and ``templates.csv``: the same crystals under other ids."""
    folder = tmp_path_factory.mktemp("cli_benchmark")
    shared_rows(tiny_structures()).to_csv(folder / "tiny.csv")
    shared_rows({"ref" + mid[1:]: s for mid, s in tiny_structures().items()}).to_csv(
        folder / "templates.csv")
    return folder


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    """A diffusion checkpoint trained for a second on the tiny table."""
    config = DiffusionConfig(
        model=ModelConfig(hidden_dim=16, n_layers=1, n_frequencies=2, time_dim=8),
        noise=NoiseConfig(timesteps=20),
        train=TrainConfig(epochs=1, batch_size=8, save_every=0, device="cpu"),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config, structures_to_dataset(list(tiny_structures().values())),
                     work / "tiny.pt", progress=False)
    finally:
        torch.set_num_threads(threads)


def invoke(*args: str):
    return CliRunner().invoke(app, ["benchmark", "csp", *args, "--no-progress"])


def test_two_generators_in_one_run(work):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "xtalloop.cli", "benchmark", "csp", "--data", "tiny.csv",
         "--n", "5", "--k", "1,2", "--generator", "random_symmetric",
         "--generator", "prototype_substitution", "--reference-csv", "templates.csv",
         "--max-atoms", "8", "--out", "bench", "--no-progress"],
        capture_output=True, text=True, cwd=work, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "| random_symmetric |" in out.stdout and "| prototype_substitution |" in out.stdout
    assert "warning" not in out.stderr
    assert "templates: 5 of 5 rows of templates.csv, cells up to 8 atoms" in out.stdout

    bench = work / "bench"
    combined = json.loads((bench / "results.json").read_text())
    assert list(combined["generators"]) == ["random_symmetric", "prototype_substitution"]
    assert combined["ks"] == [1, 2] and len(combined["material_ids"]) == 5
    assert combined["max_atoms"] == 8 and combined["templates"]["n_refused"] == 0
    table = (bench / "results.md").read_text()
    assert "| match@1 | match@2 |" in table and "| ranked@1 |" in table
    # ranked@1, its window and the pair, for both generators: not relaxed
    assert table.count("n/a") == 6
    per_generator = {
        name: json.loads((bench / name / "results.json").read_text())
        for name in combined["generators"]
    }
    for result in per_generator.values():
        assert [r["material_id"] for r in result["per_composition"]] == combined["material_ids"]
        assert (bench / result["generator"] / "match_rate.png").is_file()
    # substitution into the table itself finds every answer
    assert combined["generators"]["prototype_substitution"]["match_rate"]["1"] == 1.0
    assert combined["generators"]["random_symmetric"]["per_arity"]["3"]["n"] == 1


def l12(a_el: str, b_el: str, a: float) -> Structure:
    """Cu3Au-type (L1_2) A3B."""
    return Structure(Lattice.cubic(a), [b_el, a_el, a_el, a_el],
                     [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def emt_tables(folder: Path) -> Path:
    """``mp_20/val.csv`` (Cu, Ni3Al, a corrupt row) and its ``train_partial.csv`` beside it
    (Fe, Ag, Cu3Au, the val Cu under its own id, a corrupt row); returns val's path."""
    (folder / "mp_20").mkdir()
    val = folder / "mp_20" / "val.csv"
    corrupt = {"cif": "garbage", "nsites": 2, "reduced_formula": "NaCl"}
    rows = shared_rows({"v-Cu": Structure(fcc(3.61), ["Cu"], [[0, 0, 0]]),
                        "v-Ni3Al": l12("Ni", "Al", 3.57)}).assign(e_above_hull=[0.0, 0.02])
    pd.concat([rows, pd.DataFrame([corrupt | {"material_id": "v-bad"}])]).to_csv(val)
    rows = shared_rows({"t-Fe": Structure(Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]]),
                        "t-Ag": Structure(fcc(4.09), ["Ag"], [[0, 0, 0]]),
                        "t-Cu3Au": l12("Cu", "Au", 3.75),
                        "v-Cu": Structure(fcc(3.61), ["Cu"], [[0, 0, 0]])})  # a target
    pd.concat([rows, pd.DataFrame([corrupt | {"material_id": "t-bad"}])]).to_csv(
        folder / "mp_20" / "train_partial.csv")
    return val


def test_defaults_and_ranked_at_1_with_emt(tmp_path):
    """Templates from the train split beside --data (a target's own row refused), cells up
    to the data's largest, candidates relaxed with EMT and the lowest-energy one picked.

    Cu gets fcc (from Ag) and bcc (from Fe) candidates; EMT puts fcc lower, so the pick
    matches even though bcc comes first among the candidates. A corrupt row in each table
    is skipped with a counted warning.
    """
    val = emt_tables(tmp_path)
    out = tmp_path / "bench"
    result = invoke("--data", str(val), "--n", "3", "--k", "1,2",
                    "--generator", "prototype_substitution", "--relax", "emt",
                    "--relax-steps", "100", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "refused 1 templates whose material_id is a row of val.csv" in result.stderr
    assert "skipped 1 template rows with an unreadable CIF" in result.stderr
    assert "skipped 1 of 3 sampled rows of val.csv with an unreadable CIF" in result.stderr
    combined = json.loads((out / "results.json").read_text())
    assert combined["max_atoms"] == 4  # Ni3Al's cell
    assert combined["templates"] | {"used_csv": None} == {
        "reference_csv": str(tmp_path / "mp_20" / "train_partial.csv"), "used_csv": None,
        "n_rows": 5, "n_refused": 1, "n_unreadable": 1}
    assert combined["unreadable_targets"] == ["v-bad"] and combined["n_compositions"] == 2
    summary = combined["generators"]["prototype_substitution"]
    assert summary["generator_settings"]["max_atoms"] == 4
    assert summary["relaxed"] and summary["ranked_match_rate"] == {"1": 1.0}
    records = json.loads((out / "prototype_substitution" / "results.json").read_text())
    cu = next(r for r in records["per_composition"] if r["material_id"] == "v-Cu")
    assert cu["n_candidates"] == 2 and cu["ranked_match"] is True
    assert cu["rms"][0] is None and cu["rms"][1] is not None  # bcc first, fcc second
    assert cu["energy_per_atom"][1] < cu["energy_per_atom"][0]
    assert summary["match_rate"] == {"1": 0.5, "2": 1.0}
    assert "| ranked@1 |" in result.stdout and "| 100.0% |" in result.stdout
    # ranked@1 split by the target's energy above the hull (Cu on it, Ni3Al 20 meV above)
    assert (summary["on_hull"]["n"], summary["above_hull"]["n"]) == (1, 1)
    assert summary["on_hull"]["ranked_match_rate"] == {"1": 1.0}
    assert "Targets on the hull (≤ 1 meV/atom above it in the table, n=1)" in result.stdout


def test_the_prefilters_rerank_picks_among_the_screens_lowest_distinct(tmp_path):
    """--rerank relaxes the --rerank-top lowest distinct structures again; only those rank.

    Cu gets bcc first and fcc second; EMT puts fcc lower. With one structure re-ranked, only
    fcc has an energy (the pick stays right); the run's key names the re-rank.
    """
    val = emt_tables(tmp_path)
    out = tmp_path / "bench"
    result = invoke("--data", str(val), "--n", "3", "--k", "1,2",
                    "--generator", "prototype_substitution", "--relax", "emt", "--rerank", "emt",
                    "--rerank-top", "1", "--relax-steps", "100", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads((out / "prototype_substitution" / "results.json").read_text())
    cu = next(r for r in records["per_composition"] if r["material_id"] == "v-Cu")
    assert cu["energy_per_atom"][0] is None and cu["energy_per_atom"][1] is not None
    assert cu["ranked_match"] is True
    combined = json.loads((out / "results.json").read_text())
    assert combined["rerank"] == {"model": "emt", "top": 1}
    assert "the 1 lowest distinct again with emt" in result.stdout
    header = json.loads((out / "prototype_substitution" / "journal.jsonl").read_text()
                        .splitlines()[0])
    assert header["key"]["rerank"] == "emt" and header["key"]["rerank_top"] == 1
    # the generator's first (bcc) has no energy of the second model: no pair is reported
    assert records["pair_match_rate"] == {"2": None}
    # with --rerank-first it has one, and the pair is the loop's
    first = tmp_path / "first"
    result = invoke("--data", str(val), "--n", "3", "--k", "1,2",
                    "--generator", "prototype_substitution", "--relax", "emt", "--rerank", "emt",
                    "--rerank-top", "1", "--rerank-first", "--relax-steps", "100",
                    "--out", str(first))
    assert result.exit_code == 0, result.output
    records = json.loads((first / "prototype_substitution" / "results.json").read_text())
    cu = next(r for r in records["per_composition"] if r["material_id"] == "v-Cu")
    assert cu["energy_per_atom"][0] is not None and cu["energy_per_atom"][1] is None
    assert records["pair_match_rate"]["2"] is not None


def test_a_killed_relaxed_run_resumes_from_its_journal(tmp_path):
    """Each finished composition is journaled; --resume computes only the rest and gives
    the same records; a journal of other settings is refused in one line."""
    val = emt_tables(tmp_path)
    out = tmp_path / "bench"
    args = ("--data", str(val), "--n", "3", "--k", "1,2", "--generator",
            "prototype_substitution", "--relax", "emt", "--relax-steps", "100", "--out", str(out))
    assert invoke(*args).exit_code == 0
    full = json.loads((out / "prototype_substitution" / "results.json").read_text())
    journal = out / "prototype_substitution" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 3  # the settings, then one line per composition
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # killed mid-write

    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "1 compositions taken from the journal" in result.output
    resumed = json.loads((out / "prototype_substitution" / "results.json").read_text())
    assert resumed["n_resumed"] == 1 and full["n_resumed"] == 0
    for a, b in zip(full["per_composition"], resumed["per_composition"], strict=True):
        assert {k: a[k] for k in ("material_id", "rms", "energy_per_atom", "ranked_match")} \
            == {k: b[k] for k in ("material_id", "rms", "energy_per_atom", "ranked_match")}
    assert resumed["ranked_match_rate"] == full["ranked_match_rate"] == {"1": 1.0}
    assert len(journal.read_text().splitlines()) == 3

    other = [a if a != "100" else "50" for a in args]
    result = invoke(*other, "--resume")
    assert result.exit_code != 0
    assert "was written with another 'relax_steps' (100, now 50)" in result.output
    assert invoke(*other).exit_code == 0  # without --resume the journal starts afresh


def test_diffusion_generator_in_the_benchmark(work, checkpoint):
    result = invoke("--data", str(work / "tiny.csv"), "--n", "2", "--k", "1",
                    "--generator", "diffusion", "--checkpoint", str(checkpoint),
                    "--n-steps", "3", "--out", str(work / "diff"))
    assert result.exit_code == 0, result.output
    combined = json.loads((work / "diff" / "results.json").read_text())
    diffusion = combined["generators"]["diffusion"]
    assert diffusion["n_generated"] == 2 and diffusion["n_failed"] == 0
    assert diffusion["generator_settings"]["n_steps"] == 3


def test_templates_and_diffusion_pooled_in_the_benchmark(work, checkpoint):
    result = invoke("--data", str(work / "tiny.csv"), "--n", "5", "--k", "1,4",
                    "--generator", "templates+diffusion", "--checkpoint", str(checkpoint),
                    "--reference-csv", str(work / "templates.csv"), "--n-steps", "3",
                    "--max-atoms", "8", "--out", str(work / "pooled"))
    assert result.exit_code == 0, result.output
    pooled = json.loads((work / "pooled" / "templates+diffusion" / "results.json").read_text())
    members = [g["name"] for g in pooled["generator_settings"]["generators"]]
    assert members == ["prototype_substitution", "diffusion"]
    # the templates come first: their own table holds every answer at k = 1
    assert pooled["match_rate"]["1"] == 1.0
    assert pooled["n_generated"] == 5 * 4  # the model fills what the templates lack


def test_pooled_generator_interleaves_and_fills_in():
    from pymatgen.core import Composition

    from xtalloop.generators.base import Candidate
    from xtalloop.generators.pooled import PooledGenerator

    class Fixed:
        def __init__(self, name, count):
            self.name, self.count = name, count

        def generate(self, composition, n, seed):
            return [Candidate(rocksalt("Na", "Cl", 5.0 + i), self.name, seed, i)
                    for i in range(min(n, self.count))]

    pool = PooledGenerator([Fixed("a", 2), Fixed("b", 10)])
    out = pool.generate(Composition("NaCl"), 6, seed=1)
    assert [c.generator for c in out] == ["a", "b", "a", "b", "b", "b"]
    assert [c.generator for c in pool.generate(Composition("NaCl"), 6, seed=1)] == \
        [c.generator for c in out]
    assert pool.generate(Composition("NaCl"), 0, seed=1) == []
    weighted = PooledGenerator([Fixed("a", 3), Fixed("b", 10)], shares=(2, 1))
    assert [c.generator for c in weighted.generate(Composition("NaCl"), 7, seed=1)] == \
        ["a", "a", "b", "a", "b", "b", "b"]
    with pytest.raises(ValueError, match="shares"):
        PooledGenerator([Fixed("a", 3), Fixed("b", 10)], shares=(2,))


def test_pooled_generator_with_dedup_spends_no_slot_on_a_crystal_twice():
    """Rocksalt from both generators is pooled once; the slot goes to the next crystal."""
    from pymatgen.core import Composition

    from xtalloop.generators.base import Candidate
    from xtalloop.generators.pooled import PooledGenerator

    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])

    class Fixed:
        def __init__(self, name, structures):
            self.name, self.structures = name, structures

        def generate(self, composition, n, seed):
            return [Candidate(s, self.name, seed, i) for i, s in enumerate(self.structures[:n])]

    a = Fixed("a", [rocksalt("Na", "Cl", 5.6), rocksalt("Na", "Cl", 5.9)])
    b = Fixed("b", [rocksalt("Na", "Cl", 5.4), cscl, zincblende("Na", "Cl", 6.0)])
    plain = PooledGenerator([a, b]).generate(Composition("NaCl"), 4, seed=0)
    assert [(c.generator, c.index) for c in plain] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    pooled = PooledGenerator([a, b], dedup=True).generate(Composition("NaCl"), 4, seed=0)
    assert [(c.generator, c.index) for c in pooled] == [("a", 0), ("b", 1), ("b", 2)]


def test_pooled_generator_with_dedup_keeps_the_first_generators_version_and_fills_up():
    """A template's crystal takes the model's duplicate's slot; duplicates are refilled."""
    from pymatgen.core import Composition

    from xtalloop.generators.base import Candidate
    from xtalloop.generators.pooled import MAX_ASK, PooledGenerator

    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])

    class Listed:
        def __init__(self, name, structures):
            self.name, self.structures, self.asked = name, structures, []

        def generate(self, composition, n, seed):
            self.asked.append(n)
            return [Candidate(s, self.name, seed, i) for i, s in enumerate(self.structures[:n])]

    templates = Listed("templates", [cscl, rocksalt("Na", "Cl", 5.9)])
    model = Listed("model", [rocksalt("Na", "Cl", 5.4)])
    pooled = PooledGenerator([templates, model], dedup=True).generate(
        Composition("NaCl"), 3, seed=0)
    assert [(c.generator, c.index) for c in pooled] == [("templates", 0), ("templates", 1)]

    # the same crystal over and over: asked again for more until n distinct ones come
    repeats = [rocksalt("Na", "Cl", 5.6)] * 4 + [cscl, zincblende("Na", "Cl", 6.0)]
    first = Listed("templates", repeats * 10)
    second = Listed("model", [rocksalt("Na", "Cl", 5.0 + 0.1 * i) for i in range(100)])
    pooled = PooledGenerator([first, second], dedup=True).generate(
        Composition("NaCl"), 3, seed=0)
    assert len(pooled) == 3 and first.asked == [3, 6]
    assert [(c.generator, c.index) for c in pooled] == [("templates", 0), ("templates", 4),
                                                        ("templates", 5)]
    alike = Listed("model", [rocksalt("Na", "Cl", 5.0 + 0.1 * i) for i in range(100)])
    alone = PooledGenerator([alike], dedup=True).generate(Composition("NaCl"), 3, seed=0)
    assert len(alone) == 1 and alike.asked == [3, 6, 12]  # then it stops: MAX_ASK x n
    assert MAX_ASK == 4


def test_parse_ks():
    assert parse_ks("20, 1,5,1") == [1, 5, 20]
    for bad in ("", "0", "1,x", "-1"):
        with pytest.raises(ConfigError):
            parse_ks(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{missing}", "--generator", "random_symmetric"], "structure table not found"),
        (["--data", "{bad_csv}", "--generator", "random_symmetric"], "has no 'cif' column"),
        (["--data", "{csv}", "--generator", "random_symmetric", "--k", "1,x"], "--k takes"),
        (["--data", "{csv}", "--generator", "diffusion"], "needs --checkpoint"),
        (["--data", "{csv}", "--generator", "diffusion", "--checkpoint", "{missing}"],
         "checkpoint not found"),
        (["--data", "{csv}", "--generator", "diffusion", "--checkpoint", "{bad_ckpt}"],
         "cannot read checkpoint"),
        (["--data", "{csv}", "--generator", "prototype_substitution",
          "--reference-csv", "{missing}"], "reference table of prototype_substitution not found"),
        (["--data", "{csv}", "--generator", "random_symmetric", "--relax", "nonsense"],
         "unknown energy model"),
        (["--data", "{csv}", "--generator", "random_symmetric", "--rerank", "emt"],
         "--rerank needs --relax"),
        (["--data", "{csv}", "--generator", "random_symmetric", "--relax", "emt",
          "--rerank-first"], "--rerank-first needs --rerank"),
        (["--data", "{csv}", "--generator", "random_symmetric", "--relax", "emt",
          "--rerank", "nonsense"], "--rerank: unknown energy model"),
        (["--data", "{csv}", "--generator", "prototype_substitution"],
         "no training split (train_partial.csv.gz) beside"),
        (["--data", "{csv}", "--generator", "prototype_substitution", "--reference-csv", "{csv}"],
         "templates include the targets"),
        (["--data", "{csv}", "--generator", "prototype_substitution",
          "--reference-csv", "{corrupt_csv}"], "no usable template in"),
        (["--data", "{corrupt_csv}", "--generator", "random_symmetric"], "no usable target in"),
    ],
)
def test_bad_input_gives_one_error_line(args, message, work):
    (work / "bad.csv").write_text("a,b\n1,2\n")
    (work / "bad.pt").write_bytes(b"\x00not a checkpoint")
    corrupt = pd.read_csv(work / "templates.csv", index_col=0).assign(cif="data_x\nnot a cif")
    corrupt.to_csv(work / "corrupt.csv")  # readable formulas and sizes, no readable CIF
    names = {"missing": str(work / "missing.file"), "csv": str(work / "tiny.csv"),
             "bad_csv": str(work / "bad.csv"), "bad_ckpt": str(work / "bad.pt"),
             "corrupt_csv": str(work / "corrupt.csv")}
    result = invoke(*[a.format(**names) for a in args], "--out", str(work / "never"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (work / "never").exists()

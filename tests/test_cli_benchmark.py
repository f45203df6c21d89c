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
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from typer.testing import CliRunner

from conftest import fcc, rocksalt, zincblende
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


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with ``tiny.csv``, shaped like the shared data."""
    folder = tmp_path_factory.mktemp("cli_benchmark")
    rows = [
        {"material_id": mid, "cif": str(CifWriter(s)), "nsites": len(s),
         "n_elements": len(s.composition), "reduced_formula": s.composition.reduced_formula}
        for mid, s in tiny_structures().items()
    ]
    pd.DataFrame(rows).to_csv(folder / "tiny.csv")
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
         "--generator", "prototype_substitution", "--reference-csv", "tiny.csv",
         "--max-atoms", "8", "--out", "bench", "--no-progress"],
        capture_output=True, text=True, cwd=work, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "| random_symmetric |" in out.stdout and "| prototype_substitution |" in out.stdout
    assert "reference table is the benchmark table" in out.stderr  # leak warning

    bench = work / "bench"
    combined = json.loads((bench / "results.json").read_text())
    assert list(combined["generators"]) == ["random_symmetric", "prototype_substitution"]
    assert combined["ks"] == [1, 2] and len(combined["material_ids"]) == 5
    assert "| match@1 | match@2 |" in (bench / "results.md").read_text()
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
                    "--reference-csv", str(work / "tiny.csv"), "--n-steps", "3",
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
    ],
)
def test_bad_input_gives_one_error_line(args, message, work):
    (work / "bad.csv").write_text("a,b\n1,2\n")
    (work / "bad.pt").write_bytes(b"\x00not a checkpoint")
    names = {"missing": str(work / "missing.file"), "csv": str(work / "tiny.csv"),
             "bad_csv": str(work / "bad.csv"), "bad_ckpt": str(work / "bad.pt")}
    result = invoke(*[a.format(**names) for a in args], "--out", str(work / "never"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (work / "never").exists()

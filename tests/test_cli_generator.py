"""``xtalloop generator train|finetune|sample`` on a tiny table and a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import fcc, rocksalt, zincblende
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.cif import CifWriter
from typer.testing import CliRunner

from xtalloop.cli import app
from xtalloop.generators.diffusion import read_checkpoint

# A model small enough to train in a second (the presets are for real data).
TINY_CONFIG = """\
model: {hidden_dim: 32, n_layers: 2, n_frequencies: 4, time_dim: 16}
noise: {timesteps: 50}
train: {epochs: 3, batch_size: 4, lr: 0.003, save_every: 0, device: cpu, seed: 0}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_structures() -> dict[str, Structure]:
    """Six small crystals of one, two and three elements (at most five atoms)."""
    return {
        "t-NaCl": rocksalt("Na", "Cl", 5.64),
        "t-KCl": rocksalt("K", "Cl", 6.29),
        "t-ZnS": zincblende("Zn", "S", 5.41),
        "t-CsCl": Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "t-Cu": Structure(fcc(3.61), ["Cu"], [[0, 0, 0]]),
        "t-SrTiO3": Structure(
            Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        ),
    }


def write_table(path: Path) -> Path:
    """A CSV shaped like the shared data (leading index column, ``cif`` column)."""
    rows = [
        {"material_id": mid, "cif": str(CifWriter(s)), "nsites": len(s),
         "n_elements": len(s.composition), "reduced_formula": s.composition.reduced_formula}
        for mid, s in tiny_structures().items()
    ]
    pd.DataFrame(rows).to_csv(path)
    return path


def xtalloop(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line in a fresh process (one torch thread: tiny tensors)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "xtalloop.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120, env=env)


def invoke(*args: str):
    """The command line in this process (faster; same code path)."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_generator")
    write_table(folder / "tiny.csv")
    (folder / "tiny.yaml").write_text(TINY_CONFIG)
    return folder


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    out = xtalloop("generator", "train", "--data", "tiny.csv", "--val", "tiny.csv",
                   "--config", "tiny.yaml", "--epochs", "2", "--out", "ckpt/tiny.pt",
                   "--no-progress", "--threads", "1", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "checkpoint: ckpt/tiny.pt" in out.stdout
    return work / "ckpt" / "tiny.pt"


def test_train_writes_checkpoint_log_and_curve(checkpoint):
    ckpt = read_checkpoint(checkpoint)
    assert ckpt["n_train"] == 6 and ckpt["epoch"] == 2
    assert ckpt["config"]["noise"]["timesteps"] == 50  # from --config, not the preset
    log = json.loads(checkpoint.with_suffix(".log.json").read_text())
    assert "val_loss" in log["history"][-1]
    assert checkpoint.with_suffix(".loss.png").is_file()


def test_train_filters_and_overrides(work):
    result = invoke("generator", "train", "--data", str(work / "tiny.csv"), "--config",
                    str(work / "tiny.yaml"), "--max-elements", "1", "--epochs", "1",
                    "--out", str(work / "cu.pt"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "on 1 crystals" in result.stdout
    ckpt = read_checkpoint(work / "cu.pt")
    assert ckpt["n_train"] == 1 and ckpt["config"]["train"]["epochs"] == 1


def test_sample_same_seed_same_files(checkpoint, work):
    args = ("generator", "sample", "--checkpoint", str(checkpoint), "--composition", "Li3PS4",
            "--n", "3", "--seed", "7", "--n-steps", "8", "--max-atoms", "16")
    first = xtalloop(*args, "--out", "a", cwd=work)
    second = xtalloop(*args, "--out", "b", cwd=work)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    names = sorted(p.name for p in (work / "a").glob("*.cif"))
    assert names == ["Li3PS4_s7_000.cif", "Li3PS4_s7_001.cif", "Li3PS4_s7_002.cif"]
    for name in names:
        assert (work / "a" / name).read_bytes() == (work / "b" / name).read_bytes()
    lines = [line for line in first.stdout.splitlines() if line.endswith("atoms")]
    assert len(lines) == 3 and lines[0].split()[0] == "Li3PS4_s7_000.cif"
    # a barely trained model makes flat cells pymatgen will not read back: check the text
    text = (work / "a" / names[0]).read_text()
    formula_sum = next(x for x in text.splitlines() if x.startswith("_chemical_formula_sum"))
    cell = Composition(formula_sum.split(None, 1)[1].strip("'"))
    assert cell.reduced_formula == "Li3PS4"
    assert f"{int(cell.num_atoms)} atoms" in lines[0]
    formula = lines[0].split()[1]
    assert formula in ("Li3PS4", "Li6P2S8", "Li9P3S12", "Li12P4S16")
    other = invoke(*args, "--seed", "8", "--out", str(work / "c"))
    assert other.exit_code == 0
    assert (work / "c" / "Li3PS4_s8_000.cif").read_text() != (work / "a" / names[0]).read_text()


def test_finetune_records_its_parent(checkpoint, work):
    result = invoke("generator", "finetune", "--checkpoint", str(checkpoint), "--data",
                    str(work / "tiny.csv"), "--epochs", "1", "--out", str(work / "ft.pt"),
                    "--no-progress")
    assert result.exit_code == 0, result.output
    child = read_checkpoint(work / "ft.pt")
    assert child["parent"]["path"] == str(checkpoint.resolve())
    assert child["config"]["model"] == read_checkpoint(checkpoint)["config"]["model"]


@pytest.fixture(scope="module")
def bad_files(work) -> dict[str, str]:
    (work / "nocif.csv").write_text("a,b\n1,2\n")
    (work / "broken.csv.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (work / "broken.pt").write_text("not a checkpoint\n")
    (work / "bad.yaml").write_text("model: {hidden_dim: 2}\n")
    table = pd.read_csv(work / "tiny.csv", index_col=0)
    table[table.material_id == "t-NaCl"].to_csv(work / "nacl.csv")
    return {name: str(work / name) for name in ("tiny.csv", "nocif.csv", "broken.csv.gz",
                                                "broken.pt", "bad.yaml", "nacl.csv")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "{missing}", "--out", "{out}"], "training data not found"),
        (["train", "--data", "nocif.csv", "--out", "{out}"], "has no 'cif' column"),
        (["train", "--data", "broken.csv.gz", "--out", "{out}"], "cannot read training data"),
        (["train", "--data", "tiny.csv", "--config", "bad.yaml", "--out", "{out}"],
         "model.hidden_dim"),
        (["train", "--data", "nacl.csv", "--max-atoms", "1", "--out", "{out}"],
         "no crystals in"),
        (["finetune", "--checkpoint", "broken.pt", "--data", "tiny.csv", "--out", "{out}"],
         "cannot read checkpoint"),
        (["sample", "--checkpoint", "{missing}", "--composition", "NaCl"], "checkpoint not found"),
        (["sample", "--checkpoint", "broken.pt", "--composition", "NaCl"],
         "cannot read checkpoint"),
        (["sample", "--checkpoint", "{ckpt}", "--composition", "NaXx"], "unknown element 'Xx'"),
        (["sample", "--checkpoint", "{ckpt}", "--composition", "Li3PS4"],
         "no cell of Li3PS4 fits within 5 atoms"),
        (["finetune", "--checkpoint", "{ckpt}", "--data", "tiny.csv", "--out", "{ckpt}"],
         "--out must differ"),
    ],
)
def test_bad_input_gives_one_error_line(args, message, bad_files, checkpoint, work):
    names = {"missing": str(work / "missing.file"), "out": str(work / "never.pt"),
             "ckpt": str(checkpoint)}
    argv = [bad_files.get(a, a.format(**names)) for a in args]
    result = invoke("generator", *argv, "--no-progress" if args[0] != "sample" else "--n=1")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (work / "never.pt").exists()


def test_bad_composition_in_a_real_process(checkpoint, work):
    out = xtalloop("generator", "sample", "--checkpoint", str(checkpoint), "--composition",
                   "Na0Cl", cwd=work)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr + out.stdout

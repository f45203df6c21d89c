"""The arity-extension benchmark on hand-made perovskite tables and a tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import rocksalt, zincblende
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from xtalloop.benchmark.arity import train_base
from xtalloop.benchmark.arity_data import nested_subsets, pick_eval_rows, rows_of_arity
from xtalloop.benchmark.csp_scoring import ranked_match_at_1
from xtalloop.generators.diffusion import (
    DiffusionConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    read_checkpoint,
    structures_to_dataset,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "arity_extension.py"


def perovskite(a: str, b: str, a_cell: float = 3.95) -> Structure:
    """Cubic ABO3 (5 atoms)."""
    return Structure(Lattice.cubic(a_cell), [a, b, "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def double_perovskite(a1: str, a2: str, b1: str, b2: str, a_cell: float = 4.0) -> Structure:
    """A 2x1x1 perovskite supercell with A = a1, a2 and B = b1, b2 (10 atoms)."""
    cell = perovskite("Sr", "Ti", a_cell)
    cell.make_supercell([2, 1, 1])
    a_sites = [i for i, s in enumerate(cell) if s.specie.symbol == "Sr"]
    b_sites = [i for i, s in enumerate(cell) if s.specie.symbol == "Ti"]
    cell.replace(a_sites[0], a1)
    cell.replace(a_sites[1], a2)
    cell.replace(b_sites[0], b1)
    cell.replace(b_sites[1], b2)
    return cell


def small_structures() -> list[Structure]:
    """Binaries and ternaries of at most 10 atoms: what the base model is trained on."""
    supercell = perovskite("Ba", "Zr", 4.19)
    supercell.make_supercell([2, 1, 1])
    return [rocksalt("Na", "Cl", 5.64), rocksalt("K", "Cl", 6.29), zincblende("Zn", "S", 5.41),
            perovskite("Sr", "Ti", 3.905), perovskite("Ba", "Ti", 4.0),
            perovskite("Ca", "Ti", 3.84), supercell]


def higher_order() -> list[Structure]:
    """Quaternaries (A A' B2 O6) and quinaries (A A' B B' O6) of 10 atoms."""
    quaternaries = [double_perovskite(a1, a2, b, b, 3.9 + 0.02 * i) for i, (a1, a2, b) in
                    enumerate([("Ba", "Sr", "Ti"), ("Ba", "Ca", "Ti"), ("Sr", "Ca", "Zr"),
                               ("Ba", "Sr", "Zr"), ("Ca", "Sr", "Ti"), ("Ba", "Ca", "Zr")])]
    quinaries = [double_perovskite(a1, a2, b1, b2, 3.95 + 0.02 * i) for i, (a1, a2, b1, b2) in
                 enumerate([("Ba", "Sr", "Ti", "Zr"), ("Ba", "Ca", "Ti", "Zr"),
                            ("Sr", "Ca", "Ti", "Hf"), ("Ba", "Sr", "Ti", "Hf")])]
    return quaternaries + quinaries


def write_table(path: Path, structures: list[Structure], ids: bool = True,
                index: bool = True) -> Path:
    """A CSV shaped like the shared data (``cif`` column, optional ``material_id``)."""
    rows = [{"material_id": f"t-{i}", "cif": str(CifWriter(s))} for i, s in enumerate(structures)]
    frame = pd.DataFrame(rows)
    if not ids:
        frame = frame.drop(columns="material_id")
    frame.to_csv(path, index=index)  # index=True: the shared files' leading unnamed column
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("arity")
    write_table(folder / "train.csv", small_structures() + higher_order())
    write_table(folder / "val.csv", higher_order()[::-1], ids=False, index=False)
    config = DiffusionConfig(
        model=ModelConfig(hidden_dim=32, n_layers=2, n_frequencies=4, time_dim=16),
        noise=NoiseConfig(timesteps=50),
        train=TrainConfig(epochs=2, batch_size=4, lr=3e-3, save_every=0, device="cpu", seed=0),
    )
    train(config, structures_to_dataset(small_structures()), folder / "base.pt", progress=False)
    return folder


def run_script(*args: str) -> int:
    spec = importlib.util.spec_from_file_location("arity_extension_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def test_script_writes_outputs_with_rates_in_range(work, capsys):
    out = work / "out"
    code = run_script(
        "--train", str(work / "train.csv"), "--val", str(work / "val.csv"),
        "--base-checkpoint", str(work / "base.pt"), "--ckpt-dir", str(work / "ckpt"),
        "--fractions", "0.5,0.2,1", "--finetune-epochs", "1", "--finetune-batch-size", "4",
        "--n-per-arity", "2", "--k", "1,2", "--n-steps", "4", "--out", str(out),
        "--no-progress",
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "match_rate.png"}
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["finetune"]["budget"] == "fixed 1 epochs"
    assert result["data"]["finetune_pool"] == 10
    assert result["data"]["finetune_pool_per_arity"] == {"4": 6, "5": 4}
    assert result["data"]["finetune_sizes"] == {"0.2": 2, "0.5": 5, "1": 10}
    assert result["data"]["n_eval_per_arity"] == {"4": 2, "5": 2}
    ids = result["data"]["eval_material_ids"]  # val.csv has no material_id: its row numbers
    assert all(m.startswith("row-") for m in ids["4"] + ids["5"])
    assert [m["fraction"] for m in result["models"]] == [0.0, 0.2, 0.5, 1.0]
    for model in result["models"]:
        for arity in ("4", "5"):
            r = model["results"][arity]
            assert r["n_compositions"] == 2
            # the same compositions for every model
            assert [c["material_id"] for c in r["per_composition"]] == ids[arity]
            for k in ("1", "2"):
                assert 0.0 <= r["match_rate"][k] <= 1.0
    for model in result["models"][1:]:
        parent = read_checkpoint(model["checkpoint"])["parent"]
        assert parent["path"] == str((work / "base.pt").resolve())
    table = (out / "results.md").read_text()
    assert "| base | 0 |" in table and "quinary (n=2) @2" in table
    assert "quaternary (n=2) @1" in capsys.readouterr().out


def test_finetune_subsets_are_nested_and_seeded():
    subsets = nested_subsets(1456, [0.1, 0.01, 0.05], seed=3)
    small, middle, large = subsets[0.01], subsets[0.05], subsets[0.1]
    assert (len(small), len(middle), len(large)) == (15, 73, 146)
    assert set(small) <= set(middle) <= set(large)
    assert nested_subsets(1456, [0.05], seed=3)[0.05] == middle
    assert nested_subsets(1456, [0.05], seed=4)[0.05] != middle
    assert nested_subsets(3, [0.01], seed=0)[0.01] != []  # at least one crystal
    with pytest.raises(ValueError):
        nested_subsets(10, [0.0], seed=0)


def test_eval_rows_filter_arity_atoms_and_duplicates(work):
    table = pd.read_csv(work / "train.csv", index_col=0)
    table = pd.concat([table, table.iloc[[-1]]])  # a duplicate formula
    rows = rows_of_arity(table, (4, 5), max_atoms=12)
    assert sorted(rows["n_elements"].value_counts().to_dict().items()) == [(4, 6), (5, 5)]
    assert rows_of_arity(table, (4, 5), max_atoms=9).empty  # 10-atom cells dropped
    picked = pick_eval_rows(rows, 5, 10, seed=0)
    assert len(picked) == 4 and picked["formula"].is_unique
    assert list(pick_eval_rows(rows, 4, 3, seed=1).index) == list(
        pick_eval_rows(rows, 4, 3, seed=1).index)


def test_base_model_is_trained_when_missing(work):
    out = train_base(work / "train.csv", work / "trained" / "base.pt", minutes=0.002,
                     max_atoms=12, max_elements=3)
    ckpt = read_checkpoint(out)
    assert ckpt["n_train"] == 7 and ckpt["max_atoms"] == 10 and ckpt["stopped_by"] == "time_box"


def test_ranked_match_uses_the_lowest_energy_candidate():
    records = [
        {"n_candidates": 3, "rms": [None, 0.1, None]},  # lowest energy is candidate 1: hit
        {"n_candidates": 0, "rms": []},  # no candidates: no energies recorded, a miss
        {"n_candidates": 2, "rms": [0.2, None]},  # lowest energy is candidate 1: miss
    ]
    energies = [[-1.0, -2.0, float("inf")], [-3.0, -4.0]]
    assert ranked_match_at_1(records, energies) == pytest.approx(1 / 3)
    assert ranked_match_at_1([], []) is None

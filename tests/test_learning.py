"""The energy model learns from the loop's own DFT results (EMT stands in for DFT)."""

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from typer.testing import CliRunner

from conftest import EmtRelaxAsDftMaker
from xtalloop.cli import app
from xtalloop.config import RunConfig
from xtalloop.errors import XtalloopError
from xtalloop.learn.dataset import is_holdout, split_frames, stress_to_ase
from xtalloop.learn.mace_training import MaceTrainer
from xtalloop.learn.metrics import evaluate
from xtalloop.learn.registry import ModelRegistry, should_promote
from xtalloop.models.energy_model import load_energy_model
from xtalloop.runner import execute
from xtalloop.store.files import FileStore
from xtalloop.store.results import open_results

TINY = MaceTrainer(num_channels=8, r_max=4.0, epochs=6, batch_size=4)


def emt_frames(seed: int, n: int = 24, strain: float = 0.02, rattle: float = 0.08) -> list:
    """Rattled, strained Cu, Au, CuAu and Cu3Au cells labelled by EMT."""
    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
        atoms.set_chemical_symbols([["Cu"] * 4, ["Au"] * 4, ["Cu", "Cu", "Au", "Au"],
                                    ["Au", "Cu", "Cu", "Cu"]][i % 4])
        atoms.set_cell(atoms.cell * (1 + strain * rng.standard_normal()), scale_atoms=True)
        atoms.rattle(rattle, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.info.update(group=f"s{seed}-{i}", step="final")
        cells.append(atoms)
    return cells


@pytest.fixture(scope="module")
def trained_ensemble(tmp_path_factory, one_torch_thread):
    """Three tiny MACE models trained on EMT data (three seeds)."""
    frames = emt_frames(seed=0)
    folder = TINY.train_ensemble(frames, tmp_path_factory.mktemp("mace"), size=3, seed=0)
    return frames, folder


def test_tiny_mace_trains_and_fine_tunes_on_emt_data(trained_ensemble, tmp_path):
    frames, folder = trained_ensemble
    # the ensemble is kept in the native format only: loading it unpickles nothing
    assert sorted(p.name for p in folder.iterdir()) == [
        f"member_{i}.mace.{ext}" for i in range(3) for ext in ("json", "pt")]
    test = emt_frames(seed=1, n=8)
    per_atom = np.array([a.calc.results["energy"] / len(a) for a in test])
    trivial = 1000 * np.mean(np.abs(per_atom - per_atom.mean()))  # one energy for all
    native = load_energy_model(str(folder / "member_0.mace.json"))
    trained = evaluate(native, test)
    assert trained["energy_mae"] < trivial
    # mace's own .model is left in the work folder for mace's tools, never loaded here
    with pytest.raises(XtalloopError, match="a pickled MACE model"):
        load_energy_model(str(folder.parent / "member_0" / "member_0.model"))

    more = emt_frames(seed=2, n=8)
    tuned = TINY.train(frames + more, tmp_path / "ft", seed=5,
                       parent=folder / "member_0.mace.json", name="tuned")
    assert tuned.name == "tuned.mace.json"
    log = "".join(p.read_text() for p in (tmp_path / "ft" / "logs").glob("*.log"))
    assert "foundation model" in log.lower()
    assert evaluate(load_energy_model(str(tuned)), test)["n_frames"] == 8


def test_ensemble_spread_is_larger_out_of_distribution(trained_ensemble):
    frames, folder = trained_ensemble
    ensemble = load_energy_model(str(folder))
    assert ensemble.name == "mace-ensemble"
    inside = emt_frames(seed=3, n=8)
    outside = emt_frames(seed=4, n=8, strain=0.0, rattle=0.4)  # heavily distorted cells
    for atoms in outside:
        atoms.set_cell(atoms.cell * 0.85, scale_atoms=True)
    spread_in = np.mean([p.energy_std / 4 for p in ensemble.predict(inside)])
    spread_out = np.mean([p.energy_std / 4 for p in ensemble.predict(outside)])
    # seeds-only members of 6 epochs disagree even in distribution (1.56x measured)
    assert spread_out > 1.3 * spread_in


def test_training_error_is_one_line(tmp_path):
    with pytest.raises(XtalloopError, match="cannot train a model on 1 frame"):
        TINY.train(emt_frames(seed=0, n=1), tmp_path)


def fake_native_model(folder: Path, members: dict[str, bytes]) -> Path:
    """Native model files with the given weights bytes (the registry only moves bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, weights in members.items():
        (folder / f"{name}.mace.json").write_text(json.dumps({"member": name}))
        (folder / f"{name}.mace.pt").write_bytes(weights)
    return folder


def test_registry_stores_fetches_and_promotes(store_config, tmp_path):
    from xtalloop.models.trust import UntrustedModelError, add_files

    folder = fake_native_model(tmp_path / "model", {"member_0": b"weights-0" * 1000,
                                                    "member_1": b"weights-1"})
    (folder / "member_9.model").write_bytes(b"a pickle is never stored")
    with open_results(store_config) as db:
        registry = ModelRegistry(db)
        first = registry.register(folder, parent="chgnet", metrics={"n_frames": 3},
                                  parent_metrics={}, promoted=True, settings_key="k")
        second = registry.register(folder, parent=first, metrics={}, parent_metrics={},
                                   promoted=False, settings_key="k")
        assert (first, second) == ("mace-1", "mace-2")
        assert registry.promoted()["model_id"] == "mace-1"
        assert [f["name"] for f in registry.get(first)["files"]] == [
            "member_0.mace.json", "member_0.mace.pt", "member_1.mace.json", "member_1.mace.pt"]
        # from a store, a model is used only once this machine trusts its files
        with pytest.raises(UntrustedModelError, match="xtalloop model trust mace-2") as err:
            registry.fetch(second, into=tmp_path / "cache")
        assert "\n" not in str(err.value) and not (tmp_path / "cache").exists()
        add_files(folder.glob("*.mace.*"))
        fetched = registry.fetch(second, into=tmp_path / "cache")
        assert (fetched / "member_0.mace.pt").read_bytes() == b"weights-0" * 1000
        assert sorted(p.name for p in fetched.iterdir()) == [
            "member_0.mace.json", "member_0.mace.pt", "member_1.mace.json", "member_1.mace.pt"]
        registry.promote(second)
        assert registry.promoted()["model_id"] == "mace-2"
        registry.promote(first)
        assert registry.promoted()["model_id"] == "mace-1"
        # a damaged stored file is detected, never loaded
        entry = next(f for f in registry.get(first)["files"] if f["name"] == "member_1.mace.pt")
        FileStore(store_config).path_of(entry["sha256"]).write_bytes(b"tampered")
        with pytest.raises(XtalloopError, match="damaged"):
            registry.fetch(first, into=tmp_path / "other")
        with pytest.raises(XtalloopError, match="no model 'mace-9'"):
            registry.get("mace-9")


def test_registry_model_is_used_only_for_elements_it_was_trained_on(store_config, tmp_path,
                                                                    monkeypatch):
    from xtalloop.learn.registry import resolve_model

    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    folder = fake_native_model(tmp_path / "model", {"member_0": b"weights"})
    with open_results(store_config) as db:
        ModelRegistry(db).register(folder, parent="chgnet", metrics={}, parent_metrics={},
                                   promoted=True, settings_key="k", elements=["Cu", "Au"])
    store = store_config.model_dump()
    # reviewed and trusted as a user would (a model trained elsewhere)
    trusted = CliRunner().invoke(app, ["model", "trust", "mace-1", "--store", store_config.path])
    assert trusted.exit_code == 0, trusted.output
    assert "trusted registry model mace-1 (2 files)" in trusted.output
    spec, model_id = resolve_model("registry", "chgnet", store, ["Au", "Cu"])
    assert model_id == "mace-1" and (Path(spec) / "member_0.mace.pt").read_bytes() == b"weights"
    # a composition with an element the model never saw is prefiltered by the base model
    assert resolve_model("registry", "chgnet", store, ["Au", "Ag"]) == ("chgnet", None)


def test_a_fine_tuned_chgnet_with_replay_serves_every_element_a_mace_model_only_its_own():
    from xtalloop.learn.registry import serves

    mace = {"kind": "mace", "elements": ["Au", "Cu"], "trainer": {}}
    replayed = {"kind": "chgnet", "elements": ["Au", "Cu"],
                "trainer": {"replay_neighbours": 4, "replay_library": 60}}
    no_replay = {**replayed, "trainer": {"replay_neighbours": 0, "replay_library": 0}}
    assert serves(mace, ["Cu", "Au"]) and not serves(mace, ["Ag", "Au"])
    assert serves(replayed, ["Ag", "Au"]) and serves(replayed, ["Ba", "Sr", "Eu", "Bi", "O"])
    assert not serves(no_replay, ["Ag", "Au"]) and serves(no_replay, ["Au"])


def test_promotion_needs_held_out_data_and_a_lower_error():
    assert should_promote({"n_frames": 5, "energy_mae": 10.0}, {"energy_mae": 20.0})[0]
    assert not should_promote({"n_frames": 5, "energy_mae": 30.0}, {"energy_mae": 20.0})[0]
    assert not should_promote({"n_frames": 0}, {"energy_mae": 20.0})[0]
    assert should_promote({"n_frames": 5, "energy_mae": 30.0}, {})[0]
    # energies better, hull decision worse: the parent stays; equal or undefined F1: promoted
    worse = should_promote({"n_frames": 5, "energy_mae": 10.0, "f1": 0.8},
                           {"energy_mae": 20.0, "f1": 0.9})
    assert not worse[0] and "hull F1 0.800 < parent's 0.900" in worse[1]
    assert should_promote({"n_frames": 5, "energy_mae": 10.0, "f1": 0.9},
                          {"energy_mae": 20.0, "f1": 0.9})[0]
    assert should_promote({"n_frames": 5, "energy_mae": 10.0, "f1": None},
                          {"energy_mae": 20.0, "f1": 0.9})[0]


def test_holdout_is_fixed_per_structure_and_references_always_train():
    names = [f"uuid-{i}" for i in range(400)]
    held = [n for n in names if is_holdout(n, 0.25)]
    assert 60 < len(held) < 140
    assert held == [n for n in names if is_holdout(n, 0.25)]
    assert not is_holdout("reference:Cu", 0.99)
    frames = emt_frames(seed=0, n=8)
    for i, atoms in enumerate(frames):
        atoms.info["group"] = names[i // 2]  # two frames per structure
    train, holdout = split_frames(frames, 0.5)
    assert not {a.info["group"] for a in train} & {a.info["group"] for a in holdout}
    # few structures, none below the hash threshold: the smallest hash is still held out
    train, holdout = split_frames(frames, 1e-9)
    held = {a.info["group"] for a in holdout}
    assert len(held) == 1 and not held & {a.info["group"] for a in train}
    assert split_frames(frames, 1e-9) == (train, holdout)  # the same every time
    grown = emt_frames(seed=1, n=2)
    for atoms in grown:
        atoms.info["group"] = "uuid-new"
    _, later = split_frames(frames + grown, 1e-9)  # a later round: more structures
    assert {a.info["group"] for a in later} <= held | {"uuid-new"}
    # every structure above the hash threshold: one is still left to train on
    train, holdout = split_frames(frames, 1.0)
    assert train and {a.info["group"] for a in holdout} == held
    single = frames[:2]  # one structure: nothing to hold out
    assert split_frames(single, 0.2) == (single, [])
    assert split_frames(frames, 0.0)[1] == []


def test_holdout_split_is_fixed_by_composition_not_by_random_ids():
    """Two runs of one seeded loop store the same structures under other (random) uuids:
    the split is the same, and every polymorph of a composition lies on one side."""
    import uuid

    from pymatgen.core import Composition

    def stored(names):
        frames = emt_frames(seed=0, n=24)
        for atoms, name in zip(frames, names, strict=True):
            atoms.info.update(group=name, formula=Composition(
                atoms.get_chemical_formula()).reduced_formula)
        return frames

    split = []
    for _ in range(2):
        train, holdout = split_frames(stored([str(uuid.uuid4()) for _ in range(24)]), 0.3)
        assert train and holdout
        assert not {a.info["formula"] for a in train} & {a.info["formula"] for a in holdout}
        split.append(sorted(a.info["formula"] for a in holdout))
    assert split[0] == split[1]


def test_stress_units_from_both_dft_codes():
    ase_voigt = [0.01, 0.02, 0.03, 0.0, 0.0, 0.0]
    assert np.allclose(stress_to_ase(ase_voigt), ase_voigt)
    vasp_kbar = np.diag([-16.0218, 0.0, 0.0])  # kBar with the opposite sign: 0.01 eV/Å³
    assert np.allclose(stress_to_ase(vasp_kbar)[0], 0.01, atol=1e-5)


def learning_config(tmp_path, compositions=("CuAu", "Cu", "Au")) -> RunConfig:
    return RunConfig.model_validate({
        "name": "learn-test",
        "compositions": list(compositions),
        "generate": {"seed": 3, "max_atoms": 4, "sources": [{"n": 5}]},
        "prefilter": {"model": "registry", "base_model": "chgnet", "top_k": 2, "steps": 150},
        "learn": {"energy_model": {"enabled": True, "architecture": "mace",
                                   "ensemble_size": 2, "epochs": 6,
                                   "num_channels": 8, "r_max": 4.0, "min_structures": 3,
                                   "holdout_fraction": 0.3}},
        "store": {"path": str(tmp_path / "store")},
        "output_dir": str(tmp_path / "runs"),
    })


def test_a_round_trains_the_energy_model_and_the_next_round_uses_it(
        tmp_path, one_torch_thread, monkeypatch):
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    config = learning_config(tmp_path)
    maker = EmtRelaxAsDftMaker(steps=60, relax_kwargs={"fmax": 0.05})

    first = execute(config, progress=False, relax_maker=maker)
    assert first.failed_jobs == []
    learned = first.energy_model
    assert learned["model_id"] == "mace-1" and learned["parent"] == "chgnet"
    assert not learned["fine_tuned"]  # CHGNet is not a MACE model: trained from scratch
    assert learned["n_structures"]["holdout"] >= 1
    assert learned["metrics"]["energy_mae"] > 0 and learned["parent_metrics"]["energy_mae"] > 0
    assert learned["promoted"] == should_promote(learned["metrics"],
                                                 learned["parent_metrics"])[0]
    with open_results(config.store) as db:
        record = ModelRegistry(db).get("mace-1")
        run = db.get_run(first.run_id)
    assert record["settings_key"] == "emt-test" and len(record["files"]) == 4  # 2 members
    assert set(record["training_structures"]).isdisjoint(record["holdout_structures"])
    assert any(g.startswith("reference:") for g in record["training_structures"])
    assert run["energy_model"]["model_id"] == "mace-1"
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert summary["energy_model"]["model_id"] == "mace-1"

    cli = CliRunner()
    if not learned["promoted"]:  # the scientist overrides the automatic decision
        out = cli.invoke(app, ["model", "promote", "mace-1", "--store", config.store.path])
        assert out.exit_code == 0, out.output
    listing = cli.invoke(app, ["model", "list", "--store", config.store.path])
    assert "mace-1*" in listing.output

    second = execute(config.model_copy(update={"compositions": ("Cu3Au", "Cu", "Au")}),
                     progress=False, relax_maker=maker)
    assert second.failed_jobs == []
    with open_results(config.store) as db:
        docs = db.find_validated(formula="Cu3Au")
    assert docs and {d["prefilter"]["energy_model"]["registry_id"] for d in docs} == {"mace-1"}
    assert {d["prefilter"]["energy_model"]["name"] for d in docs} == {"mace-ensemble"}
    tuned = second.energy_model
    assert tuned["model_id"] == "mace-2" and tuned["parent"] == "mace-1"
    assert tuned["fine_tuned"]  # a MACE parent that knows Cu and Au is fine-tuned


def test_bootstrap_resamples_keep_every_element():
    from xtalloop.learn.mace_training import _bootstrap_weights

    pool = emt_frames(seed=0, n=36)
    frames = [a for a in pool if a.get_chemical_formula() == "Cu4"][:8] + [pool[1]]  # one Au
    for i, atoms in enumerate(frames):
        atoms.info["group"] = f"g{i}"
    names = [f"g{i}" for i in range(9)]
    for seed in range(50):
        weight = _bootstrap_weights(frames, names, np.random.default_rng(seed))
        drawn = {s for a in frames if weight[a.info["group"]] for s in a.get_chemical_symbols()}
        assert drawn == {"Cu", "Au"}
        assert sum(weight.values()) >= len(names)


def test_loss_weights_of_the_config_reach_mace(tmp_path, monkeypatch):
    import subprocess

    from xtalloop.workflows.csp import energy_model_training_maker

    config = learning_config(tmp_path)
    learning = config.learn.energy_model.model_copy(update={"forces_weight": 25.0,
                                                            "energy_weight": 2.0})
    config = config.model_copy(update={"learn": config.learn.model_copy(
        update={"energy_model": learning})})
    trainer = energy_model_training_maker(config, {}, "emt-test").trainer
    seen = []

    def fake_run(args, **kwargs):
        seen.extend(args)
        return subprocess.CompletedProcess(args, 1, "", "stopped by the test")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(XtalloopError, match="stopped by the test"):
        trainer.train(emt_frames(seed=1, n=4), tmp_path / "mace")
    assert "--forces_weight=25.0" in seen and "--energy_weight=2.0" in seen


def test_ensemble_members_share_reference_energies_fitted_on_all_frames(tmp_path, monkeypatch):
    import subprocess

    from xtalloop.learn.mace_training import _e0s_argument, fit_e0s

    additive = emt_frames(seed=2, n=12)
    true = {29: -3.5, 79: -1.25}
    for atoms in additive:  # energies that are exactly a sum of per-element references
        energy = sum(true[int(z)] for z in atoms.numbers)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=atoms.get_forces(),
                                           stress=atoms.get_stress())
    assert fit_e0s(additive) == pytest.approx(true)

    frames = emt_frames(seed=2, n=12)  # EMT energies: each resample would fit other E0s
    e0_arguments = []

    def fake_run(args, **kwargs):
        e0_arguments.extend(a for a in args if a.startswith("--E0s="))
        return subprocess.CompletedProcess(args, 1, "", "stopped by the test")

    monkeypatch.setattr(subprocess, "run", fake_run)
    for seed in range(3):  # each call stops at its first member, whose resample differs
        with pytest.raises(XtalloopError):
            TINY.train_ensemble(frames, tmp_path / f"e{seed}", size=3, seed=seed, bootstrap=True)
    assert e0_arguments == [f"--E0s={_e0s_argument(fit_e0s(frames))}"] * 3

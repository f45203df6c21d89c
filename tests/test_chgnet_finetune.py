"""Fine-tuning pretrained CHGNet on DFT frames: files, safe loading, the loop's learning job."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_learning import emt_frames
from typer.testing import CliRunner

from xtalloop.cli import app
from xtalloop.cli_model import learning_line
from xtalloop.config import RunConfig
from xtalloop.digest import file_sha256
from xtalloop.errors import XtalloopError
from xtalloop.learn.chgnet_finetune import ChgnetFinetuner, load_finetuned, weights_file
from xtalloop.learn.registry import ModelRegistry, should_promote
from xtalloop.models.energy_model import load_energy_model
from xtalloop.models.trust import is_trusted
from xtalloop.runner import execute
from xtalloop.store.results import open_results

TINY = ChgnetFinetuner(epochs=3, batch_size=4, replay_neighbours=0, replay_library=0)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, one_torch_thread):
    frames = emt_frames(seed=0, n=8)
    folder = tmp_path_factory.mktemp("chgnet")
    return frames, TINY.train(frames, folder, seed=0)


def energy_error(model, frames) -> float:
    """Mean absolute error of the energy per atom against the frames' labels (eV/atom)."""
    predicted = model.predict(frames)
    return float(np.mean([abs(p.energy - a.get_potential_energy()) / len(a)
                          for p, a in zip(predicted, frames, strict=True)]))


def test_fine_tuned_chgnet_learns_the_labels_energy_scale(finetuned):
    frames, description = finetuned
    meta = json.loads(description.read_text())
    assert meta["format"] == "xtalloop-chgnet-finetuned/1" and meta["n_frames"] == 8
    assert set(meta["offsets_ev"]) == {"Cu", "Au"} and len(meta["loss_per_epoch"]) == 3
    assert meta["steps"] == 3 * 2  # 8 frames in batches of 4, 3 epochs
    weights = weights_file(description)
    # trained here: on this machine's trust list, so the registry may fetch it back
    assert is_trusted(file_sha256(description)) and is_trusted(file_sha256(weights))

    child = load_energy_model(str(description.parent))  # a folder holding one model
    parent = load_energy_model("chgnet")
    assert child.name == "chgnet" and "fine-tuned" in child.version
    # EMT's energies lie eV/atom away from CHGNet's: the refit offsets take that up
    assert energy_error(child, frames) < 0.5 * energy_error(parent, frames)
    forces = child.predict(frames[:1])[0].forces
    assert forces.shape == (4, 3) and np.all(np.isfinite(forces))


def test_a_step_budget_stops_training_inside_an_epoch(finetuned, tmp_path):
    frames, _ = finetuned
    budget = ChgnetFinetuner(epochs=3, batch_size=4, max_steps=3, replay_neighbours=0,
                             replay_library=0)
    meta = json.loads(budget.train(frames, tmp_path, seed=0).read_text())
    assert meta["steps"] == 3 and len(meta["loss_per_epoch"]) == 2  # 2 steps, then 1
    assert meta["settings"]["max_steps"] == 3


def test_a_changed_or_foreign_file_is_refused_in_one_line(finetuned, tmp_path):
    _, description = finetuned
    copy = tmp_path / description.name
    copy.write_text(description.read_text())
    with pytest.raises(XtalloopError, match="weights file .* not found"):
        load_finetuned(copy)
    weights = weights_file(copy)
    weights.write_bytes(weights_file(description).read_bytes() + b"\0")
    with pytest.raises(XtalloopError, match="sha256 differs"):
        load_finetuned(copy)
    copy.write_text(json.dumps({**json.loads(description.read_text()), "weights": ""}))
    with pytest.raises(XtalloopError, match=r"weights file \(none named\) not found"):
        load_finetuned(copy)
    copy.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(XtalloopError, match="is not a fine-tuned CHGNet description"):
        load_finetuned(copy)
    copy.write_text("{not json")
    with pytest.raises(XtalloopError, match="cannot read fine-tuned CHGNet") as err:
        load_energy_model(str(copy))
    assert "\n" not in str(err.value)


def test_config_chooses_the_architecture_and_names_a_bad_key():
    base = {"name": "x", "compositions": ["Cu"],
            "learn": {"energy_model": {"enabled": True, "architecture": "chgnet",
                                       "chgnet": {"epochs": 5}}}}
    config = RunConfig.model_validate(base)
    assert config.learn.energy_model.chgnet.epochs == 5
    assert config.learn.energy_model.chgnet.trainable[0] == "mlp"
    bad = json.loads(json.dumps(base))
    bad["learn"]["energy_model"]["architecture"] = "painn"
    with pytest.raises(Exception, match="learn.energy_model.architecture"):
        RunConfig.model_validate(bad)


def test_the_loop_fine_tunes_chgnet_registers_it_and_uses_it(tmp_path, one_torch_thread,
                                                             monkeypatch):
    from conftest import EmtRelaxAsDftMaker
    from test_learning import learning_config

    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    config = learning_config(tmp_path)
    learn = config.learn.model_copy(update={"energy_model": config.learn.energy_model.model_copy(
        update={"architecture": "chgnet",
                "chgnet": config.learn.energy_model.chgnet.model_copy(update={
                    "epochs": 3, "replay_neighbours": 1, "replay_library": 2})})})
    config = config.model_copy(update={"learn": learn})
    maker = EmtRelaxAsDftMaker(steps=60, relax_kwargs={"fmax": 0.05})

    first = execute(config, progress=False, relax_maker=maker)
    assert first.failed_jobs == []
    learned = first.energy_model
    assert learned["model_id"] == "chgnet-1" and learned["parent"] == "chgnet"
    assert learned["fine_tuned"] and learned["metrics"]["energy_mae"] > 0
    assert learned["promoted"] == should_promote(learned["metrics"],
                                                 learned["parent_metrics"])[0]
    with open_results(config.store) as db:
        record = ModelRegistry(db).get("chgnet-1")
    assert record["kind"] == "chgnet" and len(record["files"]) == 2
    assert record["trainer"]["kind"] == "chgnet" and record["ensemble_size"] == 1
    assert record["trainer"]["replay_library"] == 2  # the config's section reaches the trainer
    listing = CliRunner().invoke(app, ["model", "list", "--store", config.store.path])
    assert listing.exit_code == 0 and "chgnet-1" in listing.output
    if not learned["promoted"]:  # the scientist overrides the automatic decision
        out = CliRunner().invoke(app, ["model", "promote", "chgnet-1", "--store",
                                       config.store.path])
        assert out.exit_code == 0, out.output

    second = execute(config.model_copy(update={"compositions": ("Cu3Au", "Cu", "Au")}),
                     progress=False, relax_maker=maker)
    assert second.failed_jobs == []
    with open_results(config.store) as db:
        docs = db.find_validated(formula="Cu3Au")
    assert docs and {d["prefilter"]["energy_model"]["registry_id"] for d in docs} == {
        "chgnet-1"}
    tuned = second.energy_model
    assert (tuned["model_id"], tuned["parent"], tuned["base"]) == ("chgnet-2", "chgnet-1", "chgnet")
    # trained from the pretrained weights on all DFT data, judged against chgnet-1
    assert "fine-tuned from chgnet; parent chgnet-1" in learning_line(tuned)


def test_replay_structures_are_reproducible_rattled_and_of_the_training_chemistry():
    from xtalloop.learn.replay import replay_structures

    first = replay_structures(["Cu3Au", "CuAu", "Cu"], per_composition=2, library=3, seed=4,
                              max_atoms=12)
    again = replay_structures(["Cu3Au", "CuAu", "Cu"], per_composition=2, library=3, seed=4,
                              max_atoms=12)
    other = replay_structures(["Cu3Au", "CuAu", "Cu"], per_composition=2, library=3, seed=5,
                              max_atoms=12)
    kinds = [a.info["replay"] for a in first]
    assert kinds.count("library") == 3 and 1 <= kinds.count("neighbour") <= 4
    assert all(len(a) <= 12 for a in first)
    for a in first:  # neighbours: AFLOW prototypes dressed with the composition's elements
        if a.info["replay"] == "neighbour":
            assert set(a.get_chemical_symbols()) == {"Cu", "Au"}
    assert [a.get_chemical_formula() for a in first] == [a.get_chemical_formula() for a in again]
    assert all(np.allclose(a.positions, b.positions) for a, b in zip(first, again, strict=True))
    assert not all(len(a) == len(b) and np.allclose(a.positions, b.positions)
                   for a, b in zip(first, other, strict=False))


def test_replay_labels_are_the_parents_on_the_fine_tuned_energy_scale(finetuned, tmp_path):
    frames, _ = finetuned
    parent = load_energy_model("chgnet")
    offsets = {"Cu": 0.5, "Au": -1.0}
    formula = lambda a: a.get_chemical_formula(mode="hill", empirical=True)  # noqa: E731
    # the composition's lowest DFT frame, per atom: DFT energy and the parent's
    lowest = {}
    for atoms, pred in zip(frames, parent.predict(frames), strict=True):
        per_atom = atoms.get_potential_energy() / len(atoms)
        if formula(atoms) not in lowest or per_atom < lowest[formula(atoms)][0]:
            lowest[formula(atoms)] = (per_atom, pred.energy / len(atoms))
    for anchored in (True, False):
        tuner = ChgnetFinetuner(epochs=1, batch_size=8, replay_neighbours=2, replay_library=2,
                                replay_anchored=anchored)
        replay, graphs = tuner._replay(frames, parent.predict(frames), parent, offsets, seed=0)
        assert replay and len(graphs) == len(replay)
        predicted = parent.predict(replay)
        n_anchored = 0
        for atoms, pred in zip(replay, predicted, strict=True):
            symbols = atoms.get_chemical_symbols()
            if anchored and formula(atoms) in lowest:  # DFT's level, the parent's difference
                dft, own = lowest[formula(atoms)]
                expected = len(atoms) * (dft + pred.energy / len(atoms) - own)
                n_anchored += 1
            else:  # the parent's energy on the fine-tuned scale
                expected = pred.energy + 0.5 * symbols.count("Cu") - 1.0 * symbols.count("Au")
            assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-4)
            assert np.allclose(atoms.get_forces(), pred.forces, atol=1e-4)
        # the neighbours are of the training compositions; the library mostly not
        assert (n_anchored >= 1) is anchored
    description = tuner.train(frames, tmp_path, seed=0)
    meta = json.loads(description.read_text())
    assert meta["n_frames"] == len(frames) and meta["n_replay"] == len(replay)
    assert meta["settings"]["replay_library"] == 2
    assert meta["settings"]["replay_anchored"] is False


def test_a_replay_structure_with_absurd_parent_forces_is_left_out(finetuned, monkeypatch):
    # its label is the parent's own prediction, but hundreds of eV/Å wreck the training
    from ase import Atoms

    frames, _ = finetuned
    sane = frames[0].copy()
    crammed = Atoms("Cu2", positions=[[0, 0, 0], [0.9, 0, 0]], cell=[8.0, 8.0, 8.0], pbc=True)
    monkeypatch.setattr("xtalloop.learn.replay.replay_structures",
                        lambda *args, **kwargs: [sane, crammed])
    parent = load_energy_model("chgnet")
    assert np.abs(parent.predict([crammed])[0].forces).max() > 10  # the premise
    tuner = ChgnetFinetuner(epochs=1, replay_neighbours=1, replay_library=0)
    replay, graphs = tuner._replay(frames, parent.predict(frames), parent, {}, seed=0)
    assert replay == [sane] and len(graphs) == 1

"""The loop's generator learning with a Wyckoff checkpoint: fine-tune, store, hand on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import diamond, rocksalt, zincblende
from pymatgen.core import Composition, Lattice, Structure

from xtalloop.config import RunConfig
from xtalloop.errors import ConfigError
from xtalloop.generators.wyckoff.checkpoint import load_wyckoff
from xtalloop.store.files import FileStore, local_copy
from xtalloop.store.results import open_results


def validated(structure: Structure, e_above_hull: float = 0.0) -> dict:
    return {
        "formula": structure.composition.reduced_formula,
        "chemsys": structure.composition.chemical_system,
        "structure": structure.as_dict(), "energy_per_atom": -1.0,
        "e_above_hull": e_above_hull, "nsites": len(structure),
        "generator": {"generator": "test"},
        "dft": {"settings_key": "k", "converged": True}, "run": {"id": "r1"},
    }


@pytest.fixture
def store_with_stable(store_config) -> tuple:
    """A store with four stable structures and one far above the hull."""
    stable = [rocksalt("Na", "Cl", 5.64), zincblende("Zn", "S", 5.41), diamond("Si", 5.43),
              Structure(Lattice.cubic(3.61), ["Cu"] * 4,
                        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])]
    with open_results(store_config) as db:
        uuids = [db.add_validated(validated(s))[0] for s in stable]
        db.add_validated(validated(rocksalt("K", "Br", 6.6), e_above_hull=0.5))
    return store_config, uuids


def fine_tune(store_config, checkpoint: str | None, **settings):
    from xtalloop.workflows.learn import GeneratorTrainingMaker

    maker = GeneratorTrainingMaker(store=store_config.model_dump(), checkpoint=checkpoint,
                                   settings_key="k", epochs=2, **settings)
    return GeneratorTrainingMaker.make.original(maker)  # the job's body, as a worker runs it


def test_wyckoff_checkpoint_is_fine_tuned_stored_and_samples(
        tiny_wyckoff, store_with_stable, tmp_path, monkeypatch, one_torch_thread):
    from xtalloop.generators.wyckoff import checkpoint as wyckoff_checkpoint
    from xtalloop.generators.wyckoff.generator import WyckoffGenerator

    store_config, uuids = store_with_stable
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    # checkpoint None: a wyckoff source's default, the shipped checkpoint, is the parent
    monkeypatch.setattr(wyckoff_checkpoint, "DEFAULT_CHECKPOINT", tiny_wyckoff)
    out = fine_tune(store_config, None)
    assert out.parent == str(tiny_wyckoff)
    assert out.checkpoint.startswith("store:sha256:") and Path(out.path).parent == tmp_path
    assert out.n_structures == 4 and sorted(out.structure_ids) == sorted(uuids)  # not KBr
    assert out.reason.startswith("fine-tuned on 4 stable structures; held-out loss")
    assert out.final_loss is not None and out.final_loss > 0

    local = local_copy(out.checkpoint, store_config, ".pt", "generators")
    assert Path(local).is_relative_to(tmp_path / "cache")  # read back from the store
    loaded = wyckoff_checkpoint.load_wyckoff(local)
    training = loaded.metadata["training"]
    assert training["parent"] == str(tiny_wyckoff)  # started from the parent's weights
    assert training["best_val_loss"] <= training["parent_val_loss"]
    assert loaded.metadata["parent"]["checkpoint"] == str(tiny_wyckoff)
    parent = wyckoff_checkpoint.load_wyckoff(tiny_wyckoff).model.state_dict()
    same = all(torch.equal(v, parent[k]) for k, v in loaded.model.state_dict().items())
    assert same != bool(training.get("improved"))  # new weights only when they are better
    candidates = WyckoffGenerator(checkpoint=local, max_atoms=8).generate(
        Composition("NaCl"), 2, seed=0)
    assert candidates and all(c.structure.composition.reduced_formula == "NaCl"
                              for c in candidates)


def test_second_fine_tuning_reads_its_parent_from_the_store(
        tiny_wyckoff, store_with_stable, tmp_path, monkeypatch, one_torch_thread):
    """As round 2 of a loop: the parent is round 1's checkpoint, a store reference."""
    from xtalloop.generators.wyckoff.checkpoint import load_wyckoff

    store_config, uuids = store_with_stable
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    first = fine_tune(store_config, str(tiny_wyckoff))
    second = fine_tune(store_config, first.checkpoint)  # the same structures again
    assert second.parent == first.checkpoint
    assert second.checkpoint.startswith("store:sha256:") and second.checkpoint != first.checkpoint
    assert second.structure_ids == first.structure_ids and second.n_structures == 4
    with FileStore(store_config) as files:  # both stay in the store: round 1's record needs its
        assert files.exists(first.checkpoint) and files.exists(second.checkpoint)
    digest = first.checkpoint.removeprefix("store:sha256:")
    assert (tmp_path / "cache" / "generators" / f"{digest}.pt").is_file()  # fetched
    loaded = load_wyckoff(local_copy(second.checkpoint, store_config, ".pt", "generators"))
    assert loaded.metadata["parent"]["checkpoint"] == first.checkpoint
    assert loaded.metadata["parent"]["sha256"] == digest
    # each round fine-tunes at the original rate × lr_factor, not × lr_factor per round
    base_lr = load_wyckoff(tiny_wyckoff).metadata["train_config"]["lr"]
    assert loaded.metadata["base_lr"] == base_lr
    assert loaded.metadata["train_config"]["lr"] == pytest.approx(0.1 * base_lr)


def test_too_few_describable_structures_skip_fine_tuning(tiny_wyckoff, store_config, tmp_path,
                                                          monkeypatch):
    from xtalloop.learn.wyckoff_finetune import describe_structures

    monkeypatch.chdir(tmp_path)
    with open_results(store_config) as db:
        db.add_validated(validated(rocksalt("Na", "Cl", 5.64)))
    out = fine_tune(store_config, str(tiny_wyckoff), min_structures=1)
    assert out.checkpoint is None and out.n_structures == 1
    # one is held out to decide whether the new weights are better: two are needed
    assert out.reason == "1 stable structure(s) with a Wyckoff description in the store, 2 needed"
    assert not (tmp_path / "generator.pt").exists()
    # a crystal outside the model's range (here: more sites than it takes) is counted, not used
    described = describe_structures([("a", rocksalt("Na", "Cl", 5.64)),
                                      ("b", Structure(Lattice.cubic(5.0), ["Cs", "Cl"],
                                                      [[0, 0, 0], [0.5, 0.5, 0.5]]))],
                                     max_sites=1)
    assert described.ids == [] and described.skipped == ["a", "b"]
    described = describe_structures([("a", rocksalt("Na", "Cl", 5.64))], max_sites=64)
    assert described.ids == ["a"] and described.crystals[0].space_group == 225


def test_loop_hands_the_wyckoff_checkpoint_to_the_next_round(tiny_wyckoff, tmp_path):
    from xtalloop.active_learning import plan_round, round_config
    from xtalloop.workflows.loop import _generator_checkpoint, _read_checkpoints_from

    def config(sources):
        return RunConfig.model_validate({
            "name": "w", "compositions": ["NaCl"], "store": {"path": str(tmp_path / "s")},
            "generate": {"sources": sources}, "loop": {"rounds": 2},
            "learn": {"generator": {"enabled": True}}})

    run = config([{"n": 2}, {"kind": "wyckoff", "n": 2, "checkpoint": str(tiny_wyckoff)}])
    assert _generator_checkpoint(run, []) == str(tiny_wyckoff)  # round 1: the config's
    tuned = "store:sha256:" + "0" * 64
    assert _generator_checkpoint(run, [{"round": 1, "generator": {"checkpoint": tuned}}]) == tuned
    plan = plan_round(run, [], 2, set(), set())
    sources = round_config(run, plan, tuned).generate.sources
    assert [s.kind for s in sources] == ["random_symmetric", "wyckoff"]
    assert sources[1].checkpoint == tuned
    dumped = [s.model_dump(mode="json") for s in sources]
    _read_checkpoints_from(dumped, {"path": "store"})
    assert dumped[1]["store"] == {"path": "store"} and "store" not in dumped[0]


def test_config_error_without_a_learnable_source(tmp_path):
    from xtalloop.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("name: x\ncompositions: [NaCl]\nlearn: {generator: {enabled: true}}\n")
    with pytest.raises(ConfigError, match="needs a diffusion or wyckoff source"):
        load_config(path)


def test_arity_benchmark_fine_tunes_a_wyckoff_checkpoint(tiny_wyckoff, tmp_path, capsys,
                                                         one_torch_thread):
    from test_arity_benchmark import (
        higher_order,
        run_script,
        small_structures,
        write_table,
    )

    write_table(tmp_path / "train.csv", small_structures() + higher_order())
    write_table(tmp_path / "val.csv", higher_order()[::-1], ids=False, index=False)
    out = tmp_path / "out"
    code = run_script(
        "--generator", "wyckoff", "--checkpoint", str(tiny_wyckoff),
        "--train", str(tmp_path / "train.csv"), "--val", str(tmp_path / "val.csv"),
        "--ckpt-dir", str(tmp_path / "ckpt"), "--fractions", "1,0.5",
        "--finetune-epochs", "2", "--finetune-batch-size", "4", "--n-per-arity", "2",
        "--k", "1,2", "--out", str(out), "--no-progress")
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["generator"] == "wyckoff"
    assert result["data"]["finetune_pool_per_arity"] == {"4": 6, "5": 4}
    assert result["data"]["finetune_sizes"] == {"0.5": 5, "1": 10}
    ids = result["data"]["eval_material_ids"]
    base, *tuned = result["models"]
    assert base["checkpoint"] == str(tiny_wyckoff) and [m["fraction"] for m in tuned] == [0.5, 1]
    for model in tuned:
        # every double perovskite has a Wyckoff description: none skipped
        assert model["n_finetune"] == model["n_selected"] and model["skipped_ids"] == []
        loaded = load_wyckoff(model["checkpoint"])
        assert loaded.metadata["parent"]["path"] == str(tiny_wyckoff)
        assert loaded.metadata["training"]["n_crystals"] == model["n_finetune"]
        assert model["final_loss"] <= model["parent_val_loss"]
    for model in result["models"]:
        for arity in ("4", "5"):
            r = model["results"][arity]
            assert [c["material_id"] for c in r["per_composition"]] == ids[arity]
            assert all(0.0 <= r["match_rate"][k] <= 1.0 for k in ("1", "2"))
    assert "fine-tuning the wyckoff model" in (out / "results.md").read_text()
    assert "| fine-tuned 100% | 10 |" in capsys.readouterr().out


def test_loop_fine_tunes_the_wyckoff_generator_between_rounds(tiny_wyckoff, tmp_path,
                                                               monkeypatch, one_torch_thread):
    from conftest import EmtRelaxAsDftMaker

    from xtalloop.runner import execute_loop

    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))  # where round 2 fetches to
    config = RunConfig.model_validate({
        "name": "wyckoff-loop", "compositions": ["Cu", "CuAu"], "charge_balance": "off",
        "generate": {"seed": 1, "max_atoms": 4, "sources": [
            {"n": 3}, {"kind": "wyckoff", "n": 2, "checkpoint": str(tiny_wyckoff)}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 60},
        "loop": {"rounds": 2}, "learn": {"generator": {"enabled": True, "epochs": 2}},
        "store": {"path": str(tmp_path / "store")}, "output_dir": str(tmp_path / "runs")})
    result = execute_loop(config, progress=False,
                          relax_maker=EmtRelaxAsDftMaker(steps=30, relax_kwargs={"fmax": 0.05}))
    assert result.status == "completed", result.failed_jobs
    first, second = result.rounds
    assert first["generator_used"] == str(tiny_wyckoff)
    tuned = first["generator"]
    assert tuned["checkpoint"].startswith("store:sha256:"), tuned["reason"]
    assert second["generator_used"] == tuned["checkpoint"]  # round 2 samples the new model
    digest = tuned["checkpoint"].removeprefix("store:sha256:")
    assert (tmp_path / "cache" / "generators" / f"{digest}.pt").is_file()
    assert second["generator"]["parent"] == tuned["checkpoint"]
    # random_symmetric makes 3 per composition: more means the Wyckoff source sampled too,
    # from the fine-tuned checkpoint fetched from the store (a job failure makes none)
    assert second["funnel"]["generated"] > 2 * 3

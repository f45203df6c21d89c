"""The active-learning loop: planning, stopping, rounds as a dynamic jobflow graph, resume."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from conftest import EmtRelaxAsDftMaker
from xtalloop.active_learning import plan_round, round_seed, stop_reason, summarise_round
from xtalloop.cli import app
from xtalloop.config import LoopConfig, RunConfig
from xtalloop.errors import ConfigError
from xtalloop.runner import execute_loop, unfinished_loop
from xtalloop.store.results import open_results


def loop_config(tmp_path, loop: dict, compositions=("Cu", "Au", "CuAu", "CuAgAu"),
                **extra) -> RunConfig:
    return RunConfig.model_validate({
        "name": "emt-loop", "compositions": list(compositions), "charge_balance": "off",
        "generate": {"seed": 1, "max_atoms": 4, "sources": [{"n": 3}]},
        "prefilter": {"model": "emt", "top_k": 2, "steps": 60},
        "loop": loop,
        "store": {"path": str(tmp_path / "store")}, "output_dir": str(tmp_path / "runs"),
        **extra,
    })


# --- configuration ---------------------------------------------------------------------


def test_loop_config_errors_name_the_key(tmp_path):
    config = tmp_path / "loop.yaml"
    config.write_text("name: x\ncompositions: [NaCl, MgO, Li3PS4]\n"
                      "loop: {schedule: [{arities: [2]}]}\n")
    from xtalloop.config import load_config

    with pytest.raises(ConfigError, match=r"compositions\[2\]: Li3PS4 has 3 elements, which no "
                                          r"loop.schedule stage includes"):
        load_config(config)
    config.write_text("name: x\ncompositions: [NaCl]\nloop: {targets: [MgO]}\n")
    with pytest.raises(ConfigError, match=r"loop: targets\[0\]: MgO is not one of the"):
        load_config(config)
    config.write_text("name: x\ncompositions: [NaCl]\nloop: {schedule: [{arities: []}]}\n")
    with pytest.raises(ConfigError, match=r"loop.schedule\[0\].arities"):
        load_config(config)
    config.write_text("name: x\ncompositions: [NaCl]\nlearn: {generator: {enabled: true}}\n")
    with pytest.raises(ConfigError, match="needs a diffusion or wyckoff source"):
        load_config(config)


def test_schedule_stages_and_total_rounds():
    loop = LoopConfig(schedule=[{"arities": [2, 3], "rounds": 2}, {"arities": [4]}])
    assert loop.total_rounds == 3
    assert [loop.stage(i).arities for i in (1, 2, 3, 4)] == [(2, 3), (2, 3), (4,), (4,)]
    assert LoopConfig().total_rounds == 2 and LoopConfig().stage(1) is None
    assert LoopConfig(rounds=5, schedule=[{"arities": [2]}]).total_rounds == 5


# --- planning and stopping --------------------------------------------------------------


def test_plan_follows_the_arity_schedule_and_the_dft_budget(tmp_path):
    config = loop_config(tmp_path, {"schedule": [{"arities": [1, 2]}, {"arities": [3]}],
                                    "dft_budget_per_round": 2})
    first = plan_round(config, [], 1, stable_formulas={"Cu"})
    # three compositions, budget 2: the ones without a stable structure go first, one pick each
    assert first.compositions == ["Au", "CuAu"] and first.deferred == ["Cu"]
    assert first.top_k == 1 and first.seed == round_seed(1, 1) == 1
    second = plan_round(config, [{"round": 1, "dft_calls": 2, "new_stable": 1}], 2, set())
    assert second.compositions == ["CuAgAu"] and second.top_k == 2 and second.seed == 1001
    resumed = plan_round(config, [], 1, set(), done={"Au"})
    assert resumed.compositions == ["Cu", "CuAu"] and resumed.done == ["Au"]
    # the first attempt's DFT call counts against the round's budget of 2
    resumed = plan_round(config, [], 1, set(), done={"Au"}, spent=1)
    assert resumed.compositions == ["Cu"] and resumed.deferred == ["CuAu"]
    spent = plan_round(config, [], 1, set(), done={"Au"}, spent=2)
    assert spent.compositions == [] and spent.deferred == ["Cu", "CuAu"]


def test_stopping_criteria():
    loop = LoopConfig(rounds=5, max_dft_calls=10, patience=2, targets=["CuAu"])
    assert stop_reason(loop, [], 1, set()) is None
    assert stop_reason(loop, [{"dft_calls": 6}, {"dft_calls": 4}], 3, set()) == \
        "DFT budget spent (10 of 10 calls)"
    quiet = [{"dft_calls": 1, "new_stable": 1}, {"dft_calls": 1, "new_stable": 0},
             {"dft_calls": 1, "new_stable": 0}]
    assert "no new stable structure in the last 2" in stop_reason(loop, quiet, 4, set())
    assert stop_reason(loop, quiet[:2], 3, set()) is None
    assert stop_reason(loop, [], 2, {"CuAu", "Cu"}) == "targets reached: CuAu"
    assert stop_reason(loop, [], 6, set()) == "all 5 rounds done"


def test_round_summary_counts_hits_over_dft_calls():
    results = [
        {"formula": "A", "funnel": {"generated": 10, "relaxed": 9, "picked": 2},
         "validated": [{"uuid": "a", "outcome": "new", "e_above_hull": 0.0},
                       {"uuid": "b", "outcome": "duplicate", "e_above_hull": 0.05}],
         "failed": []},
        {"formula": "B", "funnel": {"generated": 10, "relaxed": 10, "picked": 2},
         "validated": [{"uuid": "c", "outcome": "new", "e_above_hull": 0.5}],
         "failed": [{"rank": 1, "reason": "SCF"}]},
    ]
    # a structure found later moved "a" off the hull: the current value counts
    summary = summarise_round(results, 0.1, {"a": 0.2, "b": 0.05, "c": 0.5})
    assert summary["dft_calls"] == 4 and summary["validated"] == 3
    assert summary["stable"] == 1 and summary["new_stable"] == 0
    assert summary["hit_rate"] == pytest.approx(0.25)
    assert summary["funnel"] == {"generated": 20, "relaxed": 19, "picked": 4,
                                 "dft_validated": 3, "stable": 1}


# --- the loop end to end (EMT in place of DFT) -------------------------------------------------


def test_loop_runs_rounds_by_arity_records_them_and_reports(tmp_path, one_torch_thread,
                                                            monkeypatch):
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    config = loop_config(
        tmp_path, {"schedule": [{"arities": [1, 2]}, {"arities": [2, 3]}]},
        learn={"energy_model": {"enabled": True, "architecture": "mace", "ensemble_size": 1,
                                "epochs": 4, "num_channels": 8, "r_max": 4.0, "min_structures": 2,
                                "holdout_fraction": 0.3}},
        prefilter={"model": "registry", "base_model": "emt", "top_k": 2, "steps": 60})
    maker = EmtRelaxAsDftMaker(steps=30, relax_kwargs={"fmax": 0.05})
    result = execute_loop(config, progress=False, relax_maker=maker)

    assert result.status == "completed" and result.stopped_by == "all 2 rounds done"
    assert result.failed_jobs == []
    first, second = result.rounds
    assert first["compositions"] == ["Cu", "Au", "CuAu"] and first["arities"] == [1, 2]
    assert second["compositions"] == ["CuAu", "CuAgAu"]
    assert second["seed"] == first["seed"] + 1000
    for record in result.rounds:
        assert record["status"] == "completed"
        assert record["dft_calls"] == record["funnel"]["dft_validated"] >= 1
        assert record["hit_rate"] == pytest.approx(record["stable"] / record["dft_calls"])
    # round 1 trained an energy model; round 2 prefiltered with it if it was promoted
    learned = first["energy_model"]
    assert learned["model_id"] == "mace-1" and first["energy_model_used"] == "emt"
    # (CuAgAu falls back to EMT: mace-1 has never seen Ag)
    assert second["energy_model_used"] == ("emt, mace-1" if learned["promoted"] else "emt")
    with open_results(config.store) as db:
        loop = db.get_run(result.loop_id)
        assert loop["kind"] == "loop" and loop["status"] == "completed"
        assert loop["rounds_completed"] == 2
        docs = db.find_validated(run_id=f"{result.loop_id}-r2")
        assert docs and all(d["run"]["round"] == 2 for d in docs)
        assert db.get_run(f"{result.loop_id}-r1")["kind"] == "round"

    report = result.report
    assert report == result.run_dir / "report" / "report.html"
    text = report.read_text()
    for name in ("rounds.png", "funnel.png", "hull_Au-Cu.png", "hull_Ag-Au-Cu.png",
                 "models.png"):
        assert (report.parent / name).stat().st_size > 10_000, name
        assert f"({name})" in text
    cifs = sorted((report.parent / "cifs").glob("*.cif"))
    assert {c.name.split("_")[0] for c in cifs} == {"Cu", "Au", "CuAu", "CuAgAu"}
    assert all(f'href="cifs/{c.name}"' in text for c in cifs)
    assert "all 2 rounds done" in text

    # the report command writes the same from the run folder, in another folder
    out = CliRunner().invoke(app, ["report", str(result.run_dir), "--out",
                                   str(tmp_path / "again")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "again" / "report.html").is_file()
    missing = CliRunner().invoke(app, ["report", "nope-123", "--store", config.store.path])
    assert missing.exit_code != 0 and "no run 'nope-123'" in missing.output


FLAG = "XTALLOOP_TEST_KILL_FLAG"


@dataclass
class KilledEmtMaker(EmtRelaxAsDftMaker):
    """EMT "DFT" whose CuAgAu relaxation is killed (KeyboardInterrupt) while a flag file exists."""

    def calculator_for(self, structure, remedy=None):
        flag = os.environ.get(FLAG)
        if structure.composition.reduced_formula == "CuAgAu" and flag and Path(flag).exists():
            raise KeyboardInterrupt
        return super().calculator_for(structure, remedy)


def test_a_killed_loop_resumes_without_losing_or_redoing_work(tmp_path, monkeypatch):
    flag = tmp_path / "kill"
    flag.touch()
    monkeypatch.setenv(FLAG, str(flag))
    config = loop_config(tmp_path, {"schedule": [{"arities": [1]}, {"arities": [2, 3]}]})
    maker = KilledEmtMaker(steps=30, relax_kwargs={"fmax": 0.05})
    with pytest.raises(KeyboardInterrupt):
        execute_loop(config, progress=False, relax_maker=maker)

    unfinished = unfinished_loop(config)
    assert unfinished is not None
    loop_id = unfinished["id"]
    with open_results(config.store) as db:
        first, second = db.rounds(loop_id)
        assert first["status"] == "completed" and second["status"] == "running"
        # CuAu of round 2 was validated before the kill: it is in the store
        assert [r["formula"] for r in db.composition_results(f"{loop_id}-r2")] == ["CuAu"]
        kept = {d["uuid"] for d in db.find_validated()}

    flag.unlink()
    result = execute_loop(config, progress=False, relax_maker=maker)
    assert result.loop_id == loop_id and result.resumed_from == 2
    assert result.status == "completed"
    first_again, second = result.rounds
    assert first_again["finished_at"] == first["finished_at"]  # round 1 was not run again
    assert second["done"] == ["CuAu"] and second["compositions"] == ["CuAgAu"]
    assert second["compositions_validated"] == ["CuAgAu", "CuAu"]
    with open_results(config.store) as db:
        assert kept <= {d["uuid"] for d in db.find_validated()}
        assert db.find_validated(formula="CuAgAu")
    # a new loop of the same name starts from round 1 on request
    assert unfinished_loop(config) is None


def test_a_round_killed_after_spending_its_budget_resumes_with_nothing_to_validate(
        tmp_path, monkeypatch):
    """Killed while recording round 2, whose budget its one validation had spent: the
    resumed round validates nothing more (the deferred composition stays deferred)."""
    from jobflow import job

    import xtalloop.workflows.loop as loop_module

    original = loop_module.record_round
    flag = tmp_path / "kill"
    flag.touch()

    @job
    def killed_record(store, loop_id, round_index, *args, **kwargs):
        if round_index == 2 and flag.exists():
            raise KeyboardInterrupt
        return original.original(store, loop_id, round_index, *args, **kwargs)

    monkeypatch.setattr(loop_module, "record_round", killed_record)
    config = loop_config(tmp_path, {"schedule": [{"arities": [1]}, {"arities": [2]}],
                                    "dft_budget_per_round": 1},
                         compositions=("Cu", "CuAu", "CuAg"))
    maker = EmtRelaxAsDftMaker(steps=30, relax_kwargs={"fmax": 0.05})
    with pytest.raises(KeyboardInterrupt):
        execute_loop(config, progress=False, relax_maker=maker)
    loop_id = unfinished_loop(config)["id"]
    with open_results(config.store) as db:
        assert [r["formula"] for r in db.composition_results(f"{loop_id}-r2")] == ["CuAu"]

    flag.unlink()
    result = execute_loop(config, progress=False, relax_maker=maker)
    assert result.status == "completed" and result.resumed_from == 2
    second = result.rounds[1]
    assert second["compositions"] == [] and second["deferred"] == ["CuAg"]
    assert second["compositions_validated"] == ["CuAu"] and second["dft_calls"] == 1
    with open_results(config.store) as db:
        assert not db.find_validated(formula="CuAg")


def test_generator_is_fine_tuned_between_rounds(tmp_path, one_torch_thread, monkeypatch):
    from xtalloop.generators.diffusion import (
        DiffusionConfig,
        ModelConfig,
        NoiseConfig,
        TrainConfig,
        read_checkpoint,
        structures_to_dataset,
        train,
    )
    from xtalloop.store.files import local_copy

    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))  # where round 2 fetches to
    fcc = [Structure(Lattice.cubic(a), [el] * 4,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
           for el, a in (("Cu", 3.61), ("Au", 4.08), ("Ag", 4.09))]
    fcc += [s.get_primitive_structure() for s in fcc]
    base = train(DiffusionConfig(model=ModelConfig(hidden_dim=16, n_layers=1, n_frequencies=2,
                                                   time_dim=8),
                                 noise=NoiseConfig(timesteps=20),
                                 train=TrainConfig(epochs=2, batch_size=3, save_every=0)),
                 structures_to_dataset(fcc), tmp_path / "base.pt", progress=False)
    config = loop_config(
        tmp_path, {"rounds": 2}, compositions=("Cu", "CuAu"),
        generate={"seed": 1, "max_atoms": 4,
                  "sources": [{"n": 3}, {"kind": "diffusion", "n": 2, "checkpoint": str(base)}]},
        prefilter={"model": "emt", "top_k": 1, "steps": 60},
        learn={"generator": {"enabled": True, "epochs": 2, "min_structures": 1}})
    result = execute_loop(config, progress=False,
                          relax_maker=EmtRelaxAsDftMaker(steps=30, relax_kwargs={"fmax": 0.05}))
    assert result.status == "completed", result.failed_jobs
    first, second = result.rounds
    assert first["generator_used"] == str(base)
    tuned = first["generator"]
    assert tuned["checkpoint"] and tuned["n_structures"] >= 1
    assert second["generator_used"] == tuned["checkpoint"]  # round 2 samples the new model
    # ... from the store, not from the folder of the job that wrote it
    assert tuned["checkpoint"].startswith("store:sha256:") and tuned["path"].endswith(".pt")
    digest = tuned["checkpoint"].removeprefix("store:sha256:")
    assert [p.name for p in (tmp_path / "cache" / "generators").iterdir()] == [f"{digest}.pt"]
    local = local_copy(tuned["checkpoint"], config.store, ".pt", "generators")
    assert read_checkpoint(local)["parent"]["path"].endswith("base.pt")
    with open_results(config.store) as db:
        generators = {d["generator"]["generator"] for d in db.find_validated()}
    assert "random_symmetric" in generators


# --- the real loop: GPAW, CHGNet, MACE (make test-slow) -------------------------------------


ACTIVE_LEARNING = Path(__file__).parent.parent / "configs" / "active_learning.yaml"


@pytest.mark.slow
@pytest.mark.dft
def test_active_learning_config_killed_and_resumed_with_gpaw(tmp_path, require_gpaw):
    """The README's loop: killed during round 2, run again, finished within the hour."""
    import signal
    import subprocess
    import sys
    import time

    from xtalloop.config import StoreConfig

    store = StoreConfig(path=str(tmp_path / "store"))
    command = [sys.executable, "-m", "xtalloop.cli", "run", str(ACTIVE_LEARNING),
               "--store", store.path, "--output-dir", str(tmp_path / "runs"), "--no-progress"]
    started = time.monotonic()
    log = tmp_path / "first.log"  # a file, not a pipe: a full pipe would block the run
    first = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    loop_id = None
    while first.poll() is None and time.monotonic() - started < 3600:
        time.sleep(10)
        with open_results(store) as db:
            loops = list(db.store("runs").query({"kind": "loop"}))
            if loops:
                loop_id = loops[0]["id"]
                if db.composition_results(f"{loop_id}-r2"):  # round 2 is under way
                    first.send_signal(signal.SIGKILL)
                    break
    first.wait()
    assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    with open_results(store) as db:
        done_before = {r["formula"] for r in db.composition_results(f"{loop_id}-r2")}
        kept = {d["uuid"] for d in db.find_validated()}

    second = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"resuming loop {loop_id}" in second.stdout
    with open_results(store) as db:
        rounds = db.rounds(loop_id)
        assert [r["status"] for r in rounds] == ["completed", "completed"]
        assert set(rounds[1]["done"]) == done_before  # not validated twice
        assert kept <= {d["uuid"] for d in db.find_validated()}
        assert rounds[0]["energy_model"]["model_id"]  # round 1 fine-tuned CHGNet
    report = tmp_path / "runs" / loop_id / "report" / "report.html"
    assert report.is_file() and "(rounds.png)" in report.read_text()
    assert elapsed < 3600, f"{elapsed / 60:.0f} min"

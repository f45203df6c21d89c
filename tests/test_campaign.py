"""The learning campaign (issue 20): targets, arm configs, scoring, a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from xtalloop.benchmark.campaign import (
    ARMS,
    CampaignSettings,
    arm_config,
    run_campaign,
)
from xtalloop.benchmark.campaign_report import headline, markdown_table, write_outputs
from xtalloop.benchmark.campaign_targets import choose_targets
from xtalloop.benchmark.campaign_score import KnownEnergies, is_hit, score_arm
from xtalloop.benchmark.campaign_state import restore_state, save_state
from xtalloop.config import RunConfig
from xtalloop.errors import ConfigError, DataError
from xtalloop.store.results import open_results


def l12(a: float = 3.75) -> Structure:
    """Cu3Au, the L1_2 ground state."""
    return Structure(Lattice.cubic(a), ["Au", "Cu", "Cu", "Cu"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def layered(a: float = 3.75) -> Structure:
    """Cu3Au in another arrangement: fcc layers stacked Au/Cu/Cu/Cu along c (not L1_2)."""
    lat = Lattice.tetragonal(a / 2 ** 0.5, 2 * a)
    return Structure(lat, ["Au", "Cu", "Cu", "Cu"],
                     [[0, 0, 0], [0.5, 0.5, 0.25], [0, 0, 0.5], [0.5, 0.5, 0.75]])


def hexagonal() -> Structure:
    """Cu3Au on a double-hcp (ABAC) stacking: neither L1_2 nor :func:`layered`."""
    return Structure(Lattice.hexagonal(2.65, 8.6), ["Au", "Cu", "Cu", "Cu"],
                     [[0, 0, 0], [1 / 3, 2 / 3, 0.25], [0, 0, 0.5], [2 / 3, 1 / 3, 0.75]])


def b2(a_el: str, b_el: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]])


def heusler() -> Structure:
    """Cu2AgAu-like ordered fcc cell (a ternary target EMT can evaluate)."""
    return Structure(Lattice.cubic(3.9), ["Ag", "Au", "Cu", "Cu"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def table(path: Path, structures: list[Structure]) -> Path:
    pd.DataFrame({"material_id": [f"m-{i}" for i in range(len(structures))],
                  "cif": [s.to(fmt="cif") for s in structures]}).to_csv(path, index=False)
    return path


def test_hit_is_a_match_or_an_energy_at_or_below_the_known_one():
    known = l12()
    moved = l12(3.9)  # the same structure, another volume: StructureMatcher scales
    moved.perturb(0.05)
    assert is_hit(moved, -3.0, known, -3.5) == {"match": True, "lower": False, "hit": True}
    other = layered()
    assert is_hit(other, -3.0, known, -3.5) == {"match": False, "lower": False, "hit": False}
    assert is_hit(other, -3.6, known, -3.5)["hit"]  # lower than the known structure
    assert is_hit(other, -3.5, known, -3.5)["lower"]  # "at or below"
    assert not is_hit(other, -3.49, known, -3.5)["hit"]
    assert is_hit(other, -3.49, known, -3.5, tolerance=0.02)["hit"]
    assert not is_hit(other, None, known, -3.5)["hit"]  # no energy: only a match counts
    assert not is_hit(other, -9.0, known, None)["hit"]  # the known one failed to relax


def test_targets_are_seeded_distinct_per_arity_and_fit_the_cell(tmp_path):
    structures = [b2("Cu", "Au", 3.0), b2("Cu", "Au", 3.1), b2("Ag", "Pd", 3.1),
                  b2("Ni", "Al", 2.9), l12(), heusler(), b2("Cu", "Pt", 3.0)]
    big = l12()
    big.make_supercell([3, 3, 3])  # 108 atoms: larger than max_atoms
    big.replace(0, "Pt")  # a distinct ternary formula that only a big cell has
    path = table(tmp_path / "val.csv", [*structures, big])
    settings = CampaignSettings(data=(str(path),), per_arity=3, arities=("2", "3"),
                                max_atoms=8, seed=1)
    first = choose_targets(settings)
    assert first == choose_targets(settings)  # seeded
    formulas = [t["formula"] for t in first]
    assert len(formulas) == len(set(formulas))  # CuAu twice in the table, once here
    assert [t["arity"] for t in first] == ["2"] * 3 + ["3"]
    assert all(t["nsites"] <= 8 for t in first)
    assert formulas[3] == "Cu2AgAu"  # the big ternary Cu81PtAu26 does not fit
    draws = {tuple(t["formula"] for t in choose_targets(CampaignSettings(
        data=(str(path),), per_arity=3, arities=("2", "3"), seed=seed, max_atoms=8)))
        for seed in range(6)}
    assert len(draws) > 1  # the seed decides which three of the five binaries
    no_ni = choose_targets(settings, usable=lambda els: els - {"Ni"})
    assert "AlNi" not in {t["formula"] for t in no_ni}
    with pytest.raises(ConfigError, match="arities"):
        CampaignSettings(arities=("6",))


def test_every_arm_config_is_a_valid_loop_that_differs_only_in_learning(tmp_path,
                                                                         tiny_wyckoff):
    settings = CampaignSettings(checkpoint=str(tiny_wyckoff), budget=7, energy_frames=2,
                                energy_replay_neighbours=1, energy_steps=450)
    configs = {arm: arm_config(settings, arm, ["CuAu", "AgCuAu2"], tmp_path) for arm in ARMS}
    for arm, data in configs.items():
        config = RunConfig.model_validate(data)
        assert config.dft.code == "mlip" and config.dft.mlip.model == "diep"
        assert config.loop.dft_budget_per_round == 7
        assert [s.arities for s in config.loop.schedule] == [(2,), (3,), (4,), (5, 6, 7, 8, 9)]
        assert (config.learn.energy_model.enabled, config.learn.generator.enabled) == ARMS[arm]
        assert (config.prefilter.model == "registry") == ARMS[arm][0]
        if ARMS[arm][0]:  # the energy arms fine-tune the pretrained prefilter
            assert config.learn.energy_model.architecture == "chgnet"
            assert config.learn.energy_model.max_frames_per_relaxation == 2
            assert config.learn.energy_model.chgnet.replay_neighbours == 1
            assert config.learn.energy_model.chgnet.max_steps == 450
        assert config.store.path.endswith(f"{arm}/store")
    strip = {"name", "learn", "prefilter", "store", "output_dir"}
    same = [{k: v for k, v in c.items() if k not in strip} for c in configs.values()]
    assert all(s == same[0] for s in same)  # same targets, seeds, generator, budget


def _store_round(folder: Path, known: Structure) -> str:
    """An arm's store with one round: a match (high energy), a non-match, a lower non-match."""
    from xtalloop.config import StoreConfig

    loop_id = "campaign-a-1"
    run_id = f"{loop_id}-r1"
    rows = []
    with open_results(StoreConfig(path=str(folder / "store"))) as db:
        for structure, energy, generator in (
                (l12(3.8), 1.0, {"generator": "wyckoff", "proposed": True}),
                (layered(), 0.5, {"generator": "wyckoff", "proposed": False,
                                  "coordinates": "model"}),
                (hexagonal(), -99.0, {"generator": "prototype_substitution"})):
            uuid, _ = db.add_validated({
                "formula": "Cu3Au", "chemsys": "Au-Cu", "structure": structure.as_dict(),
                "energy_per_atom": energy, "e_above_hull": 0.0, "nsites": 4,
                "generator": generator, "dft": {"settings_key": "k", "converged": True},
                "run": {"id": run_id}})
            rows.append({"uuid": uuid, "energy_per_atom": energy, "converged": True})
        # the round's own record of a pick wins over the stored structure's latest provenance
        rows[0].update(generator="wyckoff", proposed=False, coordinates="bank")
        db.save_composition_result(run_id, {"formula": "Cu3Au", "validated": rows,
                                            "failed": [{"rank": 4, "reason": "boom"}]})
        db.save_round({"loop_id": loop_id, "round": 1, "run_id": run_id,
                       "status": "completed", "started_at": "2026-01-01T00:00:00",
                       "finished_at": "2026-01-01T00:01:30"})
    return loop_id


def test_scoring_counts_matches_and_lower_energies_and_caches(tmp_path, monkeypatch):
    known = l12()
    settings = CampaignSettings(validator="emt", arities=("2",), validator_steps=100)
    target = {"formula": "Cu3Au", "arity": "2", "material_id": "m-0", "cif": known.to(fmt="cif")}
    loop_id = _store_round(tmp_path / "a", known)
    energies = KnownEnergies(tmp_path / "known.json", settings)
    scored = score_arm(settings, tmp_path / "a", loop_id, [target], energies,
                       generated={"Cu3Au": False})
    (row, total) = scored["rounds"]
    # no generated candidate was L1_2, yet the composition was hit (after relaxation)
    assert row["generated"] == total["generated"] == {
        "hit": 0, "missed": 0, "other_hit": 1, "other_missed": 0}
    assert row["arity"] == "2" and total["arity"] == "all"
    # the L1_2 pick matches; the layered one at +0.5 eV/atom does not; the one the validator
    # put below the known structure's EMT energy is a hit without matching
    assert (row["validations"], row["hits"], row["matches"], row["lower"]) == (4, 2, 1, 1)
    assert row["hits_per_100"] == pytest.approx(50.0)
    assert row["hit_rate"] == 1.0 and row["ground_states"] == 1 and row["wall_s"] == 90.0
    assert total["by_origin"] == row["by_origin"] == {  # the failed validation has no origin
        "wyckoff sample, known coordinates": {"picks": 1, "hits": 1},
        "wyckoff sample, own coordinates": {"picks": 1, "hits": 0},
        "prototype_substitution": {"picks": 1, "hits": 1}}
    cached = json.loads((tmp_path / "known.json").read_text())
    assert -1.0 < cached["m-0"]["energy_per_atom"] < 0.5  # EMT's Cu3Au, relaxed once
    # a second scoring reads the verdicts and the known energy from the caches
    monkeypatch.setattr(KnownEnergies, "_relax", lambda *a: pytest.fail("relaxed twice"))
    monkeypatch.setattr("xtalloop.benchmark.campaign_score.is_hit",
                        lambda *a, **k: pytest.fail("scored twice"))
    again = score_arm(settings, tmp_path / "a", loop_id, [target],
                      KnownEnergies(tmp_path / "known.json", settings), {"Cu3Au": False})
    assert again == scored
    result = {"settings": {**vars(settings), "checkpoint": "x"}, "targets": [target],
              "arms": {"a": {**scored, "wall_s": 90.0}, "d": {**scored, "wall_s": 1.0}}}
    result["settings"]["arities"] = ["2"]
    assert headline(result)["d_over_a"] is None  # no 4- or 5-element rounds
    table = markdown_table(result)
    assert "| a (nothing learns) | 1 | 2 | 1 | 4 | 2 | 100.0% | 50.0 | 1, 1 | 90 |" in table
    assert ("| arm | round | prototype_substitution | wyckoff sample, known coordinates | "
            "wyckoff sample, own coordinates |") in table
    assert "| d | 1 | 1 / 1 | 1 / 1 | 0 / 1 |" in table
    assert "| a | 1 | 1 | 0 | 0 | 0 | 1 | 0 |" in table  # where compositions were won


def test_generated_matches_compares_the_newest_generate_output_once(tmp_path, monkeypatch):
    """The funnel reads each target's stored candidates: the newest job's, cached by uuid."""
    from xtalloop.benchmark.campaign_funnel import generated_matches
    from xtalloop.config import StoreConfig
    from xtalloop.generators.base import Candidate
    from xtalloop.store.backends import job_store

    known = l12()
    targets = [{"formula": f, "arity": "2", "material_id": f"m-{f}", "cif": known.to(fmt="cif")}
               for f in ("Cu3Au", "CuAu")]

    def doc(uuid, name, when, structures):
        return {"uuid": uuid, "index": 1, "name": name, "completed_time": when,
                "output": [Candidate(structure=s, generator="wyckoff", seed=0, index=i).as_dict()
                           for i, s in enumerate(structures)]}

    store = job_store(StoreConfig(path=str(tmp_path / "a" / "store")))
    store.connect()
    store.docs_store.update([
        doc("old", "Cu3Au generate", "2026-01-01T00:00:00", [layered()]),
        doc("new", "Cu3Au generate", "2026-01-02T00:00:00", [layered(), l12(3.9)]),
        doc("other", "CuAu generate", "2026-01-01T00:00:00", [hexagonal()]),
        doc("stray", "NaCl generate", "2026-01-01T00:00:00", [l12()]),  # not a target
    ], key="uuid")
    store.close()
    assert generated_matches(tmp_path / "a", targets) == {"Cu3Au": True, "CuAu": False}
    assert json.loads((tmp_path / "a" / "generated.json").read_text()) == {
        "new": True, "other": False}
    monkeypatch.setattr("xtalloop.benchmark.campaign_funnel._fits",
                        lambda *a: pytest.fail("compared twice"))
    assert generated_matches(tmp_path / "a", targets) == {"Cu3Au": True, "CuAu": False}


def test_tiny_campaign_runs_every_stage_and_resumes(tiny_wyckoff, tmp_path, monkeypatch,
                                                    one_torch_thread):
    """Two EMT arms over two binaries and a ternary: the real loop, scored, then resumed."""
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    path = table(tmp_path / "val.csv", [l12(), b2("Cu", "Au", 3.0), heusler()])
    settings = CampaignSettings(
        data=(str(path),), per_arity=2, arities=("2", "3"), budget=2, candidates=3,
        checkpoint=str(tiny_wyckoff), max_atoms=8, prefilter="emt", validator="emt",
        prefilter_steps=40, validator_steps=60, generator_epochs=1)
    result = run_campaign(settings, ["a", "c"], tmp_path / "work")
    assert sorted(t["formula"] for t in result["targets"]) == ["Cu2AgAu", "Cu3Au", "CuAu"]
    for arm in ("a", "c"):
        rows = [r for r in result["arms"][arm]["rounds"] if r["arity"] != "all"]
        assert [(r["round"], r["arity"]) for r in rows] == [(1, "2"), (2, "3")]
        assert all(0 < r["validations"] <= 2 for r in rows)  # the budget per round
        assert all(r["hits"] <= r["validations"] for r in rows)
        assert result["arms"][arm]["status"] == "completed"
        for r in rows:  # every validated pick's origin, from the round's own record
            assert all(o.startswith("wyckoff ") for o in r["by_origin"])
            assert sum(o["hits"] for o in r["by_origin"].values()) == r["hits"]
            funnel = r["generated"]  # every composition's candidates were stored and compared
            assert sum(funnel.values()) == r["compositions"]
            assert funnel["hit"] + funnel["other_hit"] == r["hit_compositions"]
    # the same seeds: round 1 of both arms sampled the same base generator identically
    def round_one(arm):
        return [{k: v for k, v in r.items() if k != "wall_s"}
                for r in result["arms"][arm]["rounds"] if r["round"] == 1]
    assert round_one("a") == round_one("c")
    paths = write_outputs(result, tmp_path / "out")
    assert paths["png"].stat().st_size > 0
    # `xtalloop report` of an arm's loop shows the same per-round known-structure figures
    from xtalloop.config import StoreConfig
    from xtalloop.report import write_report

    report = write_report(StoreConfig(path=str(tmp_path / "work" / "a" / "store")),
                          result["arms"]["a"]["loop_id"], tmp_path / "report")
    page = (report if report.suffix == ".html" else report / "report.html").read_text()
    assert "known-structure hits" in page
    for r in (r for r in result["arms"]["a"]["rounds"] if r["arity"] == "all"):
        assert f"{r['hits']} of {r['validations']}" in page
    assert json.loads(paths["json"].read_text())["arms"].keys() == {"a", "c"}
    # run again: nothing is rerun, the finished loops are scored from the caches
    monkeypatch.setattr("xtalloop.runner.execute_loop",
                        lambda *a, **k: pytest.fail("a finished loop ran again"))
    again = run_campaign(settings, ["a", "c"], tmp_path / "work")
    assert again["arms"]["a"]["loop_id"] == result["arms"]["a"]["loop_id"]
    assert again["arms"]["a"]["rounds"] == result["arms"]["a"]["rounds"]
    scored = run_campaign(settings, ["a", "b"], tmp_path / "work", score_only=True)
    assert scored["arms"].keys() == {"a"}  # b never started: left out, not run
    assert scored["arms"]["a"]["rounds"] == result["arms"]["a"]["rounds"]
    assert scored["arms"]["a"]["status"] == "completed"
    with pytest.raises(ConfigError, match="other settings .*budget"):
        run_campaign(CampaignSettings(**{**vars(settings), "budget": 3}), ["a"],
                     tmp_path / "work")
    # the same tables by another path (another checkout's ../shared): the same campaign
    elsewhere = tuple(str(Path(p).parent / ".." / Path(p).parent.name / Path(p).name)
                      for p in settings.data)
    moved = CampaignSettings(**{**vars(settings), "data": elsewhere})
    assert run_campaign(moved, ["a"], tmp_path / "work", score_only=True)["arms"]["a"][
        "rounds"] == result["arms"]["a"]["rounds"]
    # carried to another machine: packed, unpacked into a new --work, scored the same
    state = save_state(tmp_path / "work", tmp_path / "state", note="test")
    assert set(state["parts"]) == {"common", "a", "c"}
    assert restore_state(tmp_path / "state", tmp_path / "work2", ["a"]) == ["common", "a"]
    assert run_campaign(settings, ["a"], tmp_path / "work2", score_only=True)["arms"]["a"][
        "rounds"] == result["arms"]["a"]["rounds"]
    with pytest.raises(DataError, match="exists"):  # never over a live arm
        restore_state(tmp_path / "state", tmp_path / "work2", ["a"])
    archive = tmp_path / "state" / "c.tar.xz"
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(DataError, match="sha256"):
        restore_state(tmp_path / "state", tmp_path / "work3")
    assert not (tmp_path / "work3").exists()  # checked before anything is unpacked
    copy = tmp_path / "state" / "common" / "targets.json"
    copy.write_text(copy.read_text().replace("Cu", "Ag"))
    with pytest.raises(DataError, match="targets.json.*sha256"):
        restore_state(tmp_path / "state", tmp_path / "work3", ["a"])
    # a campaign saved before a setting existed resumes as what it did then
    saved = tmp_path / "work" / "targets.json"
    before = json.loads(saved.read_text())
    del before["settings"]["energy_architecture"]
    saved.write_text(json.dumps(before))
    with pytest.raises(ConfigError, match="other settings .*energy_architecture"):
        run_campaign(settings, ["a"], tmp_path / "work", score_only=True)
    mace = CampaignSettings(**{**vars(settings), "energy_architecture": "mace"})
    assert run_campaign(mace, ["a"], tmp_path / "work", score_only=True)["arms"]["a"][
        "rounds"] == result["arms"]["a"]["rounds"]


def test_a_restored_campaign_finds_its_checkpoint_by_name(tmp_path):
    """On a new machine the saved checkpoint path is gone: the same name is the same file."""
    from xtalloop.benchmark.campaign import _same

    here = tmp_path / "work" / "base.pt"
    here.parent.mkdir()
    here.write_bytes(b"x")
    assert _same("checkpoint", "/gone/elsewhere/base.pt", str(here))
    assert not _same("checkpoint", "/gone/elsewhere/other.pt", str(here))
    assert not _same("checkpoint", str(tmp_path / "other.pt"), str(here))  # gone: by name
    (tmp_path / "other.pt").write_bytes(b"y")  # both present: the paths decide
    assert not _same("checkpoint", str(tmp_path / "other.pt"), str(here))
    assert _same("budget", 50, 50) and not _same("budget", 50, 40)


def test_restore_refuses_a_state_that_is_not_one(tmp_path):
    with pytest.raises(DataError, match="not a saved campaign state"):
        restore_state(tmp_path, tmp_path / "work")
    with pytest.raises(DataError, match="no campaign"):
        save_state(tmp_path, tmp_path / "state")


def test_saved_state_leaves_out_superseded_checkpoints_and_can_trust_models(tmp_path,
                                                                            monkeypatch):
    """A learning arm keeps one generator checkpoint per round: only the newest travels, the
    older ones are named in the manifest; restored energy models are trusted only on request."""
    from xtalloop.config import StoreConfig
    from xtalloop.models import trust
    from xtalloop.store.files import FileStore, ref

    monkeypatch.setenv("XTALLOOP_TRUST", str(tmp_path / "trusted.json"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "targets.json").write_text("{}")
    with FileStore(StoreConfig(path=str(work / "d" / "store"))) as files:
        first = files.put(b"round 1 weights", {"kind": "generator checkpoint",
                                               "parent": "/base.pt"})
        second = files.put(b"round 2 weights", {"kind": "generator checkpoint",
                                                "parent": ref(first)})
        model = files.put(b"chgnet weights", {"kind": "energy model", "model_id": "chgnet-1",
                                              "name": "m.chgnet.pt"})
        other = files.put(b"a trajectory", {"kind": "trajectory", "parent": ref(second)})
    manifest = save_state(work, tmp_path / "state")
    left = manifest["parts"]["d"]["left_out"]
    assert [(Path(e["path"]).name, e["why"]) for e in left] == [
        (first, "superseded generator checkpoint")]
    restore_state(tmp_path / "state", tmp_path / "plain")
    stored = tmp_path / "plain" / "d" / "store" / "files"
    assert not (stored / first[:2] / first).exists()
    assert (stored / first[:2] / f"{first}.json").is_file()  # what it was stays described
    for digest in (second, model, other):
        assert (stored / digest[:2] / digest).is_file()
    assert not trust.is_trusted(model)
    restore_state(tmp_path / "state", tmp_path / "trusting", trust_models=True)
    assert trust.is_trusted(model) and not trust.is_trusted(second)
    assert "arm d, chgnet-1" in trust.trusted()[model]["source"]


def test_a_big_arm_archive_travels_as_volumes(tmp_path):
    """An arm's archive over the volume size is cut into numbered files that restore as one;
    a missing volume is one clear error, and a later smaller save leaves no stale volume."""
    import os

    work = tmp_path / "work"
    (work / "a" / "store").mkdir(parents=True)
    (work / "targets.json").write_text("{}")
    blob = os.urandom(50_000)  # incompressible: the archive is about this big
    (work / "a" / "store" / "jobs.collection").write_bytes(blob)
    (work / "a" / "scores.json").write_text('{"round": 1}')
    manifest = save_state(work, tmp_path / "state", volume_bytes=20_000)
    volumes = [v["name"] for v in manifest["parts"]["a"]["volumes"]]
    assert volumes == ["a.tar.xz.000", "a.tar.xz.001", "a.tar.xz.002"]
    assert all((tmp_path / "state" / v).stat().st_size <= 20_000 for v in volumes)
    restore_state(tmp_path / "state", tmp_path / "back")
    assert (tmp_path / "back" / "a" / "store" / "jobs.collection").read_bytes() == blob
    assert (tmp_path / "back" / "a" / "scores.json").read_text() == '{"round": 1}'
    (tmp_path / "state" / "a.tar.xz.001").unlink()
    with pytest.raises(DataError, match=r"a\.tar\.xz\.001: missing"):
        restore_state(tmp_path / "state", tmp_path / "again")
    (work / "a" / "store" / "jobs.collection").write_bytes(b"small now")
    manifest = save_state(work, tmp_path / "state", volume_bytes=20_000)
    assert [v["name"] for v in manifest["parts"]["a"]["volumes"]] == ["a.tar.xz"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "a.tar.xz", "common", "manifest.json"]
    restore_state(tmp_path / "state", tmp_path / "again")
    assert (tmp_path / "again" / "a" / "store" / "jobs.collection").read_bytes() == b"small now"


def test_headline_compares_the_rounds_both_arms_have_scored():
    """An arm running ahead (a's quinary round) does not weigh against the other's."""
    def row(round_, arity, validations, hits):
        return {"round": round_, "arity": arity, "validations": validations, "hits": hits}

    result = {"arms": {
        "a": {"rounds": [row(1, "2", 50, 30), row(5, "4", 50, 16), row(7, "5+", 50, 2)]},
        "d": {"rounds": [row(1, "2", 50, 30), row(5, "4", 50, 32)]}}}
    head = headline(result)
    assert head["high_arity"]["a"] == {"validations": 100, "hits": 18, "hits_per_100": 18.0}
    assert head["d_over_a_rounds"] == [5]
    assert head["d_over_a"] == pytest.approx(2.0)  # 32 against 16, not against 18 of 100
    del result["arms"]["d"]
    assert headline(result)["d_over_a"] is None

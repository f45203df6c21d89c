"""Does learning pay? A retrospective discovery campaign over compositions with known structures.

Targets are compositions of validation splits (MP-20, MPTS-52) whose
structure is known. Each *arm* runs the same active-learning loop
(``xtalloop run``'s :func:`~xtalloop.runner.execute_loop`, not a copy of it)
over them with an arity schedule 2 → 3 → 4 → 5+, the same generator seeds and
the same validation budget per round; the arms differ only in what learns:

``a``
    nothing;
``b``
    the energy model (prefilter), trained each round on the validator's labels;
``c``
    the Wyckoff generator, fine-tuned each round on the loop's own stable finds;
``d``
    both.

The validator is an ML potential (``dft.code: mlip``), so a campaign runs on
a laptop. Every arm has its own store, so nothing one arm learns leaks into
another, and a killed campaign run again resumes each arm's loop (the loop
itself resumes; a finished arm is only scored). Scoring against the known
structures is in :mod:`xtalloop.benchmark.campaign_score`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xtalloop.benchmark.campaign_targets import STAGES, choose_targets
from xtalloop.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: What each arm learns: (energy model, generator).
ARMS: dict[str, tuple[bool, bool]] = {
    "a": (False, False), "b": (True, False), "c": (False, True), "d": (True, True)}
ARM_NAMES: dict[str, str] = {"a": "nothing learns", "b": "energy model learns",
                             "c": "generator learns", "d": "both learn"}
#: What a campaign saved before a setting existed did instead (resumed as that).
BEFORE_SETTING: dict[str, Any] = {"energy_architecture": "mace", "energy_frames": 8,
                                  "energy_replay_neighbours": 4, "energy_steps": None}
DEFAULT_DATA: tuple[str, ...] = ("../shared/data/mp_20/val.csv.gz",
                                 "../shared/data/mpts_52/val.csv.gz")


@dataclass
class CampaignSettings:
    """Everything that defines a campaign; the same for every arm.

    Parameters
    ----------
    data
        Structure tables (``cif``, optionally ``material_id``) the targets come from.
    per_arity
        Target compositions per arity group (fewer where a table has fewer).
    arities
        Arity groups of the schedule (keys of :data:`STAGES`), in schedule order.
    rounds_per_stage
        Loop rounds per arity group: a later round of a stage runs the
        compositions still without a stable find first.
    budget
        Validations (picks sent to the validator) per round, at most.
    seed
        Seeds the target draw and the loop's generator (round ``n``: seed + 1000 (n - 1)).
    checkpoint
        The Wyckoff generator every arm starts from (trained on binaries and
        ternaries only: :func:`train_base_generator`).
    candidates
        Wyckoff candidates per composition and round.
    max_atoms
        Largest target cell (sites) and largest generated cell.
    prefilter, validator
        Model specs (``chgnet``, ``diep``, ``emt``, a MACE file).
    prefilter_steps, validator_steps
        FIRE step limits of the two relaxations.
    energy_epochs, generator_epochs
        Training epochs of the learning arms per round.
    energy_frames
        Frames per validator relaxation the energy model trains on (first and
        last at 2): training time grows with them, round after round.
    energy_replay_neighbours
        Parent-labelled AFLOW prototypes per training composition in CHGNet
        fine-tuning (``learn.energy_model.chgnet.replay_neighbours``).
    energy_steps
        Optimiser steps at most per CHGNet fine-tuning
        (``learn.energy_model.chgnet.max_steps``; ``None``: the epochs decide).
    energy_architecture
        What the energy-learning arms train (``learn.energy_model.architecture``):
        ``chgnet`` fine-tunes the pretrained prefilter, ``mace`` trains MACE.
    stable_within
        eV/atom above the validator's hull that the loop counts as stable
        (what the generator arm fine-tunes on; the benchmark's *hit* is stricter).
    energy_tolerance
        A validation is a hit when its energy per atom is at most the known
        structure's (relaxed by the validator) plus this (eV/atom).
    """

    data: tuple[str, ...] = DEFAULT_DATA
    per_arity: int = 100
    arities: tuple[str, ...] = ("2", "3", "4", "5+")
    rounds_per_stage: int = 1
    budget: int = 50
    seed: int = 0
    checkpoint: str = ""
    candidates: int = 8
    max_atoms: int = 20
    prefilter: str = "chgnet"
    validator: str = "diep"
    prefilter_steps: int = 150
    validator_steps: int = 300
    energy_epochs: int = 30
    energy_architecture: str = "chgnet"
    energy_frames: int = 8
    energy_replay_neighbours: int = 4
    energy_steps: int | None = None
    generator_epochs: int = 5
    stable_within: float = 0.1
    energy_tolerance: float = 0.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        bad = [a for a in self.arities if a not in STAGES]
        if bad:
            raise ConfigError(f"arities: {bad[0]!r} is not one of {', '.join(STAGES)}")
        if self.per_arity < 1 or self.budget < 1 or self.rounds_per_stage < 1:
            raise ConfigError("per_arity, budget and rounds_per_stage are 1 or more")


# --- configurations ---------------------------------------------------------------------


def arm_config(settings: CampaignSettings, arm: str, formulas: Sequence[str],
               out: Path) -> dict[str, Any]:
    """The run configuration (a dict, as in YAML) of one arm's loop; only ``learn`` differs."""
    energy, generator = ARMS[arm]
    stages = [{"arities": list(STAGES[a]), "rounds": settings.rounds_per_stage}
              for a in settings.arities]
    folder = (out / arm).resolve()
    return {
        "name": f"campaign-{arm}",
        "compositions": list(formulas),
        "charge_balance": "off",
        "generate": {"seed": settings.seed, "max_atoms": settings.max_atoms, "sources": [
            {"kind": "wyckoff", "n": settings.candidates, "checkpoint": settings.checkpoint,
             "device": settings.device}]},
        "prefilter": {"model": "registry" if energy else settings.prefilter,
                      "base_model": settings.prefilter, "device": settings.device,
                      "top_k": 1, "steps": settings.prefilter_steps},
        "dft": {"code": "mlip", "mlip": {"model": settings.validator, "device": settings.device,
                                         "steps": settings.validator_steps}},
        "learn": {
            "energy_model": {"enabled": energy, "ensemble_size": 1,
                             "epochs": settings.energy_epochs, "seed": settings.seed,
                             "max_frames_per_relaxation": settings.energy_frames,
                             **({"architecture": settings.energy_architecture,
                                 "chgnet": {"epochs": settings.energy_epochs,
                                            "max_steps": settings.energy_steps,
                                            "replay_neighbours":
                                                settings.energy_replay_neighbours}}
                                if energy else {})},
            "generator": {"enabled": generator, "epochs": settings.generator_epochs,
                          "stable_within": settings.stable_within, "seed": settings.seed},
        },
        "loop": {"schedule": stages, "dft_budget_per_round": settings.budget,
                 "stable_within": settings.stable_within},
        "store": {"backend": "embedded", "path": str(folder / "store")},
        "output_dir": str(folder / "runs"),
    }


# --- running ----------------------------------------------------------------------------


def finished_loop(config: Any) -> dict[str, Any] | None:
    """The completed loop of this arm in its store, if any (a re-run only scores it)."""
    from xtalloop.store.results import open_results

    with open_results(config.store) as db:
        record = db.latest_run(config.name)
    if record and record.get("kind") == "loop" and record.get("status") == "completed":
        return record
    return None


def run_arm(settings: CampaignSettings, arm: str, formulas: Sequence[str], out: Path,
            relax_maker: Any = None, progress: bool = False) -> dict[str, Any]:
    """Run (or resume, or find finished) one arm's loop; return its loop id and wall time.

    ``relax_maker`` replaces the validator's maker (tests); the configuration
    written to ``<out>/<arm>/config.yaml`` is what ``xtalloop run`` would run.
    """
    import yaml

    from xtalloop.config import load_config
    from xtalloop.runner import execute_loop

    folder = out / arm
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(arm_config(settings, arm, formulas, out), sort_keys=False))
    config = load_config(path)
    done = finished_loop(config)
    if done is not None:
        logger.info("arm %s: loop %s already finished (%s)", arm, done["id"],
                    done.get("stopped_by"))
        return {"loop_id": done["id"], "status": "completed", "resumed": False,
                "stopped_by": done.get("stopped_by"), "wall_s": None}
    started = time.monotonic()
    result = execute_loop(config, progress=progress, relax_maker=relax_maker)
    wall = time.monotonic() - started
    logger.info("arm %s: loop %s %s after %.0f s (%s)", arm, result.loop_id, result.status,
                wall, result.stopped_by)
    if result.status != "completed":
        raise DataError(f"arm {arm}: loop {result.loop_id} {result.status} "
                        f"({'; '.join(result.failed_jobs) or result.stopped_by}): run the "
                        "campaign again to resume it")
    return {"loop_id": result.loop_id, "status": result.status,
            "resumed": result.resumed_from is not None, "stopped_by": result.stopped_by,
            "wall_s": wall}


def arm_so_far(out: Path, arm: str) -> dict[str, Any] | None:
    """The newest loop of an arm in its store, whatever its status (``None``: never started)."""
    from xtalloop.config import StoreConfig
    from xtalloop.run_record import mark_if_lost
    from xtalloop.store.results import open_results

    if not (out / arm / "store").exists():
        return None
    with open_results(StoreConfig(path=str(out / arm / "store")), create=False) as db:
        record = mark_if_lost(db, db.latest_run(f"campaign-{arm}"))  # killed: interrupted
    if not record or record.get("kind") != "loop":
        return None
    return {"loop_id": record["id"], "status": record.get("status"), "resumed": False,
            "stopped_by": record.get("stopped_by"), "wall_s": None}


def run_campaign(settings: CampaignSettings, arms: Sequence[str], out: str | Path,
                 relax_maker: Any = None, usable: Callable[[set[str]], set[str]] | None = None,
                 progress: bool = False, score_only: bool = False) -> dict[str, Any]:
    """Choose the targets, run every arm, score it; the results as :func:`write_outputs` takes.

    With ``score_only``, no loop runs: the rounds each arm's loop completed so
    far are scored (a campaign still running elsewhere, or interrupted), and
    an arm never started is left out.

    A re-run with the same ``out`` resumes: the targets are read back from
    ``targets.json`` (the draw is not repeated), unfinished loops resume and
    scores already computed are reused.

    Raises
    ------
    ConfigError
        An unknown arm, or ``out`` holds a campaign with other settings.
    """
    import json

    from xtalloop.benchmark.campaign_funnel import generated_matches
    from xtalloop.benchmark.campaign_score import KnownEnergies, score_arm

    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"--arms: {bad[0]!r} is not one of {', '.join(ARMS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "targets.json"
    chosen = json.loads(json.dumps(asdict(settings)))
    if saved.is_file():
        previous = json.loads(saved.read_text())
        was = {**BEFORE_SETTING, **previous["settings"]}
        changed = sorted(k for k in chosen if not _same(k, was.get(k), chosen[k]))
        if changed:
            raise ConfigError(f"{out} holds a campaign with other settings "
                              f"({', '.join(changed)}): use another --out")
        targets = previous["targets"]
    else:
        logger.info("choosing %d targets per arity group", settings.per_arity)
        targets = choose_targets(settings, usable)
        saved.write_text(json.dumps({"settings": chosen, "targets": targets}, indent=1))
    logger.info("%d targets: %s", len(targets), ", ".join(
        f"{a}: {sum(t['arity'] == a for t in targets)}" for a in settings.arities))
    known = KnownEnergies(out / f"known-{_slug(settings.validator)}.json", settings)
    results: dict[str, Any] = {"settings": chosen, "targets": [
        {k: v for k, v in t.items() if k != "cif"} for t in targets], "arms": {}}
    for arm in arms:
        if score_only:
            run = arm_so_far(out, arm)
            if run is None:
                logger.info("arm %s: not started, left out", arm)
                continue
        else:
            logger.info("arm %s (%s): loop over %d compositions", arm, ARM_NAMES[arm],
                        len(targets))
            run = run_arm(settings, arm, [t["formula"] for t in targets], out, relax_maker,
                          progress)
        generated = generated_matches(out / arm, targets)
        scored = score_arm(settings, out / arm, run["loop_id"], targets, known, generated)
        results["arms"][arm] = {**run, **scored}
    return results


def _same(key: str, saved: Any, chosen: Any) -> bool:
    """Whether a saved setting equals the one chosen now, as compared on resume.

    Paths are resolved, so the same campaign resumes from another checkout or
    working directory; a checkpoint whose saved path is gone (the campaign was
    restored on another machine, :mod:`xtalloop.benchmark.campaign_state`) is
    compared by file name.
    """
    import os

    if key == "data" and saved is not None and chosen is not None:
        return [os.path.realpath(p) for p in saved] == [os.path.realpath(p) for p in chosen]
    if key == "checkpoint" and saved and chosen:
        if not os.path.exists(saved):
            return os.path.basename(saved) == os.path.basename(chosen)
        return os.path.realpath(saved) == os.path.realpath(chosen)
    return saved == chosen


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(spec).name)


def train_base_generator(train_csv: str | Path, out: str | Path, minutes: float,
                         max_atoms: int, seed: int = 0) -> Path:
    """The campaign's starting generator: the ``small`` Wyckoff preset on ≤ 3-element crystals.

    Kept when ``out`` exists (a re-run does not retrain); see
    :func:`xtalloop.benchmark.arity_wyckoff.train_wyckoff_base`.
    """
    from xtalloop.benchmark.arity_wyckoff import train_wyckoff_base

    out = Path(out)
    if out.is_file():
        return out
    logger.info("training the binaries+ternaries Wyckoff generator for %.0f min", minutes)
    return train_wyckoff_base(Path(train_csv), out, minutes, max_atoms, max_elements=3,
                              seed=seed, workers=1, progress=False)

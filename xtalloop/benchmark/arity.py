"""Arity extension: does fine-tuning on a few quaternaries/quinaries help the diffusion model?

A base diffusion checkpoint trained on binaries and ternaries is fine-tuned on
nested, seeded fractions of the quaternary and quinary training crystals that fit
its largest cell; the base and every fine-tuned model are then scored by
:func:`xtalloop.benchmark.csp.run_csp_benchmark` on the same held-out
quaternary and quinary compositions with the same seeds.

The pieces are small functions so that a test can run them on a tiny table; the
command ``benchmarks/arity_extension.py`` wires them together.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from xtalloop.benchmark.arity_data import (
    nested_subsets,
    pick_eval_rows,
    row_ids,
    rows_of_arity,
    write_rows,
)
from xtalloop.benchmark.csp_scoring import ranked_match_at_1
from xtalloop.benchmark.relax import energy_ranker
from xtalloop.errors import DataError

logger = logging.getLogger(__name__)

#: Arities (distinct elements) the benchmark fine-tunes on and evaluates.
ARITIES: tuple[int, ...] = (4, 5)
ARITY_NAMES: dict[int, str] = {1: "unary", 2: "binary", 3: "ternary", 4: "quaternary",
                               5: "quinary", 6: "senary"}


@dataclass(frozen=True)
class FinetuneSettings:
    """How each fine-tuning run is stopped and stepped.

    Parameters
    ----------
    epochs
        Fixed number of epochs (``None``: stop by ``minutes`` only).
    minutes
        Wall-time box per run (``None``: no box).
    batch_size
        Crystals per step (``None``: the parent's).
    lr_factor
        Learning rate = parent's lr × this (``None``: the parent's factor).
    seed
        Seed of shuffling and noise.
    """

    epochs: int | None = 150
    minutes: float | None = None
    batch_size: int | None = 16
    lr_factor: float | None = None
    seed: int = 0

    def describe(self) -> str:
        """Which budget stops a run, in words."""
        if self.epochs is not None and self.minutes is not None:
            return f"{self.epochs} epochs or {self.minutes:g} minutes, whichever comes first"
        if self.epochs is not None:
            return f"fixed {self.epochs} epochs"
        return f"fixed {self.minutes:g} minutes"


# --- models -------------------------------------------------------------------------


def train_base(
    train_csv: Path,
    out: Path,
    minutes: float,
    max_atoms: int,
    max_elements: int = 3,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train the ``small_cpu`` preset on crystals of at most ``max_elements`` elements.

    Uses the command line's own training path (:mod:`xtalloop.generators.diffusion.checked`:
    ``load_dataset``, ``with_train_settings``, ``run_training``).
    """
    from xtalloop.generators.diffusion import preset
    from xtalloop.generators.diffusion.checked import (
        load_dataset,
        run_training,
        train_overrides,
        with_train_settings,
    )

    config = with_train_settings(preset("small_cpu"), train_overrides(minutes=minutes, seed=seed))
    dataset = load_dataset(train_csv, max_atoms, max_elements, None, cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    return run_training(config, dataset, out, None, progress)


def finetune(
    parent: Path,
    dataset: Any,
    out: Path,
    settings: FinetuneSettings,
    progress: bool = True,
) -> Path:
    """Fine-tune ``parent`` on ``dataset`` (a ``CrystalDataset``) and write ``out``."""
    from xtalloop.generators.diffusion import DiffusionConfig
    from xtalloop.generators.diffusion.checked import (
        load_checkpoint,
        run_training,
        train_overrides,
        with_train_settings,
    )

    stored = load_checkpoint(parent)
    # epochs None with a time box: let the box decide (tiny sets run many epochs)
    epochs = settings.epochs if settings.epochs is not None else 1_000_000
    overrides = train_overrides(epochs, settings.minutes, None, settings.batch_size, None,
                                settings.seed)
    overrides["save_every"] = 0  # many short epochs: write the checkpoint once, at the end
    if settings.lr_factor is not None:
        overrides["finetune_lr_factor"] = settings.lr_factor
    config = with_train_settings(DiffusionConfig.model_validate(stored["config"]), overrides)
    out.parent.mkdir(parents=True, exist_ok=True)
    return run_training(config, dataset, out, None, progress, finetune_from=parent)


# --- evaluation ---------------------------------------------------------------------


def evaluate_model(
    checkpoint: Path,
    eval_csvs: dict[int, Path],
    ks: Sequence[int],
    n_steps: int | None,
    seed: int,
    progress: bool = True,
    rerank: Callable[[list[Structure]], list[float]] | None = None,
    generator: Any = None,
) -> dict[int, dict[str, Any]]:
    """CSP benchmark results of one checkpoint, per arity, on the given tables.

    Every arity's table is scored with the same ``seed`` (hence the same
    per-composition seeds for every checkpoint). With ``rerank`` (energies per
    atom of a list of structures), each composition's candidates are also
    ordered by energy and ``ranked_match_rate["1"]`` is reported. ``generator``
    replaces the diffusion generator of ``checkpoint`` (e.g. a Wyckoff one).
    """
    from xtalloop.benchmark.csp import run_csp_benchmark
    from xtalloop.generators.diffusion import DiffusionGenerator

    if generator is None:
        generator = DiffusionGenerator(checkpoint=str(checkpoint), n_steps=n_steps)
    results: dict[int, dict[str, Any]] = {}
    for arity, csv in eval_csvs.items():
        energies: list[list[float]] = []
        relax = None
        if rerank is not None:
            def relax(structures: list[Structure], _store: list = energies):
                # not a relaxation: records energies, returns the candidates unchanged
                _store.append(list(rerank(structures)))
                return structures, _store[-1]

        n_rows = len(pd.read_csv(csv))
        result = run_csp_benchmark(csv, generator, n_rows, ks=ks, seed=seed, relax=relax,
                                   progress=progress)
        if rerank is not None:
            result["relaxed"] = False
            result["ranked_match_rate"] = {"1": ranked_match_at_1(result["per_composition"],
                                                                  energies)}
        results[arity] = result
    return results


# --- the whole benchmark --------------------------------------------------------------


def run_arity_benchmark(
    train_csv: Path,
    val_csv: Path,
    base_checkpoint: Path,
    ckpt_dir: Path,
    fractions: Sequence[float] = (0.01, 0.05, 0.1),
    n_per_arity: int = 30,
    ks: Sequence[int] = (1, 20),
    n_steps: int | None = 100,
    finetune_settings: FinetuneSettings = FinetuneSettings(),
    seed: int = 0,
    base_minutes: float = 42.0,
    base_max_atoms: int = 12,
    prefilter: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the base on nested quaternary/quinary subsets and score every model.

    Parameters
    ----------
    train_csv, val_csv
        Structure tables (``cif`` column; ``material_id`` optional).
    base_checkpoint
        Diffusion checkpoint trained on binaries and ternaries; trained here
        (``small_cpu`` preset, ``base_minutes``, ≤ ``base_max_atoms`` atoms) if missing.
    ckpt_dir
        Folder for the fine-tuned checkpoints.
    fractions
        Shares of the quaternary+quinary training crystals to fine-tune on.
    n_per_arity
        Held-out compositions per arity.
    ks
        Candidates per composition at which match rates are reported.
    n_steps
        Reverse diffusion steps of the (respaced) sampler.
    finetune_settings
        Epochs or time box, batch size, learning-rate factor, seed of fine-tuning.
    seed
        Seeds the subsets, the held-out draw and the sampling.
    prefilter
        Energy model (``chgnet``, ``emt``, a MACE path) that re-ranks candidates.
    progress
        Show progress bars.

    Returns
    -------
    dict
        JSON-serialisable settings, data sizes, timings and per-model results.
    """
    from tqdm.auto import tqdm

    from xtalloop.generators.diffusion import load_csv
    from xtalloop.generators.diffusion.checked import load_checkpoint
    from xtalloop.generators.prototype_substitution import read_structure_csv

    started = time.perf_counter()
    timings: dict[str, Any] = {}
    fractions = sorted({float(f) for f in fractions})
    ks = sorted({int(k) for k in ks})

    base_trained_here = not Path(base_checkpoint).is_file()
    if base_trained_here:
        t0 = time.perf_counter()
        logger.info("training the base model for %s minutes", base_minutes)
        train_base(train_csv, base_checkpoint, base_minutes, base_max_atoms, seed=seed,
                   progress=progress)
        timings["base_train_s"] = time.perf_counter() - t0
    base = load_checkpoint(base_checkpoint)
    max_atoms = int(base["max_atoms"])

    # fine-tuning pool: the train quaternaries/quinaries that fit the model's cells
    t0 = time.perf_counter()
    try:
        pool = load_csv(train_csv, max_atoms=max_atoms, n_elements=ARITIES)
    except Exception as exc:  # pandas, gzip and CIF parser errors all mean a bad file
        raise DataError(f"cannot read training data {train_csv}: {exc}") from None
    if len(pool) == 0:
        raise DataError(f"{train_csv} has no crystals of {ARITIES} elements "
                        f"with at most {max_atoms} atoms to fine-tune on")
    subsets = nested_subsets(len(pool), fractions, seed)
    timings["load_train_s"] = time.perf_counter() - t0

    # held-out compositions
    t0 = time.perf_counter()
    val_rows = rows_of_arity(read_structure_csv(val_csv), ARITIES, max_atoms)
    eval_rows = {a: pick_eval_rows(val_rows, a, n_per_arity, seed) for a in ARITIES}
    eval_rows = {a: r for a, r in eval_rows.items() if len(r)}
    if not eval_rows:
        raise DataError(f"{val_csv} has no structures of {ARITIES} elements "
                        f"with at most {max_atoms} atoms")
    timings["load_val_s"] = time.perf_counter() - t0

    models: list[dict[str, Any]] = [{
        "name": "base", "fraction": 0.0, "n_finetune": 0, "checkpoint": str(base_checkpoint),
    }]
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for fraction in tqdm(fractions, desc="fine-tuning", unit="model", disable=not progress):
        indices = subsets[fraction]
        out = ckpt_dir / f"finetune_{fraction:g}.pt"
        t0 = time.perf_counter()
        finetune(base_checkpoint, pool.subset(indices), out, finetune_settings, progress=False)
        log = json.loads(out.with_suffix(".log.json").read_text())
        history = log.get("history") or [{}]
        models.append({
            "name": f"finetune {fraction:g}", "fraction": fraction, "n_finetune": len(indices),
            "checkpoint": str(out), "finetune_s": time.perf_counter() - t0,
            "epochs": log["epoch"], "steps": log["step"], "stopped_by": log["stopped_by"],
            "final_loss": history[-1].get("loss"),
        })

    ranker = energy_ranker(prefilter) if prefilter else None
    with tempfile.TemporaryDirectory(prefix="arity-") as tmp:
        csvs = {a: write_rows(r, Path(tmp) / f"val_{a}.csv") for a, r in eval_rows.items()}
        for model in tqdm(models, desc="evaluating", unit="model", disable=not progress):
            t0 = time.perf_counter()
            per_arity = evaluate_model(Path(model["checkpoint"]), csvs, ks, n_steps, seed,
                                       progress=progress, rerank=ranker)
            model["eval_s"] = time.perf_counter() - t0
            model["results"] = {str(a): _compact(r) for a, r in per_arity.items()}

    return {
        "benchmark": "arity_extension",
        "settings": {
            "train_csv": str(train_csv),
            "val_csv": str(val_csv),
            "base_checkpoint": str(base_checkpoint),
            "base_trained_here": base_trained_here,
            "base_minutes": base_minutes if base_trained_here else None,
            "fractions": fractions,
            "n_per_arity": n_per_arity,
            "ks": ks,
            "n_steps": n_steps,
            "seed": seed,
            "arities": list(ARITIES),
            "max_atoms": max_atoms,
            "finetune": {
                "budget": finetune_settings.describe(),
                "epochs": finetune_settings.epochs,
                "minutes": finetune_settings.minutes,
                "batch_size": finetune_settings.batch_size,
                "lr_factor": finetune_settings.lr_factor,
                "seed": finetune_settings.seed,
            },
            "prefilter": prefilter,
        },
        "data": {
            "base_n_train": int(base["n_train"]),
            "base_epoch": int(base["epoch"]),
            "finetune_pool": len(pool),
            "finetune_pool_per_arity": _pool_arities(pool),
            "finetune_sizes": {f"{f:g}": len(subsets[f]) for f in fractions},
            "finetune_indices": {f"{f:g}": subsets[f] for f in fractions},
            "val_candidates_per_arity": {
                str(a): int((val_rows["n_elements"] == a).sum()) for a in ARITIES},
            "n_eval_per_arity": {str(a): len(r) for a, r in eval_rows.items()},
            "eval_material_ids": {str(a): row_ids(r) for a, r in eval_rows.items()},
        },
        "models": models,
        "timings": {**timings, "total_s": time.perf_counter() - started},
    }


def _pool_arities(pool: Any) -> dict[str, int]:
    """Crystals per arity in a ``CrystalDataset`` (distinct atomic numbers per crystal)."""
    counts: dict[str, int] = {}
    offsets = np.concatenate([[0], np.cumsum(pool.num_atoms.numpy())])
    types = pool.atom_types.numpy()
    for start, stop in zip(offsets[:-1], offsets[1:], strict=True):
        key = str(len(set(types[start:stop].tolist())))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    """The parts of a CSP result worth keeping per model and arity."""
    keep = ("n_compositions", "match_rate", "rmse", "n_generated", "n_zero_candidates",
            "n_failed", "time_per_structure_s", "generate_time_s", "match_time_s",
            "wall_time_s", "ranked_match_rate")
    out = {k: result[k] for k in keep if k in result}
    out["per_composition"] = [
        {"material_id": r["material_id"], "formula": r["formula"],
         "n_candidates": r["n_candidates"],
         "rms": [None if x is None else round(x, 4) for x in r["rms"]]}
        for r in result["per_composition"]
    ]
    return out

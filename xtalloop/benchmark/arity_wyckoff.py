"""Arity extension with the Wyckoff generator: does a few quaternaries/quinaries' data help?

The same question and protocol as :mod:`xtalloop.benchmark.arity` (nested,
seeded fractions of the training quaternaries and quinaries; the same held-out
compositions and seeds for every model; top-k match rate without relaxation),
with a Wyckoff checkpoint trained on binaries and ternaries as the base. Each
fine-tuning crystal is first described by its Wyckoff positions; those PyXtal
cannot describe are skipped and counted per fraction. Fine-tuning keeps the
parent's weights unless the held-out loss improves
(:func:`~xtalloop.learn.wyckoff_finetune.finetune_wyckoff`), which the results
record per model.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xtalloop.benchmark.arity import (
    ARITIES,
    FinetuneSettings,
    _compact,
    evaluate_model,
)
from xtalloop.benchmark.arity_data import (
    nested_subsets,
    parse_cif,
    pick_eval_rows,
    row_ids,
    rows_of_arity,
    write_rows,
)
from xtalloop.benchmark.relax import energy_ranker
from xtalloop.errors import DataError

logger = logging.getLogger(__name__)


def primitive_atoms(crystal: Any) -> int:
    """Atoms in the primitive cell of a Wyckoff description (its conventional cell / centering)."""
    from xtalloop.generators.wyckoff.sites import centering

    return crystal.n_atoms // centering(crystal.space_group)


def train_wyckoff_base(train_csv: Path, out: Path, minutes: float, max_atoms: int,
                       max_elements: int = 3, seed: int = 0, workers: int = 1,
                       progress: bool = True) -> Path:
    """Train the ``small`` Wyckoff preset on crystals of at most ``max_elements`` elements.

    Only crystals whose primitive cell has at most ``max_atoms`` atoms are used,
    as the diffusion base is trained (:func:`xtalloop.benchmark.arity.train_base`).
    The descriptions of ``train_csv`` are cached
    (:func:`~xtalloop.generators.wyckoff.sites.describe_table`).
    """
    from xtalloop.cli_wyckoff import PRESETS
    from xtalloop.generators.wyckoff.model import WyckoffModelConfig
    from xtalloop.generators.wyckoff.sites import describe_table
    from xtalloop.generators.wyckoff.train import (
        WyckoffTrainConfig,
        train_wyckoff,
        write_log,
    )

    crystals = [c for c in describe_table(train_csv, workers=workers, progress=progress)
                if len({s.z for s in c.sites}) <= max_elements
                and primitive_atoms(c) <= max_atoms]
    model_settings, train_settings = PRESETS["small"]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = train_wyckoff(crystals, out, WyckoffModelConfig(**model_settings),
                        WyckoffTrainConfig(**train_settings, minutes=minutes, seed=seed),
                        metadata={"data": [str(train_csv)], "max_elements": max_elements,
                                  "max_atoms": max_atoms, "preset": "small"},
                        progress=progress)
    write_log(log, out.with_suffix(".json"))
    return out


def describe_rows(rows: Any, max_sites: int) -> tuple[list[Any], list[str]]:
    """Wyckoff descriptions of table rows (``cif``), and the ids of the rows skipped."""
    from xtalloop.learn.wyckoff_finetune import describe_structures

    pairs, unreadable = [], []
    for key, cif in zip(row_ids(rows), rows["cif"], strict=True):
        structure = parse_cif(cif)
        if structure is None:
            unreadable.append(key)
        else:
            pairs.append((key, structure))
    described = describe_structures(pairs, max_sites)
    return described.crystals, unreadable + described.skipped


def run_wyckoff_arity_benchmark(
    train_csv: Path,
    val_csv: Path,
    base_checkpoint: Path,
    ckpt_dir: Path,
    fractions: Sequence[float] = (0.01, 0.05, 0.1),
    n_per_arity: int = 30,
    ks: Sequence[int] = (1, 20),
    finetune_settings: FinetuneSettings = FinetuneSettings(),
    seed: int = 0,
    base_minutes: float = 42.0,
    base_max_atoms: int = 12,
    prefilter: str | None = None,
    temperature: float = 1.0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune a Wyckoff base on nested quaternary/quinary subsets and score every model.

    Parameters are those of :func:`xtalloop.benchmark.arity.run_arity_benchmark`
    (``base_checkpoint`` a Wyckoff checkpoint, trained here on binaries and
    ternaries if missing), with ``temperature`` and ``device`` of the
    :class:`~xtalloop.generators.wyckoff.WyckoffGenerator` in place of the
    diffusion sampler's steps. Every model samples with the base's cell limit.

    Returns
    -------
    dict
        The shape of the diffusion benchmark's result (so
        :func:`~xtalloop.benchmark.arity_report.write_outputs` writes it), with
        ``settings.generator = "wyckoff"`` and, per fine-tuned model, the
        held-out loss before and after and whether it improved.
    """
    from tqdm.auto import tqdm

    from xtalloop.generators.prototype_substitution import read_structure_csv
    from xtalloop.generators.wyckoff import WyckoffGenerator, load_wyckoff
    from xtalloop.learn.wyckoff_finetune import (
        DEFAULT_LR_FACTOR,
        WyckoffFinetune,
        finetune_wyckoff,
        parent_settings,
    )

    started = time.perf_counter()
    timings: dict[str, Any] = {}
    fractions = sorted({float(f) for f in fractions})
    ks = sorted({int(k) for k in ks})

    base_trained_here = not Path(base_checkpoint).is_file()
    if base_trained_here:
        t0 = time.perf_counter()
        logger.info("training the Wyckoff base model for %s minutes", base_minutes)
        train_wyckoff_base(train_csv, base_checkpoint, base_minutes, base_max_atoms, seed=seed,
                           progress=progress)
        timings["base_train_s"] = time.perf_counter() - t0
    base = load_wyckoff(base_checkpoint)
    max_atoms = base.max_atoms
    max_sites, _, parent_batch = parent_settings(base_checkpoint)
    base_log = base.metadata.get("training") or {}

    # fine-tuning pool: the train quaternaries/quinaries that fit the model's cells
    t0 = time.perf_counter()
    pool = rows_of_arity(read_structure_csv(train_csv), ARITIES, max_atoms)
    if len(pool) == 0:
        raise DataError(f"{train_csv} has no crystals of {ARITIES} elements "
                        f"with at most {max_atoms} atoms to fine-tune on")
    subsets = nested_subsets(len(pool), fractions, seed)
    timings["load_train_s"] = time.perf_counter() - t0

    val_rows = rows_of_arity(read_structure_csv(val_csv), ARITIES, max_atoms)
    eval_rows = {a: pick_eval_rows(val_rows, a, n_per_arity, seed) for a in ARITIES}
    eval_rows = {a: r for a, r in eval_rows.items() if len(r)}
    if not eval_rows:
        raise DataError(f"{val_csv} has no structures of {ARITIES} elements "
                        f"with at most {max_atoms} atoms")

    models: list[dict[str, Any]] = [{
        "name": "base", "fraction": 0.0, "n_finetune": 0, "checkpoint": str(base_checkpoint),
    }]
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    settings = WyckoffFinetune(
        epochs=finetune_settings.epochs if finetune_settings.epochs is not None else 1_000_000,
        minutes=finetune_settings.minutes,
        lr_factor=finetune_settings.lr_factor or DEFAULT_LR_FACTOR,
        batch_size=finetune_settings.batch_size or parent_batch,
        seed=finetune_settings.seed, device=device)
    for fraction in tqdm(fractions, desc="fine-tuning", unit="model", disable=not progress):
        t0 = time.perf_counter()
        crystals, skipped = describe_rows(pool.iloc[subsets[fraction]], max_sites)
        out = ckpt_dir / f"finetune_{fraction:g}.pt"
        model: dict[str, Any] = {
            "name": f"finetune {fraction:g}", "fraction": fraction,
            "n_finetune": len(crystals), "n_selected": len(subsets[fraction]),
            "skipped_ids": skipped, "checkpoint": str(out)}
        if len(crystals) < 2:  # one is held out to decide whether the weights improved
            logger.warning("fraction %g: %d describable crystals, 2 needed: base kept",
                           fraction, len(crystals))
            model.update(checkpoint=str(base_checkpoint), improved=False,
                         stopped_by="too few describable crystals")
        else:
            log = finetune_wyckoff(base_checkpoint, crystals, out, settings,
                                   metadata={"fraction": fraction})
            out.with_suffix(".json").write_text(json.dumps(log, indent=1))
            model.update(epochs=len(log["epochs"]), stopped_by=log.get("stopped", "epochs"),
                         final_loss=log["best_val_loss"],
                         parent_val_loss=log.get("parent_val_loss"),
                         improved=bool(log.get("improved")))
        model["finetune_s"] = time.perf_counter() - t0
        models.append(model)

    ranker = energy_ranker(prefilter) if prefilter else None
    with tempfile.TemporaryDirectory(prefix="arity-wyckoff-") as tmp:
        csvs = {a: write_rows(r, Path(tmp) / f"val_{a}.csv") for a, r in eval_rows.items()}
        for model in tqdm(models, desc="evaluating", unit="model", disable=not progress):
            t0 = time.perf_counter()
            generator = WyckoffGenerator(checkpoint=model["checkpoint"], max_atoms=max_atoms,
                                         temperature=temperature, device=device)
            per_arity = evaluate_model(Path(model["checkpoint"]), csvs, ks, None, seed,
                                       progress=progress, rerank=ranker, generator=generator)
            model["eval_s"] = time.perf_counter() - t0
            model["results"] = {str(a): _compact(r) for a, r in per_arity.items()}

    return {
        "benchmark": "arity_extension",
        "settings": {
            "generator": "wyckoff",
            "train_csv": str(train_csv), "val_csv": str(val_csv),
            "base_checkpoint": str(base_checkpoint), "base_trained_here": base_trained_here,
            "base_minutes": base_minutes if base_trained_here else None,
            "fractions": fractions, "n_per_arity": n_per_arity, "ks": ks, "n_steps": None,
            "temperature": temperature, "seed": seed, "arities": list(ARITIES),
            "max_atoms": max_atoms,
            "finetune": {
                "budget": finetune_settings.describe(),
                "epochs": finetune_settings.epochs, "minutes": finetune_settings.minutes,
                "batch_size": settings.batch_size, "lr_factor": settings.lr_factor,
                "seed": finetune_settings.seed,
            },
            "prefilter": prefilter,
        },
        "data": {
            "base_n_train": int(base_log.get("n_train", 0)),
            "base_epoch": len(base_log.get("epochs", [])),
            "finetune_pool": len(pool),
            "finetune_pool_per_arity": {
                str(a): int((pool["n_elements"] == a).sum()) for a in ARITIES},
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

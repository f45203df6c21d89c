"""Energy-model quality on held-out DFT data: pretrained CHGNet vs MACE trained on n structures.

Reads GPAW frames (``benchmarks/gpaw_dataset.py`` writes them), holds out a
fixed share of the structures (all frames of a structure on one side, as the
loop does; elemental phases always train), and for a growing number ``n`` of
training structures trains a MACE ensemble with xtalloop's own trainer
(:class:`xtalloop.learn.mace_training.MaceTrainer`). Every model is scored
with :func:`xtalloop.learn.metrics.evaluate` on the same held-out frames:
energy MAE (meV/atom, after per-element alignment on the training frames),
force MAE (meV/Å) and the hull decision (stable within 0.1 eV/atom or not:
precision, recall, F1). CHGNet, the pretrained model the loop starts from, is
the "before" row. With ``--foundation`` (a MACE model file, e.g. the one
``benchmarks/distilled_foundation.py`` makes, or a MACE-MP file of your own),
the foundation model is scored as it is and each ``n`` also fine-tunes an
ensemble from it. Prints a table, writes it as JSON and draws the learning
curve.

Example::

    python benchmarks/energy_model_quality.py --data benchmarks/results/gpaw_light.extxyz \\
        --sizes 5,10,20,all --out benchmarks/results/energy_model_quality \\
        --foundation benchmarks/results/foundation/training/foundation.mace.json
    # fine-tuning with other loss weights, then one table and plot of both runs
    python benchmarks/energy_model_quality.py --variants fine-tuned \\
        --energy-weight 1 --forces-weight 100 --out forces \\
        --foundation benchmarks/results/foundation/training/foundation.mace.json
    python benchmarks/energy_model_quality.py --variants none --include forces/results.json \\
        --foundation benchmarks/results/foundation/training/foundation.mace.json \\
        --include benchmarks/results/energy_model_quality/results.json --out merged
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402


def load_frames(path: str) -> list:
    """Frames with their DFT results; relaxed-structure frames are marked ``step=final``."""
    from ase.io import read

    frames = read(path, ":")
    for atoms in frames:
        atoms.info["step"] = "final" if atoms.info.get("variant") == "as is" else 1
    return frames


def row(label: str, n_train: int, metrics: dict, seconds: float) -> dict:
    return {"model": label, "n_train_structures": n_train, "seconds": round(seconds, 1),
            **{k: metrics.get(k) for k in ("energy_mae", "force_mae", "stress_mae",
                                          "precision", "recall", "f1", "hull_mae",
                                          "n_frames", "n_scored", "n_stable_dft")}}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="benchmarks/results/gpaw_light.extxyz")
    parser.add_argument("--sizes", default="5,10,20,all",
                        help="training structures per point of the learning curve")
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--ensemble", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--energy-weight", type=float, default=None,
                        help="loss weight of energies (default: MaceTrainer's)")
    parser.add_argument("--forces-weight", type=float, default=None,
                        help="loss weight of forces (default: MaceTrainer's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1,
                        help="trainings run at once (one thread each)")
    parser.add_argument("--foundation", type=Path, default=None,
                        help="a MACE model file to fine-tune from, beside training from scratch")
    parser.add_argument("--bootstrap", action="store_true",
                        help="ensemble members on bootstrap resamples (default: all structures)")
    parser.add_argument("--variants", default="trained,fine-tuned",
                        help="which to run: trained (from scratch) and/or fine-tuned (needs "
                             "--foundation); none scores the pretrained models only")
    parser.add_argument("--include", type=Path, action="append", default=[],
                        help="results.json of an earlier run: its rows of other models join "
                             "this run's table and plot (repeatable)")
    parser.add_argument("--out", default="benchmarks/results/energy_model_quality")
    args = parser.parse_args()
    wanted = set(args.variants.split(",")) - {"none"}  # none: score and merge only
    if unknown := wanted - {"trained", "fine-tuned"}:
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    if wanted == {"fine-tuned"} and args.foundation is None:
        parser.error("--variants fine-tuned needs --foundation")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from xtalloop.learn.dataset import covered, elements_of, groups, split_frames
    from xtalloop.learn.mace_training import MaceTrainer
    from xtalloop.learn.metrics import evaluate
    from xtalloop.models.energy_model import load_energy_model
    from xtalloop.plots import plot_learning_curve

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = load_frames(args.data)
    train, test = split_frames(frames, args.holdout)
    elemental = [g for g in groups(train) if len(
        {s for a in train if a.info["group"] == g for s in a.get_chemical_symbols()}) == 1]
    compounds = [g for g in groups(train) if g not in elemental]
    rng = np.random.default_rng(args.seed)
    order = [compounds[i] for i in rng.permutation(len(compounds))]
    sizes = [len(order) if s == "all" else min(int(s), len(order))
             for s in args.sizes.split(",")]
    subsets = {n: [a for a in train if a.info["group"] in set(order[:n]) | set(elemental)]
               for n in sorted(set(sizes))}
    # every model is tested on the same frames: those the smallest training set covers
    test = covered(test, elements_of(subsets[min(subsets)]))
    print(f"{len(frames)} frames of {len(groups(frames))} structures: train "
          f"{len(groups(train))} ({len(elemental)} elemental), held out {len(groups(test))} "
          f"({len(test)} frames)")

    rows = []
    start = time.perf_counter()
    chgnet = evaluate(load_energy_model("chgnet"), test, align_on=train)
    rows.append(row("CHGNet (pretrained, before)", 0, chgnet, time.perf_counter() - start))
    variants = [("trained", None)] if "trained" in wanted else []
    if args.foundation is not None:
        foundation = args.foundation.resolve()
        start = time.perf_counter()
        metrics = evaluate(load_energy_model(str(foundation)), test, align_on=train)
        rows.append(row(f"MACE foundation {foundation.name} (before)", 0, metrics,
                        time.perf_counter() - start))
        if "fine-tuned" in wanted:
            variants.append(("fine-tuned", [foundation]))
    weights = {k: v for k, v in (("energy_weight", args.energy_weight),
                                 ("forces_weight", args.forces_weight)) if v is not None}
    trainer = MaceTrainer(num_channels=args.channels, epochs=args.epochs,
                          bootstrap=args.bootstrap, **weights)
    print(f"loss weights: energy {trainer.energy_weight}, forces {trainer.forces_weight}, "
          f"stress {trainer.stress_weight}")
    # runs with other loss weights than the trainer's defaults say so in their labels
    tag = (f" (loss E:F {trainer.energy_weight:g}:{trainer.forces_weight:g})"
           if weights else "")

    def train(task: tuple[int, str, list | None]) -> tuple[Path, float]:
        n, variant, parents = task
        start = time.perf_counter()
        folder = trainer.train_ensemble(subsets[n], out / "models" / f"{variant}-n{n}",
                                        size=args.ensemble, seed=args.seed, parents=parents)
        print(f"n={n}, {variant}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        return folder, time.perf_counter() - start

    # each training is a mace_run_train process: --workers of them run at once
    tasks = [(n, variant, parents) for n in subsets for variant, parents in variants]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        trained = list(pool.map(train, tasks))
    for (n, variant, _), (folder, seconds) in zip(tasks, trained, strict=True):
        metrics = evaluate(load_energy_model(str(folder)), test, align_on=subsets[n])
        rows.append(row(f"MACE x{args.ensemble}, {variant}{tag}", n, metrics, seconds))
        print(f"n={n}, {variant}: energy MAE {metrics['energy_mae']:.1f} meV/atom", flush=True)

    for earlier in args.include:
        labels = {r["model"] for r in rows}
        rows += [r for r in json.loads(earlier.read_text())["rows"] if r["model"] not in labels]
    keys = ["model", "n_train_structures", "energy_mae", "force_mae", "stress_mae",
            "precision", "recall", "f1", "n_scored", "n_stable_dft", "seconds"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(
        {"args": vars(args), "n_frames": len(frames), "rows": rows}, indent=2, default=str))
    plot_learning_curve(rows, out / "learning_curve.png")
    print(f"-> {out}/results.md, results.json, learning_curve.png")


if __name__ == "__main__":
    main()

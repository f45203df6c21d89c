"""Does fine-tuning beat its parent? Pretrained CHGNet against CHGNet fine-tuned on GPAW frames.

The same split and scores as ``benchmarks/energy_model_quality.py``: GPAW
frames (``benchmarks/gpaw_dataset.py``), a fixed share of the structures held
out (all frames of a structure on one side), energy MAE after per-element
alignment on the training frames, force MAE and the hull decision (stable
within 0.1 eV/atom: precision, recall, F1) on the held-out frames. Each
variant (which layers train) is fine-tuned with xtalloop's
:class:`~xtalloop.learn.chgnet_finetune.ChgnetFinetuner` under several seeds,
one after another on one thread. Prints a table and writes ``results.json``
and ``results.md``.

Example (the table of benchmarks/README.md, "Fine-tuning CHGNet")::

    OMP_NUM_THREADS=1 python benchmarks/chgnet_finetune.py \\
        --out benchmarks/results/chgnet_finetune
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
sys.path.insert(0, str(REPO / "benchmarks"))

ALL = ("mlp", "atom_conv_layers", "bond_conv_layers", "angle_layers")
#: ChgnetFinetuner settings of each variant (which layers train; replay); a setting not
#: named keeps ChgnetFinetuner's default (replay on: 4 neighbours, 60 library structures,
#: anchored labels)
NO_REPLAY = {"replay_neighbours": 0, "replay_library": 0}
VARIANTS = {
    "mlp": {"trainable": ("mlp",), **NO_REPLAY},
    "mlp+conv3": {"trainable": ("mlp", "atom_conv_layers.3"), **NO_REPLAY},
    "all conv": {"trainable": ALL, **NO_REPLAY},
    "all conv+replay": {"trainable": ALL},
    "all conv+replay lib": {"trainable": ALL, "replay_neighbours": 0, "replay_library": 100},
    "all conv+replay w0.3": {"trainable": ALL, "replay_weight": 0.3},
    "all conv+replay unanchored": {"trainable": ALL, "replay_anchored": False},
}
KEYS = ("energy_mae", "force_mae", "stress_mae", "precision", "recall", "f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "benchmarks/results/gpaw_light.extxyz"))
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--variants", default="mlp,mlp+conv3,all conv",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--structures", default="all,40",
                        help="training structures per size (elemental phases always train; "
                             "a random subset of the compounds makes up the rest)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/chgnet_finetune")
    parser.add_argument("--models", type=Path, default=REPO / "runs/chgnet_finetune",
                        help="where the fine-tuned models are written")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := [v for v in variants if v not in VARIANTS]:
        parser.error(f"--variants: unknown {bad[0]!r}")
    seeds = [int(s) for s in args.seeds.split(",")]
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from energy_model_quality import load_frames

    from xtalloop.learn.chgnet_finetune import ChgnetFinetuner, load_finetuned
    from xtalloop.learn.dataset import covered, elements_of, groups, split_frames
    from xtalloop.learn.metrics import evaluate
    from xtalloop.models.energy_model import load_energy_model

    frames = load_frames(args.data)
    train, test = split_frames(frames, args.holdout)
    test = covered(test, elements_of(train))
    print(f"{len(frames)} frames of {len(groups(frames))} structures: train {len(train)} frames "
          f"of {len(groups(train))} structures, held out {len(test)} frames of "
          f"{len(groups(test))}", flush=True)
    elemental = [g for g in groups(train) if len(
        {s for a in train if a.info["group"] == g for s in a.get_chemical_symbols()}) == 1]
    compounds = [g for g in groups(train) if g not in elemental]
    order = [compounds[i] for i in np.random.default_rng(0).permutation(len(compounds))]
    subsets = {}
    for size in args.structures.split(","):
        n = len(groups(train)) if size == "all" else int(size)
        chosen = set(elemental) | set(order[:max(0, n - len(elemental))])
        subsets[len(chosen)] = [a for a in train if a.info["group"] in chosen]
    rows = []
    for n, subset in subsets.items():
        start = time.perf_counter()
        parent = evaluate(load_energy_model("chgnet"), test, align_on=subset)
        rows.append({"model": "CHGNet (pretrained, parent)", "structures": n, "seed": None,
                     "seconds": round(time.perf_counter() - start, 1),
                     **{k: parent.get(k) for k in KEYS}})
        for variant in variants:
            for seed in seeds:
                tuner = ChgnetFinetuner(epochs=args.epochs, **VARIANTS[variant])
                start = time.perf_counter()
                folder = args.models / f"{variant}-n{n}-{seed}".replace(" ", "_")
                description = tuner.train(subset, folder, seed=seed)
                seconds = time.perf_counter() - start
                metrics = evaluate(load_finetuned(description), test, align_on=subset)
                rows.append({"model": f"fine-tuned: {variant}", "structures": n, "seed": seed,
                             "seconds": round(seconds, 1),
                             **{k: metrics.get(k) for k in KEYS}})
                print(f"{n} structures, {variant}, seed {seed}: energy MAE "
                      f"{metrics['energy_mae']:.1f} meV/atom, F1 {metrics['f1']:.3f} "
                      f"({seconds:.0f} s)", flush=True)

    header = ["model", "structures", "seed", *KEYS, "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if r[k] is None else f"{r[k]:.3f}" if isinstance(r[k], float)
                                else str(r[k]) for k in header) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "n_train_frames": len(train),
        "n_train_structures": len(groups(train)), "n_elemental": len(elemental),
        "n_test_frames": len(test),
        "n_test_structures": len(groups(test)), "rows": rows}, indent=2))
    print(f"-> {args.out}/results.md, results.json")


if __name__ == "__main__":
    main()

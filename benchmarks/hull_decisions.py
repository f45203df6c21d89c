"""Which held-out GPAW structures does each model put on the wrong side of the hull?

``benchmarks/chgnet_finetune.py`` reports precision, recall and F1 of the hull
decision; on 31 structures one structure moves F1 by a few points, so this
prints the structures themselves: each held-out compound's energy above the
hull in DFT and under each model (pretrained CHGNet and the fine-tuned models
given), an ``X`` where a model's stable/unstable call (0.1 eV/atom) differs
from DFT's, and the final frames of one chemical system with their energies
per atom. Same split, training subset and alignment as ``chgnet_finetune.py``.

Example (the MgS case of benchmarks/README.md, "Replay, mended")::

    python benchmarks/hull_decisions.py \\
        runs/chgnet_finetune/all_conv+replay-n40-0/chgnet-finetuned.chgnet.json --system Mg,S
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="fine-tuned CHGNet descriptions (.chgnet.json)")
    parser.add_argument("--data", default=str(REPO / "benchmarks/results/gpaw_light.extxyz"))
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--structures", type=int, default=40)
    parser.add_argument("--system", default="", help="elements of a system to list, e.g. Mg,S")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import numpy as np
    from energy_model_quality import load_frames
    from pymatgen.core import Composition

    from xtalloop.hull import energies_above_hull
    from xtalloop.learn.chgnet_finetune import load_finetuned
    from xtalloop.learn.dataset import covered, elements_of, groups, split_frames
    from xtalloop.learn.metrics import FINAL, STABLE_WITHIN, _aligned_energy, element_offsets
    from xtalloop.models.energy_model import load_energy_model

    frames = load_frames(args.data)
    train, test = split_frames(frames, args.holdout)
    test = covered(test, elements_of(train))
    symbols = lambda g: {s for a in train if a.info["group"] == g  # noqa: E731
                         for s in a.get_chemical_symbols()}
    elemental = [g for g in groups(train) if len(symbols(g)) == 1]
    compounds = [g for g in groups(train) if g not in elemental]
    order = [compounds[i] for i in np.random.default_rng(0).permutation(len(compounds))]
    chosen = set(elemental) | set(order[:max(0, args.structures - len(elemental))])
    subset = [a for a in train if a.info["group"] in chosen]  # as chgnet_finetune.py

    models = {"CHGNet": load_energy_model("chgnet")}
    models.update({Path(m).parent.name or m: load_finetuned(m) for m in args.models})
    pool = test + subset
    finals = [i for i, a in enumerate(pool) if a.info.get("step") == FINAL]
    comps = [Composition(pool[i].get_chemical_formula()) for i in finals]
    energies = {"DFT": [pool[i].calc.results["energy"] for i in finals]}
    for name, model in models.items():
        predicted = model.predict(pool)
        offsets = element_offsets(subset, predicted[len(test):])
        energies[name] = [_aligned_energy(pool[i], predicted[i], offsets) for i in finals]
    elements = {c.elements[0].symbol for c in comps if len(c) == 1}
    print(f"held-out compounds: energy above the hull (eV/atom); X: the call differs from "
          f"DFT's (stable within {STABLE_WITHIN})")
    print(f"{'formula':10s} " + " ".join(f"{n[:22]:>22s}" for n in energies))
    for j, i in enumerate(finals):
        system = {e.symbol for e in comps[j].elements}
        if i >= len(test) or len(system) == 1 or not system <= elements:
            continue
        members = [k for k, c in enumerate(comps) if {e.symbol for e in c.elements} <= system]
        above = [energies_above_hull([(comps[j], e[j])], [(comps[k], e[k]) for k in members])[0]
                 for e in energies.values()]
        calls = [(a <= STABLE_WITHIN) != (above[0] <= STABLE_WITHIN) for a in above]
        print(f"{comps[j].reduced_formula:10s} " + " ".join(
            f"{a:20.3f} {'X' if c else '.'}" for a, c in zip(above, calls, strict=True)))
    if args.system:
        wanted = set(args.system.split(","))
        print(f"\nfinal frames of the {'-'.join(sorted(wanted))} system (eV/atom):")
        for j, i in enumerate(finals):
            if {e.symbol for e in comps[j].elements} <= wanted:
                n, side = len(pool[i]), "held out" if i < len(test) else "train"
                print(f"{pool[i].get_chemical_formula():8s} {side:8s} "
                      + " ".join(f"{e[j] / n:8.3f}" for e in energies.values()))


if __name__ == "__main__":
    main()

"""A stand-in MACE foundation model: MACE trained on CHGNet's energies of MP-20 crystals.

No MACE foundation model (MACE-MP-0 and kin) can be downloaded on these
machines, yet the energy-model benchmark should show what fine-tuning a
pretrained MACE on the loop's DFT data does. This script makes a small one
the way such models are made, only with CHGNet (itself trained on Materials
Project relaxations) as the labeller instead of VASP:

1. every MP-20 crystal (``train_partial`` and ``val``) made only of
   ``--elements`` with at most ``--max-atoms`` atoms, and each elemental
   reference prototype of :mod:`xtalloop.references` (the phases every hull
   is built on: without them the model's elemental energies are arbitrary,
   e.g. -20 eV/atom for a sulfur crystal),
2. plus ``--copies`` perturbed copies of each (atoms moved ~0.03 Å, cell
   strained ±2 %), for off-equilibrium forces and stresses,
3. labelled with CHGNet's energy, forces and stress (batched),
4. and a MACE trained on them from scratch with xtalloop's trainer.

The result, ``<out>/training/foundation.mace.json``, knows the
Materials-Project-like potential energy surface of those elements but not GPAW's, like a real
foundation model before it is fine-tuned to a user's DFT settings. Pass it to
``benchmarks/energy_model_quality.py --foundation``.

Example::

    python benchmarks/distilled_foundation.py --out benchmarks/results/foundation
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402

from benchmarks.gpaw_dataset import ELEMENTS, mp20_structures, perturbed  # noqa: E402


def chgnet_frames(structures: list, groups: list[str]) -> list:
    """ASE ``Atoms`` of ``structures`` carrying CHGNet's energy, forces and stress."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtalloop.models.energy_model import load_energy_model

    model = load_energy_model("chgnet")
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    frames = []
    for a, group, pred in zip(atoms, groups, model.predict(atoms), strict=True):
        a.calc = SinglePointCalculator(a, energy=pred.energy, forces=pred.forces,
                                       stress=pred.stress)
        a.info["group"] = group
        frames.append(a)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mp_20",
                        help="folder of MP-20's train_partial.csv.gz and val.csv.gz")
    parser.add_argument("--elements", default=",".join(ELEMENTS))
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--copies", type=int, default=2, help="perturbed copies per crystal")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/foundation")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from xtalloop.learn.mace_training import MaceTrainer

    elements = set(args.elements.split(","))
    crystals = []
    for split in ("train_partial", "val"):
        crystals += mp20_structures(f"{args.data}/{split}.csv.gz", elements, args.max_atoms)
    from xtalloop.references import elemental_prototypes

    crystals += [(f"prototype-{el}-{i}", s) for el in sorted(elements)
                 for i, s in enumerate(elemental_prototypes(el))]
    rng = np.random.default_rng(args.seed)
    structures, groups = [], []
    for material_id, structure in crystals:
        structures += [structure] + [perturbed(structure, rng) for _ in range(args.copies)]
        groups += [material_id] * (1 + args.copies)
    start = time.perf_counter()
    frames = chgnet_frames(structures, groups)
    print(f"{len(crystals)} MP-20 crystals and elemental prototypes of "
          f"{','.join(sorted(elements))}, "
          f"{len(frames)} frames labelled by CHGNet in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    out = Path(args.out)
    model = MaceTrainer(num_channels=args.channels, epochs=args.epochs).train(
        frames, out / "training", seed=args.seed, name="foundation")
    print(f"trained in {time.perf_counter() - start:.0f} s -> {model}")


if __name__ == "__main__":
    main()

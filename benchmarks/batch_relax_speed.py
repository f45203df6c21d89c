"""Batched ML relaxation against atomate2's ForceFieldRelaxMaker, one structure per job.

Generates ``--n`` random symmetric candidates (4-20 atoms, several binary and
ternary compositions), relaxes them

1. with :class:`xtalloop.rankers.batch_relax.BatchRelaxer` (one CHGNet call
   per step for every unconverged structure), and
2. with atomate2's ``ForceFieldRelaxMaker(force_field_name="CHGNet")``, one
   jobflow job per structure run with ``run_locally`` (FIRE on the same
   FrechetCellFilter, same fmax and step limit),

and prints structures relaxed per CPU-second for both, their ratio, and the
distribution of final-energy differences (meV/atom) between the two.

Example::

    python benchmarks/batch_relax_speed.py --n 200
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402
from pymatgen.core import Composition  # noqa: E402
from pymatgen.io.ase import AseAtomsAdaptor  # noqa: E402

COMPOSITIONS = ["NaCl", "MgO", "GaAs", "Si", "ZnS", "TiO2", "Li3PS4", "BaTiO3", "CaF2", "AlN"]


def candidates(n: int, seed: int) -> list:
    """``n`` random symmetric structures of 4 to 20 atoms over :data:`COMPOSITIONS`."""
    from xtalloop.generators import RandomSymmetricGenerator

    generator = RandomSymmetricGenerator(max_atoms=20, formula_units=(1, 2, 4, 8))
    per = -(-n // len(COMPOSITIONS))
    pool = []
    for i, formula in enumerate(COMPOSITIONS):
        made = generator.generate(Composition(formula), 3 * per, seed + i)
        pool += [c.structure for c in made if 4 <= len(c.structure) <= 20][:per]
    return pool[:n]


def relax_batched(structures: list, fmax: float, steps: int) -> tuple[list[float], float]:
    from xtalloop.models.energy_model import load_energy_model
    from xtalloop.rankers.batch_relax import BatchRelaxer

    model = load_energy_model("chgnet")
    model.predict([AseAtomsAdaptor.get_atoms(structures[0])])  # load weights before timing
    start = time.process_time()
    results = BatchRelaxer(model, fmax=fmax, steps=steps, progress=True).relax(
        [AseAtomsAdaptor.get_atoms(s) for s in structures])
    seconds = time.process_time() - start
    return [r.energy / len(r.atoms) for r in results], seconds


def relax_one_job_each(structures: list, fmax: float, steps: int) -> tuple[list[float], float]:
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker
    from jobflow import run_locally
    from tqdm import tqdm

    maker = ForceFieldRelaxMaker(force_field_name="CHGNet", steps=steps,
                                 relax_kwargs={"fmax": fmax},
                                 optimizer_kwargs={"optimizer": "FIRE"})
    run_locally(maker.make(structures[0]), log=False)  # load weights before timing
    energies = []
    start = time.process_time()
    for structure in tqdm(structures, desc="atomate2 one job each"):
        job = maker.make(structure)
        out = run_locally(job, log=False, ensure_success=True)
        doc = out[job.uuid][1].output
        energies.append(doc.output.energy / len(structure))
    return energies, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    structures = candidates(args.n, args.seed)
    sizes = [len(s) for s in structures]
    print(f"{len(structures)} structures, {min(sizes)}-{max(sizes)} atoms "
          f"(mean {np.mean(sizes):.1f}); fmax {args.fmax} eV/Å, {args.steps} steps")
    batched, t_batched = relax_batched(structures, args.fmax, args.steps)
    single, t_single = relax_one_job_each(structures, args.fmax, args.steps)
    diff = 1000 * np.abs(np.array(batched) - np.array(single))
    print(f"batched:            {len(structures) / t_batched:.3f} structures per CPU-second "
          f"({t_batched:.0f} CPU-s)")
    print(f"atomate2, one each: {len(structures) / t_single:.3f} structures per CPU-second "
          f"({t_single:.0f} CPU-s)")
    print(f"speed-up: {t_single / t_batched:.1f}x")
    print(f"|E_batched - E_atomate2| (meV/atom): median {np.median(diff):.2f}, "
          f"90th percentile {np.percentile(diff, 90):.2f}, max {diff.max():.2f}; "
          f"within 5 meV/atom: {np.mean(diff <= 5):.0%}")


if __name__ == "__main__":
    main()

"""Batched ML relaxation against atomate2's ForceFieldRelaxMaker, one structure per job.

Generates ``--n`` random symmetric candidates (4-20 atoms, several binary and
ternary compositions), relaxes them

1. with :class:`xtalloop.rankers.batch_relax.BatchRelaxer` (one model call per
   step for every unconverged structure), and
2. with atomate2's ``ForceFieldRelaxMaker``, one jobflow job per structure run
   with ``run_locally``,

with the same model (``--model``: pretrained CHGNet, or a MACE ``.model`` file
in float64), optimiser (ASE's FIRE with its default parameters), cell filter
(FrechetCellFilter), fmax and step limit, and prints structures relaxed per
CPU-second for both, their ratio, and the distribution of final-energy
differences (meV/atom) between the two. Every relaxation whose final energy
differs by more than 5 meV/atom is listed: converged or not, steps, and
whether the two final structures are the same (pymatgen's
``StructureMatcher``), which tells a relaxation that went to another local
minimum from an inaccurate one. For float32, the error of the precision
itself is printed too: the float32 energies of the final structures against
float64 energies of the same structures.

Example::

    python benchmarks/batch_relax_speed.py --n 200
    python benchmarks/batch_relax_speed.py --model path/to/mace.model --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402
from pymatgen.core import Composition  # noqa: E402
from pymatgen.io.ase import AseAtomsAdaptor  # noqa: E402

if TYPE_CHECKING:
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker

COMPOSITIONS = ["NaCl", "MgO", "GaAs", "Si", "ZnS", "TiO2", "Li3PS4", "BaTiO3", "CaF2", "AlN"]


def candidates(n: int, seed: int, compositions: list[str] = COMPOSITIONS) -> list:
    """``n`` random symmetric structures of 4 to 20 atoms over ``compositions``."""
    from xtalloop.generators import RandomSymmetricGenerator

    generator = RandomSymmetricGenerator(max_atoms=20, formula_units=(1, 2, 4, 8))
    per = -(-n // len(compositions))
    pool = []
    for i, formula in enumerate(compositions):
        made = generator.generate(Composition(formula), 3 * per, seed + i)
        pool += [c.structure for c in made if 4 <= len(c.structure) <= 20][:per]
    return pool[:n]


def relax_batched(structures: list, model_spec: str, fmax: float, steps: int,
                  dtype: str = "float64") -> tuple[list, float]:
    from xtalloop.models.energy_model import load_energy_model
    from xtalloop.models.mace_model import MaceModel
    from xtalloop.rankers.batch_relax import BatchRelaxer

    model = (load_energy_model(model_spec) if model_spec == "chgnet"
             else MaceModel([model_spec], dtype=dtype))
    print(f"model: {model.name} ({model.version}){'' if model_spec == 'chgnet' else ', ' + dtype}")
    model.predict([AseAtomsAdaptor.get_atoms(structures[0])])  # load weights before timing
    start = time.process_time()
    results = BatchRelaxer(model, fmax=fmax, steps=steps, progress=True).relax(
        [AseAtomsAdaptor.get_atoms(s) for s in structures])
    seconds = time.process_time() - start
    return results, seconds


def atomate2_maker(model_spec: str, fmax: float, steps: int) -> ForceFieldRelaxMaker:
    """ForceFieldRelaxMaker with BatchRelaxer's optimiser, cell filter, fmax and steps."""
    from ase.filters import FrechetCellFilter
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker

    like_batched = {
        "steps": steps,
        "relax_cell": True,
        "relax_kwargs": {"fmax": fmax, "cell_filter": FrechetCellFilter},
        "optimizer_kwargs": {"optimizer": "FIRE"},
    }
    if model_spec == "chgnet":
        return ForceFieldRelaxMaker(force_field_name="CHGNet", **like_batched)
    # An existing file as "model" makes atomate2 build MACECalculator(model_paths=...)
    # instead of downloading a foundation model.
    return ForceFieldRelaxMaker(
        force_field_name="MACE",
        calculator_kwargs={"model": model_spec, "default_dtype": "float64"},
        **like_batched,
    )


def relax_one_job_each(structures: list, model_spec: str, fmax: float,
                       steps: int) -> tuple[list, float]:
    from jobflow import run_locally
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    maker = atomate2_maker(model_spec, fmax, steps)
    run_locally(maker.make(structures[0]), log=False)  # load weights before timing
    docs = []
    start = time.process_time()
    # BatchRelaxer runs with single-threaded BLAS (its cell filter's 3x3 matrix
    # functions only contend for threads); the same here keeps the comparison fair.
    with threadpool_limits(limits=1, user_api="blas"):
        for structure in tqdm(structures, desc="atomate2 one job each"):
            job = maker.make(structure)
            out = run_locally(job, log=False, ensure_success=True)
            docs.append(out[job.uuid][1].output)
    return docs, time.process_time() - start


def report_outliers(results: list, docs: list, threshold: float = 5.0) -> None:
    """List the relaxations whose final energies differ by more than ``threshold`` meV/atom."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    for i, (result, doc) in enumerate(zip(results, docs, strict=True)):
        n = len(result.atoms)
        diff = 1000 * abs(result.energy / n - doc.output.energy / n)
        if diff <= threshold:
            continue
        same = matcher.fit(AseAtomsAdaptor.get_structure(result.atoms), doc.structure)
        print(f"  #{i} {result.atoms.get_chemical_formula()}: {diff:.1f} meV/atom; batched "
              f"{'converged' if result.converged else 'not converged'} in {result.n_steps} "
              f"steps, atomate2 {doc.is_force_converged and 'converged' or 'not converged'} "
              f"({doc.output.n_steps} steps as atomate2 counts them); same final structure: {same}")


def precision_error(results: list, model_spec: str) -> np.ndarray:
    """|E(float32) - E(float64)| (meV/atom) of the model at each batched final structure."""
    from xtalloop.models.mace_model import MaceModel

    exact = MaceModel([model_spec]).predict([r.atoms for r in results])
    return np.array([1000 * abs(r.energy - e.energy) / len(r.atoms)
                     for r, e in zip(results, exact, strict=True)])


def model_spec(value: str) -> str:
    """``"chgnet"`` or the path of an existing MACE ``.model`` file."""
    if value.lower() == "chgnet":
        return "chgnet"
    path = Path(value).expanduser()
    if path.suffix != ".model" or not path.is_file():
        raise argparse.ArgumentTypeError(f"not 'chgnet' nor a MACE .model file: {value}")
    return str(path.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--compositions", default=",".join(COMPOSITIONS),
                        help="comma-separated formulas (their elements must be in the model)")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=model_spec, default="chgnet",
                        help="'chgnet' (default) or a path to a MACE .model file")
    parser.add_argument("--dtype", default="float64,float32",
                        help="MACE precision(s) of the batched runs; atomate2 runs float64")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    structures = candidates(args.n, args.seed, args.compositions.split(","))
    sizes = [len(s) for s in structures]
    print(f"{len(structures)} structures, {min(sizes)}-{max(sizes)} atoms "
          f"(mean {np.mean(sizes):.1f}); fmax {args.fmax} eV/Å, {args.steps} steps, "
          f"FIRE on FrechetCellFilter; {torch.get_num_threads()} torch threads")
    dtypes = ["float64"] if args.model == "chgnet" else args.dtype.split(",")
    batched = {d: relax_batched(structures, args.model, args.fmax, args.steps, d)
               for d in dtypes}
    docs, t_single = relax_one_job_each(structures, args.model, args.fmax, args.steps)
    single = [d.output.energy / len(s) for d, s in zip(docs, structures, strict=True)]
    print(f"atomate2, one each (float64): {len(structures) / t_single:.3f} structures per "
          f"CPU-second ({t_single:.0f} CPU-s)")
    for dtype, (results, seconds) in batched.items():
        energies = [r.energy / len(r.atoms) for r in results]
        diff = 1000 * np.abs(np.array(energies) - np.array(single))
        print(f"batched ({dtype}): {len(structures) / seconds:.3f} structures per CPU-second "
              f"({seconds:.0f} CPU-s), speed-up {t_single / seconds:.1f}x; "
              f"|E_batched - E_atomate2| (meV/atom): median {np.median(diff):.3f}, "
              f"90th percentile {np.percentile(diff, 90):.3f}, max {diff.max():.3f}; "
              f"within 5 meV/atom: {np.mean(diff <= 5):.0%}")
        if dtype == "float32":
            error = precision_error(results, args.model)
            print(f"  float32 vs float64 energy at the same final structures (meV/atom): "
                  f"median {np.median(error):.4f}, max {error.max():.4f}")
        report_outliers(results, docs)


if __name__ == "__main__":
    main()

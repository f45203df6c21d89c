"""Batched ML relaxation against atomate2's ForceFieldRelaxMaker, one structure per job.

Generates ``--n`` random symmetric candidates (4-20 atoms, several binary and
ternary compositions), relaxes them

1. with :class:`xtalloop.rankers.batch_relax.BatchRelaxer` (one model call per
   step for every unconverged structure), and
2. with atomate2's ``ForceFieldRelaxMaker``, one jobflow job per structure run
   with ``run_locally``,

and/or (``--baseline ase``)
3. with the loop atomate2's job runs inside, without jobflow around it: one
   ``FIRE(FrechetCellFilter(atoms))`` per structure with mace's ASE
   ``MACECalculator``. It is atomate2's relaxation without the job's
   bookkeeping (jobflow, trajectory and output documents), so a speed-up
   against it bounds the speed-up against atomate2 from below; it needs
   neither atomate2 nor jobflow (a GPU machine with only torch, ase, mace and
   pymatgen runs it),

with the same model (``--model``: pretrained CHGNet, or a native MACE
``.mace.json`` in float64; mace's own calculator, which the baselines use,
reads only pickles, so this process writes one from the native model for
them), optimiser (ASE's FIRE with its default parameters), cell filter
(FrechetCellFilter), fmax and step limit, on ``--device`` (``cpu`` or
``cuda``), and prints structures relaxed per CPU-second (and per wall-second)
for each, the ratios to the first baseline, and the distribution of
final-energy differences (meV/atom) to it. Every relaxation whose final energy
differs by more than 5 meV/atom is listed: converged or not, steps, and
whether the two final structures are the same (pymatgen's
``StructureMatcher``), which tells a relaxation that went to another local
minimum from an inaccurate one. For float32, the error of the precision
itself is printed too: the float32 energies of the final structures against
float64 energies of the same structures.

``--write-structures F`` saves the candidates (extxyz) and ``--structures F``
reads them instead of generating (generating needs PyXtal).

Example::

    python benchmarks/batch_relax_speed.py --n 200
    python benchmarks/batch_relax_speed.py --model path/to/mace.mace.json --threads 1 \\
        --baseline atomate2,ase
    python benchmarks/batch_relax_speed.py --model path/to/mace.mace.json --device cuda \\
        --structures candidates.extxyz --baseline ase --atoms-per-pass 256,4096
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402
from pymatgen.core import Composition, Structure  # noqa: E402
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


def read_structures(path: str) -> list:
    """Candidates saved by ``--write-structures`` (extxyz)."""
    from ase.io import read

    return [AseAtomsAdaptor.get_structure(a) for a in read(path, ":")]


def relax_batched(structures: list, model_spec: str, fmax: float, steps: int,
                  dtype: str = "float64", device: str = "cpu",
                  atoms_per_pass: int | None = None) -> tuple[list, float, float, int | None]:
    """BatchRelaxer's results, CPU-seconds, wall-seconds and atoms per pass."""
    from xtalloop.models.energy_model import load_energy_model
    from xtalloop.models.mace_model import MaceModel
    from xtalloop.rankers.batch_relax import BatchRelaxer

    model = (load_energy_model(model_spec, device) if model_spec == "chgnet"
             else MaceModel([model_spec], device=device, dtype=dtype,
                            max_atoms_per_batch=atoms_per_pass))
    per_pass = getattr(model, "max_atoms_per_batch", None)
    print(f"model: {model.name} ({model.version})"
          f"{'' if model_spec == 'chgnet' else f', {dtype}, {per_pass} atoms per pass'}")
    model.predict([AseAtomsAdaptor.get_atoms(s) for s in structures[:8]])  # warm up
    start, wall = time.process_time(), time.perf_counter()
    results = BatchRelaxer(model, fmax=fmax, steps=steps, progress=True).relax(
        [AseAtomsAdaptor.get_atoms(s) for s in structures])
    return results, time.process_time() - start, time.perf_counter() - wall, per_pass


def atomate2_maker(model_spec: str, fmax: float, steps: int,
                   device: str = "cpu") -> ForceFieldRelaxMaker:
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
        calculator_kwargs={"model": model_spec, "default_dtype": "float64", "device": device},
        **like_batched,
    )


@dataclass
class Single:
    """One structure relaxed alone: final energy (eV), structure, convergence, steps."""

    energy: float
    structure: Structure
    converged: bool
    n_steps: int


def relax_atomate2(structures: list, model_spec: str, fmax: float, steps: int,
                   device: str = "cpu") -> tuple[list[Single], float, float]:
    """One ForceFieldRelaxMaker job per structure, each run with ``run_locally``."""
    from jobflow import run_locally
    from tqdm import tqdm

    maker = atomate2_maker(model_spec, fmax, steps, device)
    run_locally(maker.make(structures[0]), log=False)  # load weights before timing
    out = []
    start, wall = time.process_time(), time.perf_counter()
    for structure in tqdm(structures, desc="atomate2 one job each"):
        job = maker.make(structure)
        doc = run_locally(job, log=False, ensure_success=True)[job.uuid][1].output
        out.append(Single(doc.output.energy, doc.structure, bool(doc.is_force_converged),
                          doc.output.n_steps))
    return out, time.process_time() - start, time.perf_counter() - wall


def relax_ase(structures: list, model_spec: str, fmax: float, steps: int,
              device: str = "cpu") -> tuple[list[Single], float, float]:
    """One ``FIRE(FrechetCellFilter(atoms))`` per structure with mace's MACECalculator."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from tqdm import tqdm

    if model_spec == "chgnet":
        raise SystemExit("--baseline ase runs MACE models only")
    from mace.calculators import MACECalculator

    calculator = MACECalculator(model_paths=model_spec, device=device, default_dtype="float64")
    warm = AseAtomsAdaptor.get_atoms(structures[0])
    warm.calc = calculator
    warm.get_forces()  # load weights before timing
    out = []
    start, wall = time.process_time(), time.perf_counter()
    for structure in tqdm(structures, desc="ASE FIRE one each"):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged = optimizer.run(fmax=fmax, steps=steps)
        out.append(Single(atoms.get_potential_energy(), AseAtomsAdaptor.get_structure(atoms),
                          bool(converged), optimizer.nsteps))
    return out, time.process_time() - start, time.perf_counter() - wall


def report_outliers(results: list, singles: list[Single], name: str,
                    threshold: float = 5.0) -> None:
    """List the relaxations whose final energies differ by more than ``threshold`` meV/atom."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    for i, (result, single) in enumerate(zip(results, singles, strict=True)):
        n = len(result.atoms)
        diff = 1000 * abs(result.energy / n - single.energy / n)
        if diff <= threshold:
            continue
        same = matcher.fit(AseAtomsAdaptor.get_structure(result.atoms), single.structure)
        print(f"  #{i} {result.atoms.get_chemical_formula()}: {diff:.1f} meV/atom; batched "
              f"{'converged' if result.converged else 'not converged'} in {result.n_steps} "
              f"steps, {name} {'converged' if single.converged else 'not converged'} "
              f"({single.n_steps} steps as {name} counts them); same final structure: {same}")


def precision_error(results: list, model_spec: str, device: str = "cpu") -> np.ndarray:
    """|E(float32) - E(float64)| (meV/atom) of the model at each batched final structure."""
    from xtalloop.models.mace_model import MaceModel

    exact = MaceModel([model_spec], device=device).predict([r.atoms for r in results])
    return np.array([1000 * abs(r.energy - e.energy) / len(r.atoms)
                     for r, e in zip(results, exact, strict=True)])


def model_spec(value: str) -> str:
    """``"chgnet"`` or the path of an existing native MACE model (``.mace.json``)."""
    if value.lower() == "chgnet":
        return "chgnet"
    path = Path(value).expanduser()
    if not path.name.endswith(".mace.json") or not path.is_file():
        raise argparse.ArgumentTypeError(f"not 'chgnet' nor a MACE .mace.json file: {value}")
    return str(path.resolve())


def pickle_for_mace(native: str) -> str:
    """The native model as the ``.model`` pickle mace's calculator reads, written by this process.

    xtalloop never unpickles a file it did not write in the same process; the
    baselines (mace's ``MACECalculator``, directly or through atomate2) read
    only pickles, so they get one written here, from the native model.
    """
    import tempfile

    import torch

    from xtalloop.models.mace_format import load_native

    path = Path(tempfile.mkdtemp(prefix="batch-relax-speed-")) / "model.model"
    torch.save(load_native(native), path)
    return str(path)


def rate(n: int, cpu: float, wall: float) -> str:
    return (f"{n / cpu:.3f} structures per CPU-second ({cpu:.0f} CPU-s; "
            f"{n / wall:.3f} per wall-second, {wall:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--compositions", default=",".join(COMPOSITIONS),
                        help="comma-separated formulas (their elements must be in the model)")
    parser.add_argument("--structures", default=None,
                        help="read the candidates from this extxyz file instead of generating")
    parser.add_argument("--write-structures", default=None,
                        help="save the candidates to this extxyz file")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=model_spec, default="chgnet",
                        help="'chgnet' (default) or a path to a MACE .mace.json file")
    parser.add_argument("--dtype", default="float64,float32",
                        help="MACE precision(s) of the batched runs; baselines run float64")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--atoms-per-pass", default="auto",
                        help="comma-separated MACE batch sizes (atoms per forward pass); "
                             "auto: MaceModel's default for the device")
    parser.add_argument("--baseline", default="atomate2",
                        help="comma-separated: atomate2 (ForceFieldRelaxMaker jobs), ase "
                             "(FIRE per structure, MACE only); energies compare to the first")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from threadpoolctl import threadpool_limits

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    baselines = args.baseline.split(",")
    if unknown := set(baselines) - {"atomate2", "ase"}:
        parser.error(f"unknown baseline(s): {', '.join(sorted(unknown))}")

    structures = (read_structures(args.structures) if args.structures
                  else candidates(args.n, args.seed, args.compositions.split(",")))
    if args.write_structures:
        from ase.io import write

        write(args.write_structures, [AseAtomsAdaptor.get_atoms(s) for s in structures],
              format="extxyz")
    n = len(structures)
    sizes = [len(s) for s in structures]
    device = args.device
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name()})"
    print(f"{n} structures, {min(sizes)}-{max(sizes)} atoms (mean {np.mean(sizes):.1f}); "
          f"fmax {args.fmax} eV/Å, {args.steps} steps, FIRE on FrechetCellFilter; "
          f"{torch.get_num_threads()} torch threads; device {device}")
    dtypes = ["float64"] if args.model == "chgnet" else args.dtype.split(",")
    per_pass = [None if x == "auto" else int(x) for x in args.atoms_per_pass.split(",")]
    batched = {(d, p): relax_batched(structures, args.model, args.fmax, args.steps, d,
                                     args.device, p)
               for d in dtypes for p in per_pass}
    run = {"atomate2": relax_atomate2, "ase": relax_ase}
    singles = {}
    single_model = args.model if args.model == "chgnet" else pickle_for_mace(args.model)
    # BatchRelaxer runs with single-threaded BLAS (its cell filter's 3x3 matrix
    # functions only contend for threads); the same here keeps the comparison fair.
    with threadpool_limits(limits=1, user_api="blas"):
        for name in baselines:
            singles[name] = run[name](structures, single_model, args.fmax, args.steps,
                                      args.device)
    reference = baselines[0]
    for name, (_, cpu, wall) in singles.items():
        ratio = "" if name == reference else \
            f", speed-up over {reference} {singles[reference][1] / cpu:.2f}x"
        print(f"{name}, one each (float64): {rate(n, cpu, wall)}{ratio}")
    single = np.array([s.energy / len(x) for s, x in zip(singles[reference][0], structures,
                                                          strict=True)])
    for name, (others, _, _) in singles.items():
        if name != reference:
            other = np.array([s.energy / len(x) for s, x in zip(others, structures,
                                                                strict=True)])
            diff = 1000 * np.abs(other - single)
            print(f"  |E_{name} - E_{reference}| (meV/atom): max {diff.max():.3f}")
    for (dtype, _), (results, cpu, wall, atoms_per_pass) in batched.items():
        energies = np.array([r.energy / len(r.atoms) for r in results])
        diff = 1000 * np.abs(energies - single)
        speedups = ", ".join(
            f"{s[1] / cpu:.1f}x over {name} ({s[2] / wall:.1f}x in wall time)"
            for name, s in singles.items())
        print(f"batched ({dtype}, {atoms_per_pass or 'all'} atoms per pass): "
              f"{rate(n, cpu, wall)}; "
              f"speed-up {speedups}; |E_batched - E_{reference}| (meV/atom): median "
              f"{np.median(diff):.3f}, 90th percentile {np.percentile(diff, 90):.3f}, max "
              f"{diff.max():.3f}; within 5 meV/atom: {np.sum(diff <= 5)} of {n}")
        if dtype == "float32":
            error = precision_error(results, args.model, args.device)
            print(f"  float32 vs float64 energy at the same final structures (meV/atom): "
                  f"median {np.median(error):.4f}, max {error.max():.4f}")
        report_outliers(results, singles[reference][0], reference)


if __name__ == "__main__":
    main()

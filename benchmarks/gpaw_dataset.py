"""Label light-element structures with GPAW: the DFT data set of the energy-model benchmark.

The structures are the kind the loop sends to DFT, over the chemical systems
of a few light elements:

1. every MP-20 ``train_partial`` crystal of those elements with at most
   ``--max-atoms`` atoms (the known ground states and polymorphs),
2. ``--candidates`` random symmetric candidates per composition, relaxed with
   CHGNet (what the prefilter hands to DFT: mostly above the hull),
3. each elemental reference prototype of :mod:`xtalloop.references`,

and a rattled, strained copy of each (0.05 Å, ±2 % cell) for off-equilibrium
forces. Every structure gets one GPAW single point with the loop's own DFT
settings (:class:`xtalloop.dft.gpaw.GpawRelaxMaker`: PBE, element-dependent
cutoff; 2 k-points per Å⁻¹ by default, the same for every frame of a data set). The output is an extended-XYZ file with
``energy``, ``forces`` and ``stress`` and, in ``info``, ``group`` (the
structure the frame belongs to, so that train/test splits never share one),
``source`` and ``variant``. It is written after every frame, and a second
call with the same ``--out`` goes on where an interrupted one stopped.

Example::

    python benchmarks/gpaw_dataset.py --out benchmarks/results/gpaw_light.extxyz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pymatgen.core import Composition, Structure  # noqa: E402
from pymatgen.io.ase import AseAtomsAdaptor  # noqa: E402

ELEMENTS = ("Li", "Na", "Mg", "Al", "Si", "N", "O", "F", "S", "Cl")


def mp20_structures(csv: str, elements: set[str], max_atoms: int) -> list[tuple[str, Structure]]:
    """``(material_id, structure)`` of every CSV crystal made only of ``elements``."""
    import pandas as pd

    frame = pd.read_csv(csv)
    rows = []
    for row in frame.itertuples():
        names = set(str(row.elements_list).strip("[]").replace("'", "").replace(",", " ").split())
        if names <= elements and row.nsites <= max_atoms:
            rows.append((row.material_id, Structure.from_str(row.cif, fmt="cif")))
    return rows


def relaxed_candidates(formulas: list[str], n: int, max_atoms: int, seed: int) -> list:
    """``n`` random symmetric candidates per formula after a CHGNet relaxation."""
    from xtalloop.generators import RandomSymmetricGenerator
    from xtalloop.models.energy_model import load_energy_model
    from xtalloop.rankers.batch_relax import BatchRelaxer

    generator = RandomSymmetricGenerator(max_atoms=max_atoms)
    made = []
    for i, formula in enumerate(formulas):
        made += [(formula, c.structure) for c in
                 generator.generate(Composition(formula), n, seed + i)[:n]]
    relaxer = BatchRelaxer(load_energy_model("chgnet"), steps=200, description="CHGNet relax")
    results = relaxer.relax([AseAtomsAdaptor.get_atoms(s) for _, s in made])
    return [(f"candidate-{formula}-{i}", AseAtomsAdaptor.get_structure(r.atoms))
            for i, ((formula, _), r) in enumerate(zip(made, results, strict=True))
            if r.failure is None]


def perturbed(structure: Structure, rng: np.random.Generator) -> Structure:
    """A copy with atoms moved by up to ~0.05 Å and the cell strained by ±2 %."""
    out = structure.copy()
    strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
    out.lattice = type(out.lattice)(out.lattice.matrix @ ((strain + strain.T) / 2))
    for i in range(len(out)):
        out.translate_sites([i], rng.normal(0, 0.03, 3), frac_coords=False)
    return out


def label(structure: Structure, group: str, source: str, variant: str,
          kpoint_density: float = 2.0):
    """One GPAW single point of ``structure`` as ASE ``Atoms`` with a stored calculator."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from xtalloop.dft.gpaw import GpawRelaxMaker
    from xtalloop.references import is_molecular

    atoms = AseAtomsAdaptor.get_atoms(structure)
    maker = GpawRelaxMaker(kpoint_density=kpoint_density, calculator_kwargs={"txt": None})
    atoms.calc = maker.calculator_for(structure)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = None if is_molecular(structure) else atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
    atoms.info.update(group=group, source=source, variant=variant)
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default="../shared/data/mp_20/train_partial.csv.gz")
    parser.add_argument("--elements", default=",".join(ELEMENTS))
    parser.add_argument("--max-atoms", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--kpoint-density", type=float, default=2.0, help="k-points per Å⁻¹")
    parser.add_argument("--limit", type=int, default=None,
                        help="label at most this many structures (a random subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/gpaw_light.extxyz")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # CHGNet on 2 shared cores: more threads only contend
    from ase.io import read, write
    from tqdm import tqdm

    from xtalloop.references import elemental_prototypes

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.with_suffix(".structures.json")
    if cache.is_file():  # the CHGNet-relaxed candidates of an earlier, interrupted call
        todo = [(g, Structure.from_dict(s), src) for g, s, src in json.loads(cache.read_text())]
    else:
        elements = set(args.elements.split(","))
        known = mp20_structures(args.csv, elements, args.max_atoms)
        formulas = sorted({s.composition.reduced_formula for _, s in known
                           if len(s.composition) > 1})
        todo = [(mid, s, "mp20") for mid, s in known]
        todo += [(name, s, "candidate") for name, s in
                 relaxed_candidates(formulas, args.candidates, args.max_atoms, args.seed)]
        todo += [(f"prototype-{el}-{i}", s, "elemental prototype")
                 for el in sorted(elements) for i, s in enumerate(elemental_prototypes(el))]
        cache.write_text(json.dumps([(g, s.as_dict(), src) for g, s, src in todo]))
    rng = np.random.default_rng(args.seed)
    todo = [t for t in todo if len(t[1]) <= args.max_atoms]
    if args.limit is not None and args.limit < len(todo):  # keep every elemental prototype
        elemental = [t for t in todo if t[2] == "elemental prototype"]
        rest = [t for t in todo if t[2] != "elemental prototype"]
        keep = rng.choice(len(rest), max(0, args.limit - len(elemental)), replace=False)
        todo = elemental + [rest[i] for i in sorted(keep)]
    # a random order: an interrupted call still leaves a mix of every kind
    todo = [todo[i] for i in rng.permutation(len(todo))]
    jobs = [job for group, s, source in todo for job in
            ((group, s, source, "as is"), (group, perturbed(s, rng), source, "perturbed"))]
    frames = read(out, index=":") if out.is_file() else []  # resume an interrupted call
    done = {(a.info["group"], a.info["variant"]) for a in frames}
    jobs = [job for job in jobs if (job[0], job[3]) not in done]
    print(f"{len(todo)} structures, {len(jobs)} GPAW single points to go, "
          f"{len(frames)} frames already in {out}")
    start = time.perf_counter()
    for group, structure, source, variant in tqdm(jobs, desc="GPAW"):
        try:
            frames.append(label(structure, group, source, variant, args.kpoint_density))
        except Exception as exc:  # an SCF that does not converge: leave the frame out
            print(f"{group} ({variant}): {type(exc).__name__}: {exc}")
            continue
        write(out, frames, format="extxyz")
    print(f"{len(frames)} frames ({time.perf_counter() - start:.0f} s in this call) -> {out}")


if __name__ == "__main__":
    main()

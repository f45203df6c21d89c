"""Replay structures for fine-tuning: what the parent knew, kept while it learns new DFT.

Why: CHGNet fine-tuned on a few dozen GPAW structures learnt GPAW's energy
scale (held-out MAE 243 → 50 meV/atom) but drifted elsewhere: against MP's
formation energies its error on structures without MP2020-corrected elements
went 0.081 → 0.106 eV/atom (benchmarks/README.md, "Fine-tuning CHGNet").
Replay mixes structures labelled by the parent itself into the training, so
the retrained layers are held to the parent where the new data say nothing.

Two kinds of replay structure, both built from data that ship with pymatgen
(so a loop on a machine without the shared data sets has them):

- **neighbours**: other structure types of each training composition, from
  the 288 AFLOW prototypes with the composition's elements substituted
  (:class:`~xtalloop.generators.prototype_substitution.PrototypeSubstitutionGenerator`,
  explored with the seed). They hold the parent's polymorph ordering of the
  very chemistries the model is then used for;
- **library**: AFLOW prototypes as they are (their archetype compounds:
  rocksalt NaCl, rutile TiO2, the A15 and Laves phases...), for the rest of
  the periodic table.

Every structure is rattled (Gaussian displacements) and strained slightly,
so the parent's forces carry information, not only zeros (fine-tuning fits
energies and forces; it fits no stress).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

logger = logging.getLogger(__name__)

#: Standard deviation (Å) of the displacement of each atom of a replay structure.
RATTLE = 0.05
#: Largest engineering strain (each of the six components) of a replay cell.
STRAIN = 0.03


def replay_structures(compositions: Iterable[str], per_composition: int, library: int,
                      seed: int = 0, max_atoms: int = 20) -> list[Atoms]:
    """Rattled, strained structures to be labelled by the parent model.

    Parameters
    ----------
    compositions
        Formulas of the training structures; each distinct reduced formula
        gets up to ``per_composition`` AFLOW prototypes with its elements.
    per_composition
        Neighbours per composition (0: none).
    library
        AFLOW library structures as they are, drawn with the seed (0: none).
    seed
        Makes the draw, the rattle and the strain reproducible.
    max_atoms
        Larger structures are not used (the cost of a training step).

    Returns
    -------
    list of Atoms
        Unlabelled; ``info["replay"]`` says which kind each is.
    """
    from pymatgen.core import Composition
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtalloop.generators.prototype_substitution import PrototypeSubstitutionGenerator

    structures = []
    formulas = sorted({Composition(c).reduced_formula for c in compositions})
    if per_composition > 0:
        generator = PrototypeSubstitutionGenerator(reference_csv="aflow", max_atoms=max_atoms,
                                                   explore=1.0)
        for formula in formulas:
            if len(Composition(formula)) < 2:
                continue  # elements: the AFLOW elemental prototypes come as library structures
            for cand in generator.generate(Composition(formula), per_composition, seed):
                structures.append((cand.structure, "neighbour"))
    if library > 0:
        from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

        table = [e["snl"].structure for e in AFLOW_PROTOTYPE_LIBRARY]
        table = [s for s in table if len(s) <= max_atoms]
        rng = np.random.default_rng(seed)
        for i in rng.permutation(len(table))[:library]:
            structures.append((table[i].copy(), "library"))
    rng = np.random.default_rng(seed + 1)
    out = []
    for structure, kind in structures:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        strain = rng.uniform(-STRAIN, STRAIN, 6)
        eps = np.array([[strain[0], strain[5] / 2, strain[4] / 2],
                        [strain[5] / 2, strain[1], strain[3] / 2],
                        [strain[4] / 2, strain[3] / 2, strain[2]]])
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
        atoms.positions += rng.normal(0.0, RATTLE, atoms.positions.shape)
        atoms.info["replay"] = kind
        out.append(atoms)
    logger.info("replay: %d structures (%d neighbours of %d compositions, %d library)",
                len(out), sum(k == "neighbour" for _, k in structures), len(formulas),
                sum(k == "library" for _, k in structures))
    return out

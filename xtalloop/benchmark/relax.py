"""Relaxation of a composition's candidates for the CSP benchmark, energies kept.

The energy per atom of each relaxed candidate is what ranks them: the
benchmark's ``ranked@1`` asks whether the lowest-energy candidate matches the
ground truth, the structure a user of the loop would pick before any DFT.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from pymatgen.core import Structure

from xtalloop.errors import ConfigError, XtalloopError

logger = logging.getLogger(__name__)

#: ``relax(structures) -> (relaxed structures, energies per atom)``; see
#: :func:`xtalloop.benchmark.csp.run_csp_benchmark`.
Relax = Callable[[list[Structure]], tuple[list[Structure], list[float | None]]]

#: Relaxation outcomes whose energy does not rank the candidate.
UNRANKED_FAILURES = frozenset({"non-finite energy", "cell exploded"})


def make_relax(spec: str, device: str, fmax: float, steps: int) -> Relax:
    """A :data:`Relax` that relaxes all candidates of a composition in one batch.

    Parameters
    ----------
    spec
        ``chgnet``, ``sevennet``, ``diep``, ``emt`` or a MACE model file (see
        :func:`~xtalloop.models.load_energy_model`).
    device
        Torch device of the model.
    fmax, steps
        Force threshold (eV/Å) and step limit of the batched FIRE relaxation
        (:class:`~xtalloop.rankers.batch_relax.BatchRelaxer`: one model call per
        step for every candidate not yet converged).

    Raises
    ------
    ConfigError
        ``--relax: ...`` in one line if the model cannot be loaded (an unknown
        name, a pretrained model's package or a model file missing).

    Returns
    -------
    Relax
        Returns the relaxed structures in input order and each one's final
        energy per atom (eV/atom); the energy is None where the relaxation
        failed (a non-finite energy, a cell that blew up). A candidate that hit
        the step limit keeps its last energy.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtalloop.errors import one_line
    from xtalloop.models import load_energy_model
    from xtalloop.rankers.batch_relax import BatchRelaxer

    try:
        model = load_energy_model(spec, device)
    except XtalloopError as exc:  # an unknown name, a package or file missing
        raise ConfigError(f"--relax: {exc}") from None
    relaxer = BatchRelaxer(model, fmax=fmax, steps=steps, progress=False)

    def relax(structures: list[Structure]) -> tuple[list[Structure], list[float | None]]:
        try:
            results = relaxer.relax([AseAtomsAdaptor.get_atoms(s) for s in structures])
        except Exception as exc:  # e.g. a model without parameters for an element
            formula = structures[0].composition.reduced_formula
            raise XtalloopError(f"relaxation with {spec!r} failed on {formula}: "
                                f"{one_line(exc)}") from None
        energies = [
            r.energy / len(r.atoms)
            if r.failure not in UNRANKED_FAILURES and math.isfinite(r.energy) else None
            for r in results
        ]
        return [AseAtomsAdaptor.get_structure(r.atoms) for r in results], energies

    return relax


def energy_ranker(spec: str) -> Callable[[list[Structure]], list[float]]:
    """Energies per atom (single point) of structures from an energy model by name or path."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtalloop.benchmark.csp_scoring import degenerate
    from xtalloop.models.energy_model import load_energy_model

    model = load_energy_model(spec)

    def per_atom(indices: list[int], out: list[float]) -> None:
        atoms = [AseAtomsAdaptor.get_atoms(structures_[i]) for i in indices]
        for i, p in zip(indices, model.predict(atoms), strict=True):
            value = float(p.energy) / len(structures_[i])
            out[i] = value if math.isfinite(value) else math.inf

    structures_: list[Structure] = []

    def energies(structures: list[Structure]) -> list[float]:
        """Energy per atom of each structure; ``inf`` where the model cannot score it."""
        structures_[:] = structures
        good = [i for i, s in enumerate(structures) if not degenerate(s)]
        out = [math.inf] * len(structures)
        try:
            if good:
                per_atom(good, out)
        except Exception:  # e.g. CHGNet refuses a batch holding isolated atoms: one by one
            for i in good:
                try:
                    per_atom([i], out)
                except Exception as exc:  # an unscorable candidate ranks last
                    logger.debug("energy model failed on candidate %d: %s", i, exc)
        return out

    return energies

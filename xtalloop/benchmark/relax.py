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
UNRANKED_FAILURES = frozenset({"non-finite energy", "cell exploded", "cell collapsed"})


def make_relax(spec: str, device: str, fmax: float, steps: int, rerank: str | None = None,
               rerank_top: int = 8, rerank_first: bool = False) -> Relax:
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
    rerank, rerank_top
        What the loop's prefilter does with ``rerank_model`` (the quickstart's CHGNet
        screen, DIEP pick): the ``rerank_top`` lowest distinct structures after
        ``spec`` (StructureMatcher's defaults, as the prefilter groups them) are
        relaxed again with ``rerank``, and only their energies rank; the others keep
        ``spec``'s structure and get no energy. ``None``: ``spec`` alone.
    rerank_first
        Re-relax the generator's first candidate (the first that ``spec`` relaxed) as
        one of the ``rerank_top``, whatever its energy: the set the prefilter's second
        model ranks with ``prior_picks: 1``, so that the first candidate has an energy
        and the pair (first, lowest) is the loop's two picks.

    Raises
    ------
    ConfigError
        ``--relax: ...`` (``--rerank: ...``) in one line if a model cannot be loaded
        (an unknown name, a pretrained model's package or a model file missing).

    Returns
    -------
    Relax
        Returns the relaxed structures in input order and each one's final
        energy per atom (eV/atom); the energy is None where the relaxation
        failed (a non-finite energy, a cell that blew up or collapsed). A candidate that hit
        the step limit keeps its last energy.
    """
    first = _batched(spec, "--relax", device, fmax, steps)
    if rerank is None:
        return first
    second = _batched(rerank, "--rerank", device, fmax, steps)

    def relax(structures: list[Structure]) -> tuple[list[Structure], list[float | None]]:
        relaxed, energies = first(structures)
        screened = [i for _, i in sorted((e, i) for i, e in enumerate(energies)
                                         if e is not None)]
        if rerank_first and screened:
            top = min(screened)  # the generator's first candidate that relaxed
            screened = [top] + [i for i in screened if i != top]
        picked = _distinct(screened, relaxed)[:rerank_top]
        out: list[float | None] = [None] * len(structures)
        if picked:
            again, final = second([relaxed[i] for i in picked])
            for i, structure, energy in zip(picked, again, final, strict=True):
                relaxed[i], out[i] = structure, energy
        return relaxed, out

    return relax


def _distinct(order: list[int], structures: list[Structure]) -> list[int]:
    """The first of each group of equal structures (StructureMatcher's defaults), in ``order``."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if len(order) < 2:
        return list(order)
    groups = StructureMatcher().group_structures([structures[i] for i in order])
    position = {id(structures[i]): n for n, i in enumerate(order)}
    # group_structures keeps input order inside a group: its first member is its lowest
    return [order[n] for n in sorted(position[id(g[0])] for g in groups)]


def _batched(spec: str, option: str, device: str, fmax: float, steps: int) -> Relax:
    """One model's batched relaxation as a :data:`Relax`."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from xtalloop.errors import one_line
    from xtalloop.models import load_energy_model
    from xtalloop.rankers.batch_relax import BatchRelaxer

    try:
        model = load_energy_model(spec, device)
    except XtalloopError as exc:  # an unknown name, a package or file missing
        raise ConfigError(f"{option}: {exc}") from None
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

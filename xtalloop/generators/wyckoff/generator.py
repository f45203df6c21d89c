"""The Wyckoff generator: a trained symmetry-aware model behind the Generator protocol."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Composition

from xtalloop.generators.base import PRIOR_RANK, Candidate, closest_approach
from xtalloop.generators.wyckoff.checkpoint import (
    DEFAULT_CHECKPOINT,
    LoadedWyckoff,
    load_wyckoff,
)
from xtalloop.generators.wyckoff.data import MAX_ELEMENTS
from xtalloop.generators.wyckoff.proposals import propose, ranking, score
from xtalloop.generators.wyckoff.sampler import sample
from xtalloop.generators.wyckoff.sites import build
from xtalloop.generators.wyckoff.skeletons import dress

logger = logging.getLogger(__name__)

#: Draws per round, as a multiple of the candidates still missing.
OVERSAMPLE = 2
#: Times a draw's free coordinates are drawn again when two atoms clash.
REDRAWS = 4
#: Rounds of drawing before a composition is given fewer than ``n`` candidates.
MAX_ROUNDS = 8


@dataclass
class WyckoffGenerator:
    """Crystals drawn from a trained Wyckoff model (space group, sites, coordinates, lattice).

    Each candidate has its space group by construction; the number of formula
    units is the model's choice among those whose primitive cell fits
    ``max_atoms``. Candidates come back best first: by the model's probability of
    the space group, formula units and Wyckoff positions, less a charge for how
    unlike the training crystal whose coordinates dress them is
    (:func:`~xtalloop.generators.wyckoff.proposals.ranking`; metadata ``score``), so
    the first one is the best guess.

    Parameters
    ----------
    checkpoint
        A Wyckoff checkpoint (``xtalloop generator train --kind wyckoff``);
        ``None``: the one shipped with xtalloop.
    max_atoms
        Largest primitive cell returned (``None``: the largest training cell).
    temperature
        Sharpens (< 1) or flattens (> 1) every choice of the model.
    max_per_skeleton
        Candidates that may share one space group and Wyckoff assignment (a
        cubic one without free coordinates is kept once: it is one crystal).
    min_distance_factor
        A draw with two atoms closer than this fraction of their covalent radii
        is drawn again.
    skeleton_coordinates
        Dress a sampled skeleton with the free coordinates and cell shape of a
        training crystal of the same skeleton, from the checkpoint's bank
        (:mod:`~xtalloop.generators.wyckoff.skeletons`), before the model's own.
    skeleton_proposals
        Besides sampling, score every bank skeleton that can hold the composition
        (each assignment of its elements to the positions) with the model and rank
        them with the samples (:mod:`~xtalloop.generators.wyckoff.proposals`).
    device
        Torch device of the network.
    """

    name: str = "wyckoff"
    checkpoint: str | None = None
    max_atoms: int | None = None
    temperature: float = 1.0
    min_distance_factor: float = 0.5
    max_per_skeleton: int = 2
    skeleton_coordinates: bool = True
    skeleton_proposals: bool = True
    device: str = "cpu"
    _loaded: LoadedWyckoff | None = field(default=None, init=False, repr=False)

    def load(self) -> LoadedWyckoff:
        """Read the checkpoint once (a bad one raises a one-line ``CheckpointError``)."""
        if self._loaded is None:
            path = Path(self.checkpoint) if self.checkpoint else DEFAULT_CHECKPOINT
            self._loaded = load_wyckoff(path, self.device)
        return self._loaded

    def _build(self, drawn, rng: np.random.Generator, min_distance_factor: float):
        """The structure of a draw, its coordinates drawn again if atoms clash (or None)."""
        crystal = drawn.crystal
        for _ in range(REDRAWS + 1):
            structure = build(crystal)
            if structure is not None and len(structure) <= self.cell_limit \
                    and closest_approach(structure) >= min_distance_factor:
                return structure
            if not any(s.free for s in crystal.sites):
                return None  # nothing to draw again
            crystal = drawn.redraw(rng)
        return None

    def _from_bank(self, crystal, use: int, min_distance_factor: float):
        """The structure of ``crystal`` dressed by its skeleton's ``use``-th bank entry."""
        if not self.skeleton_coordinates:
            return None
        dressed = dress(crystal, self.load().skeletons, use)
        structure = build(dressed) if dressed is not None else None
        if structure is None or len(structure) > self.cell_limit \
                or closest_approach(structure) < min_distance_factor:
            return None
        return structure

    @property
    def cell_limit(self) -> int:
        return self.max_atoms if self.max_atoms is not None else self.load().max_atoms

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        """Up to ``n`` candidates (fewer only when the model finds no buildable crystal)."""
        if n <= 0:
            return []
        loaded = self.load()
        reduced = composition.reduced_composition
        amounts = {el.Z: int(round(reduced[el])) for el in reduced.elements}
        if len(amounts) > MAX_ELEMENTS:
            logger.warning("%s has more than %d elements", reduced.formula, MAX_ELEMENTS)
            return []
        rng = np.random.default_rng(seed)
        found: list[tuple[float, Any, dict[str, Any]]] = []
        seen: dict[tuple, int] = {}
        offered = [(p.score, p.crystal, None) for p in propose(
            loaded.model, loaded.skeletons, amounts, self.cell_limit)] \
            if self.skeleton_proposals and self.skeleton_coordinates else []
        for round_ in range(MAX_ROUNDS):
            missing = n - len(found)
            if missing <= 0:
                break
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**31)))
                draws = sample(loaded.model, amounts, OVERSAMPLE * missing, rng,
                               self.cell_limit, self.temperature * _widening(round_))
            scores = score(loaded.model, [d.crystal for d in draws])[0] if draws else []
            offered += [(ranking(float(s), d.crystal, loaded.skeletons), d.crystal, d)
                        for s, d in zip(scores, draws, strict=True)]
            offered.sort(key=lambda item: -item[0])
            factor = self.min_distance_factor / _widening(round_)
            for logp, crystal, drawn in offered:
                key, limit = _skeleton(crystal, self.max_per_skeleton)
                if seen.get(key, 0) >= limit:
                    continue
                structure, source = self._from_bank(crystal, seen.get(key, 0), factor), "bank"
                if structure is None and drawn is not None:
                    structure, source = self._build(drawn, rng, factor), "model"
                if structure is None:
                    continue
                seen[key] = seen.get(key, 0) + 1
                found.append((logp, structure, {"space_group": crystal.space_group,
                                                "wyckoff": _labels(crystal),
                                                "coordinates": source,
                                                "proposed": drawn is None,
                                                "score": round(logp, 3),
                                                "round": round_}))
                if len(found) >= n:
                    break
            offered = []
        if len(found) < n:
            logger.info("wyckoff: %d of %d candidates for %s", len(found), n, reduced.formula)
        found.sort(key=lambda item: -item[0])
        return [Candidate(structure=s, generator=self.name, seed=seed, index=i,
                          metadata={**meta, PRIOR_RANK: i,
                                    "checkpoint": loaded.checkpoint_hash[:16]})
                for i, (_, s, meta) in enumerate(found)]


def _labels(crystal) -> str:
    from pymatgen.core import Element

    from xtalloop.generators.wyckoff.sites import group

    g = group(crystal.space_group)
    return " ".join(f"{Element.from_Z(s.z).symbol}:{g[s.wp].multiplicity}{g[s.wp].letter}"
                    for s in crystal.sites)


def _widening(round_: int) -> float:
    """How much later rounds widen the search when too few candidates came back.

    The first two rounds sample the model as it is. After that every choice is
    flattened (temperature times 1.5, 2, 2.5...) and the closest-approach limit
    loosened by the same factor, so a composition the model is sure about, or
    one whose cells are crowded, still gets its ``n`` candidates, the model's
    own first.
    """
    return 1.0 + 0.5 * max(0, round_ - 1)


def _skeleton(crystal, max_per_skeleton: int) -> tuple[tuple, int]:
    """A crystal's space group and element-labelled Wyckoff positions, and how many
    candidates may share them.

    A cubic crystal without free coordinates is the same crystal every time it
    is drawn, so it is kept once; other skeletons differ in their coordinates
    and lattice, but the ``max_per_skeleton`` most probable are enough: beyond
    them the model's favourite would crowd out its alternatives.
    """
    from xtalloop.generators.wyckoff.tables import lattice_type_name

    key = (crystal.space_group, tuple(sorted((s.z, s.wp) for s in crystal.sites)))
    fixed = lattice_type_name(crystal.space_group) == "cubic" and not any(
        s.free for s in crystal.sites)
    return key, 1 if fixed else max_per_skeleton

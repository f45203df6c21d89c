"""Rank candidates with a machine-learned energy model: relax, deduplicate, hull, top-k."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from monty.json import MSONable
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from xtalloop.generators.base import PRIOR_RANK, Candidate
from xtalloop.hull import energies_above_hull
from xtalloop.models.energy_model import EnergyModel, load_energy_model
from xtalloop.rankers.batch_relax import BatchRelaxer
from xtalloop.references import N_SIMPLE_PROTOTYPES, elemental_prototypes, is_molecular

logger = logging.getLogger(__name__)

REFERENCE_TIE = 0.002
"""eV/atom within which the reference with the fewest atoms is taken over the lowest."""

#: Elemental reference phases relaxed in this process, by (model version, element,
#: (fmax, steps, symprec)); see :meth:`MLRanker.reference_phases`.
_REFERENCES: dict[tuple[str, str, tuple[float, int, float]], ReferencePhase] = {}


@dataclass
class RankedCandidate(MSONable):
    """A relaxed, deduplicated candidate with its ML energy and hull distance."""

    structure: Structure
    provenance: dict[str, Any]
    energy_per_atom: float
    e_above_hull: float
    space_group: str
    space_group_number: int
    n_duplicates: int = 0
    rank: int = 0
    energy_std_per_atom: float | None = None
    """An ensemble model's energy spread (eV/atom); ``None`` for a single model."""
    picked_by: str = "energy"
    """``"energy"`` (lowest first) or ``"prior"`` (the generator's own ranking, see
    :attr:`MLRanker.prior_picks`)."""


@dataclass
class ReferencePhase(MSONable):
    """The lowest-energy relaxed structure of one element under one model."""

    element: str
    structure: Structure
    energy_per_atom: float
    molecular: bool


@dataclass
class Ranking(MSONable):
    """The ranker's output: the picks, the elemental references and the counts."""

    formula: str
    picks: list[RankedCandidate]
    references: list[ReferencePhase]
    funnel: dict[str, int]
    energy_model: dict[str, str]
    relaxed_e_above_hull: list[float] = field(default_factory=list)
    reserves: list[RankedCandidate] = field(default_factory=list)
    """The next-ranked distinct candidates after the picks (up to ``top_k`` of them):
    what DFT validates instead of a pick whose calculation failed."""


def _prior_order(groups: list[list[Structure]], index_of: dict[int, int],
                 candidates: list[Candidate]) -> list[tuple[int, int]]:
    """Groups in the generators' own order: ``(representative, best-ranked member)``,
    indices into ``candidates``.

    A group's place is its best-ranked member's ``(prior_rank, position in the input)``:
    with several ranking sources the first candidates of each come first, in the order
    the sources were listed. Groups with no ranked member are left out. The member is
    what a prior pick sends on (its provenance says why it was picked; a random sample
    that relaxed to the same structure lower in energy is the group's representative).
    """
    keyed = []
    for group in groups:
        members = [index_of[id(s)] for s in group]
        ranks = [(candidates[i].metadata[PRIOR_RANK], i) for i in members
                 if candidates[i].metadata.get(PRIOR_RANK) is not None]
        if ranks:
            keyed.append((min(ranks), index_of[id(group[0])]))
    return [(representative, rank[1]) for rank, representative in sorted(keyed)]


def symmetrized_primitive(structure: Structure, symprec: float) -> tuple[Structure, str, int]:
    """The standard primitive cell at tolerance ``symprec`` with its space group."""
    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        primitive = sga.get_primitive_standard_structure()
        return primitive, sga.get_space_group_symbol(), sga.get_space_group_number()
    except Exception:  # spglib can fail on distorted cells: keep the structure as is
        return structure, "P1", 1


@dataclass
class MLRanker:
    """Relax candidates with an ML energy model and keep the ``top_k`` lowest in energy.

    Parameters
    ----------
    model
        Energy model: ``"chgnet"``, ``"sevennet"``, ``"diep"``, ``"emt"`` or a
        MACE model file path (see :func:`~xtalloop.models.load_energy_model`).
    fmax, steps
        Relaxation threshold (eV/Å) and step limit.
    top_k
        Number of distinct structures to keep.
    max_e_above_hull
        Drop picks further than this above the hull (eV/atom); ``None`` keeps all.
    symprec
        Symmetry tolerance (Å) for the symmetrised primitive cells of the picks.
    explore_weight
        With an ensemble model, rank by ``energy_per_atom - explore_weight *
        energy_std_per_atom`` (within one composition, the same order as by
        energy above the hull): 0 picks the lowest energies (exploit), larger
        values favour structures the ensemble disagrees on (explore).
    device
        Torch device for the model.
    precision
        ``"float64"`` or ``"float32"`` for a MACE model (float32: about twice as
        fast on CPU, see ``benchmarks/batch_relax_speed.py``).
    rerank_model
        A second, usually slower and more accurate model: the ``rerank_top``
        lowest distinct structures under ``model`` are relaxed again with it,
        and the picks, energies and hull come from it. A cheap model screens
        everything and a better one orders the few that matter (CHGNet puts
        lonsdaleite Si 0.4 meV/atom below diamond; DIEP orders them right).
        ``None``: one model does all.
    rerank_top
        Distinct structures the second model relaxes.
    prior_picks
        Of the ``top_k`` picks, this many are taken in the generator's own order
        (the candidates' ``prior_rank``: prototype substitution's most probable
        substitution, the Wyckoff model's likeliest crystal) before the rest by
        energy. On 157 MP-20 val compositions (templates + Wyckoff pool, CHGNet):
        the lowest-energy candidate matched 40.8 %, the generator's first 56.7 %,
        and one of the two 72.6 % against 66.9 % for the generator's first two
        (``benchmarks/README.md``): the model and the generator err on different
        compositions. Candidates without a ``prior_rank`` (random sampling) are
        never prior picks.
    progress
        Show progress bars.
    """

    model: str = "chgnet"
    fmax: float = 0.05
    steps: int = 300
    top_k: int = 2
    max_e_above_hull: float | None = None
    symprec: float = 0.1
    explore_weight: float = 0.0
    device: str = "cpu"
    precision: str = "float64"
    rerank_model: str | None = None
    rerank_top: int = 8
    prior_picks: int = 0
    progress: bool = True
    _reranker: MLRanker | None = field(default=None, repr=False)

    @property
    def energy_model(self) -> EnergyModel:
        """The loaded energy model (cached per process)."""
        return load_energy_model(self.model, self.device, self.precision)

    def rank(self, composition: Composition, candidates: list[Candidate]) -> Ranking:
        """Relax, deduplicate and rank ``candidates`` of ``composition``."""
        model = self.energy_model
        formula = composition.reduced_formula
        relaxer = BatchRelaxer(
            model, fmax=self.fmax, steps=self.steps, progress=self.progress,
            description=f"{formula}: ML relax ({model.name})",
        )
        results = relaxer.relax([AseAtomsAdaptor.get_atoms(c.structure) for c in candidates])
        relaxed = [
            (AseAtomsAdaptor.get_structure(r.atoms), r.energy / len(r.atoms), c)
            for r, c in zip(results, candidates, strict=True)
            if r.failure in (None, "step limit")
        ]
        spread = [None if r.energy_std is None else r.energy_std / len(r.atoms)
                  for r in results if r.failure in (None, "step limit")]
        references = self.reference_phases([el.symbol for el in composition.elements])
        funnel = {"generated": len(candidates), "relaxed": len(relaxed)}
        if not relaxed:
            return Ranking(formula, [], references, funnel | {"unique": 0, "picked": 0},
                           model.identity, [])

        ref_points = [(Composition(r.element), r.energy_per_atom) for r in references]
        e_hull = energies_above_hull(
            [(s.composition.fractional_composition, e) for s, e, _ in relaxed], ref_points
        )
        order = sorted(range(len(relaxed)), key=lambda i: relaxed[i][1])
        groups = StructureMatcher().group_structures([relaxed[i][0] for i in order])
        # group_structures keeps input order inside groups, so each group's first
        # member is its lowest-energy structure.
        index_of = {id(relaxed[i][0]): i for i in order}
        def score(i: int) -> float:  # lower is picked first
            if spread[i] is None or not self.explore_weight:
                return relaxed[i][1]
            # one composition: energy differences per atom are hull-energy differences
            return relaxed[i][1] - self.explore_weight * spread[i]

        representatives = sorted(
            ((index_of[id(g[0])], len(g) - 1) for g in groups), key=lambda item: score(item[0])
        )
        ordered = _prior_order(groups, index_of, [c for _, _, c in relaxed])[:self.prior_picks]
        member = dict(ordered)
        place = {r: n for n, (r, _) in enumerate(ordered)}
        representatives.sort(key=lambda r: place.get(r[0], len(place)))  # stable: prior first
        representatives = [(member.get(i, i), d) for i, d in representatives]
        prior = [m for _, m in ordered]
        funnel["unique"] = len(representatives)
        if self.rerank_model is not None:
            return self._reranked(composition, [relaxed[i] for i, _ in representatives],
                                  funnel, model.identity, e_hull, len(prior))
        picks = []
        for i, duplicates in representatives:
            structure, energy, candidate = relaxed[i]
            if self.max_e_above_hull is not None and e_hull[i] > self.max_e_above_hull:
                continue
            primitive, symbol, number = symmetrized_primitive(structure, self.symprec)
            picks.append(
                RankedCandidate(
                    structure=primitive,
                    provenance=candidate.provenance,
                    energy_per_atom=energy,
                    e_above_hull=e_hull[i],
                    space_group=symbol,
                    space_group_number=number,
                    n_duplicates=duplicates,
                    rank=len(picks),
                    energy_std_per_atom=spread[i],
                    picked_by="prior" if i in prior else "energy",
                )
            )
            if len(picks) == 2 * self.top_k:  # the picks, then as many reserves
                break
        picks, reserves = picks[:self.top_k], picks[self.top_k:]
        funnel["picked"] = len(picks)
        return Ranking(formula, picks, references, funnel, model.identity,
                       [float(e) for e in e_hull], reserves)

    def _reranked(self, composition: Composition,
                  screened: list[tuple[Structure, float, Candidate]], funnel: dict[str, int],
                  screening_model: dict[str, str], e_hull: list[float], n_prior: int) -> Ranking:
        """Rank the ``rerank_top`` best ``screened`` structures again with ``rerank_model``.

        The first ``n_prior`` of ``screened`` are the prior picks: they keep their
        ``prior_rank`` and go first, so the second model's ranker picks them again;
        the others lose it, as their order is now the first model's energy.
        """
        if self._reranker is None:  # the same settings, the second model, its own references
            self._reranker = replace(self, model=self.rerank_model, rerank_model=None,
                                     _reranker=None)
        again = [Candidate(structure=structure, generator=c.generator, seed=c.seed,
                           index=c.index,
                           metadata={**{k: v for k, v in c.metadata.items()
                                        if k != PRIOR_RANK or n < n_prior},
                                     "screening_energy_per_atom": energy})
                 for n, (structure, energy, c) in enumerate(screened[:self.rerank_top])]
        ranking = self._reranker.rank(composition, again)
        ranking.funnel = funnel | {"reranked": len(again), "picked": ranking.funnel["picked"]}
        ranking.energy_model = {**ranking.energy_model,
                                "screened_by": screening_model.get("name", str(self.model))}
        ranking.relaxed_e_above_hull = [float(e) for e in e_hull]
        return ranking

    def reference_phases(self, elements: list[str]) -> list[ReferencePhase]:
        """Lowest-energy elemental phases under this model.

        Cached for the process under the model's version (which names a trained
        model's weights by their hash) and the relaxation settings: a loop makes a
        ranker per composition, and without the cache every quinary's prefilter
        relaxed the reference starts of its five elements again.
        """
        model = self.energy_model
        settings = (self.fmax, self.steps, self.symprec)
        missing = [el for el in elements if (model.version, el, settings) not in _REFERENCES]
        for element in missing:
            prototypes = elemental_prototypes(element)
            molecular = is_molecular(prototypes[0])
            starts = [AseAtomsAdaptor.get_atoms(s) for s in prototypes]
            relaxer = BatchRelaxer(model, fmax=self.fmax, steps=self.steps,
                                   relax_cell=not molecular, progress=False)
            try:
                relaxed = relaxer.relax(starts)
            except (ValueError, RuntimeError) as exc:  # a library start the model refuses
                logger.warning("%s reference of %s: library starts refused (%s); "
                               "simple prototypes only", model.name, element, exc)
                relaxed = relaxer.relax(starts[:N_SIMPLE_PROTOTYPES])
            results = [r for r in relaxed if r.failure in (None, "step limit")]
            lowest = min(r.energy / len(r.atoms) for r in results)
            # close-packed stackings (9R, dhcp) tie with hcp/fcc to 0.1 meV under any model:
            # the smallest cell within REFERENCE_TIE keeps DFT's reference cheap (and hcp Mg)
            best = min((r for r in results if r.energy / len(r.atoms) <= lowest + REFERENCE_TIE),
                       key=lambda r: (len(r.atoms), r.energy / len(r.atoms)))
            structure = AseAtomsAdaptor.get_structure(best.atoms)
            if not molecular:
                # DFT gets the symmetrised cell, as it does for the picks: GPAW's symmetry
                # analysis fails on a cell a relaxation left 1e-6 off (fcc Na under DIEP)
                structure = symmetrized_primitive(structure, self.symprec)[0]
            _REFERENCES[(model.version, element, settings)] = ReferencePhase(
                element=element,
                structure=structure,
                energy_per_atom=best.energy / len(best.atoms),
                molecular=molecular,
            )
        # copies: a caller that edits its structure must not change the next caller's
        return [replace(ref, structure=ref.structure.copy())
                for ref in (_REFERENCES[(model.version, el, settings)] for el in elements)]

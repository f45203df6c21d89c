"""Candidates by ionic substitution into known prototypes (the GNoME / SAPS idea).

A reference set of known crystals (a CSV with a ``cif`` column, such as the
MP-20 training split) is searched for templates whose anonymised formula
matches the target (``NaCl`` and ``KBr`` are both ``AB``). Each template's
elements are mapped onto the target's, the assignments ranked by the
data-mined ionic substitution probabilities of Hautier et al. (2011), the
species swapped in and the cell rescaled by the ratio of ionic (or atomic)
radii.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Composition, Element, Species, Structure

from xtalloop.generators.base import PRIOR_RANK, Candidate, too_close
from xtalloop.generators.prototype_library import is_library_row
from xtalloop.generators.random_symmetric import space_group_counts
from xtalloop.generators.reference_set import (  # noqa: F401  (also imported from here)
    DEFAULT_REFERENCE_CSV,
    ReferenceSet,
    guess_oxidation_states,
    load_reference_set,
    read_structure_csv,
)

logger = logging.getLogger(__name__)

# Elements sharing one count beyond which only the best pairing is kept (5! = 120 otherwise).
_MAX_ENUMERATED_GROUP = 5


def _electronegativity(el: Element) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = el.X
    return 0.0 if math.isnan(x) else float(x)


def _radius(el: Element) -> float:
    r = el.atomic_radius or el.atomic_radius_calculated
    return float(r) if r is not None else 1.5


@dataclass
class _Option:
    """One (template row, species assignment) pair with its score."""

    row: int
    mapping: dict[str, str]  # template element -> target element
    probability: float
    method: str  # "ionic" or "electronegativity"
    template_oxidation: dict[str, float] | None
    target_oxidation: dict[str, float] | None
    sort_key: tuple[float, ...] = field(default=())


@dataclass
class PrototypeSubstitutionGenerator:
    """Known structures of the same stoichiometry type with the target's elements swapped in.

    For a target composition, every reference structure whose reduced
    anonymised formula matches (any number of formula units up to
    ``max_atoms`` sites) is a template. Each count-respecting mapping of
    template elements onto target elements is scored with pymatgen's
    :class:`SubstitutionProbability` (the product of the conditional
    probabilities of the ionic substitutions, oxidation states guessed from
    the compositions); where either side has no charge-balanced oxidation
    states (intermetallics), elements are paired in electronegativity order
    within each count and scored by electronegativity and atomic-radius
    similarity, ranked after all ionic-scored options. The options are taken
    most probable first (ties broken by the seed), a substituted structure
    is skipped if it matches one already taken (same prototype), and the
    cell is rescaled by pymatgen's :class:`RLSVolumePredictor` (ratio of
    ionic, else atomic, radii).

    The output for ``n`` is a prefix of the output for any larger ``n`` with
    the same seed.

    Parameters
    ----------
    reference_csv
        CSV of known structures (needs a ``cif`` column; ``material_id``,
        ``reduced_formula``, ``nsites`` and ``spacegroup_number`` are used
        when present). Relative paths resolve against the working directory.
        ``"aflow"``: the 288 AFLOW prototypes shipped with pymatgen (no data
        needed); ``"aflow+<csv>"``: both.
    max_atoms
        Templates with more sites than this are not used.
    explore
        Scale of Gumbel noise added to the log probabilities before ranking.
        ``0`` takes options strictly most probable first; ``1`` samples
        templates without replacement in proportion to their probability, so
        different seeds reach beyond the top of the ranked list.
    min_distance_factor
        Drop a substituted structure whose atoms come closer than this
        fraction of the sum of covalent radii (``None``: keep all).
    max_examined
        Stop after looking at this many (template, assignment) options, so
        huge template lists with many duplicates stay cheap.
    """

    name: str = "prototype_substitution"
    reference_csv: str = DEFAULT_REFERENCE_CSV
    max_atoms: int = 20
    explore: float = 0.0
    min_distance_factor: float | None = 0.5
    max_examined: int = 1000

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        """Return up to ``n`` distinct candidates, most probable first ([] if no template fits).

        Raises
        ------
        DataError
            If the reference CSV is missing or unreadable.
        """
        from pymatgen.analysis.structure_matcher import StructureMatcher

        target = Composition(composition).element_composition.reduced_composition
        if n <= 0 or len(target) == 0:
            return []
        reference = load_reference_set(self.reference_csv)
        rows = reference.rows_like(target, self.max_atoms)
        if not rows:
            logger.info("no template with the formula type of %s", target.reduced_formula)
            return []

        options = self._ranked_options(reference, rows, target, seed)
        matcher = StructureMatcher()
        taken: list[tuple[int | None, Structure]] = []
        candidates: list[Candidate] = []
        for option in options[: self.max_examined]:
            if len(candidates) >= n:
                break
            template = reference.structure(option.row)
            if template is None:
                continue
            substituted = template.copy()
            substituted.replace_species(
                {Element(old): Element(new) for old, new in option.mapping.items()}
            )
            space_group = reference.space_group(option.row)
            if any(
                sg == space_group and matcher.fit(substituted, other) for sg, other in taken
            ):
                continue
            taken.append((space_group, substituted))
            structure = self._rescaled(substituted, template, option)
            if self.min_distance_factor is not None and too_close(
                structure, self.min_distance_factor
            ):
                continue
            candidates.append(
                Candidate(
                    structure=structure,
                    generator=self.name,
                    seed=seed,
                    index=len(candidates),
                    metadata={
                        PRIOR_RANK: len(candidates),
                        "template_id": reference.ids[option.row],
                        "template_formula": reference.reduced_formulas[option.row],
                        "space_group": space_group,
                        "substitution_probability": option.probability,
                        "score_method": option.method,
                        "assignment": dict(option.mapping),
                        "formula_units": int(
                            round(structure.composition.num_atoms / target.num_atoms)
                        ),
                    },
                )
            )
        return candidates

    def _ranked_options(
        self, reference: ReferenceSet, rows: list[int], target: Composition, seed: int
    ) -> list[_Option]:
        """All (template, assignment) options, best first, ties broken by ``seed``."""
        target_oxi = guess_oxidation_states(target)
        target_groups = _count_groups(target)
        options: list[_Option] = []
        for row in rows:
            formula = reference.reduced_formulas[row]
            if formula is None:
                continue
            template = Composition(formula)
            template_groups = _count_groups(template)
            if sorted(template_groups) != sorted(target_groups) or any(
                len(template_groups[c]) != len(target_groups[c]) for c in target_groups
            ):
                continue
            template_oxi = reference.oxidation_states(formula)
            if target_oxi is not None and template_oxi is not None:
                for mapping, p in _ionic_assignments(
                    template_groups, target_groups, template_oxi, target_oxi
                ):
                    options.append(_Option(row, mapping, p, "ionic", template_oxi, target_oxi))
            else:
                mapping, p = _electronegativity_assignment(template_groups, target_groups)
                options.append(_Option(row, mapping, p, "electronegativity", None, None))

        rng = np.random.default_rng(seed)
        gumbel = rng.gumbel(size=len(options)) if self.explore > 0 else np.zeros(len(options))
        tiebreak = rng.random(len(options))
        sg_counts = space_group_counts()
        for option, g, u in zip(options, gumbel, tiebreak, strict=True):
            log_p = math.log(option.probability) if option.probability > 0 else -1e9
            tier = 0.0 if option.method == "ionic" else 1.0
            if is_library_row(reference.ids[option.row]):
                # A library prototype's elements only represent its type, so the
                # simplest prototypes come first (fewest sites), then those whose
                # space group is common among known crystals, then by assignment.
                prior = math.log(sg_counts.get(reference.space_group(option.row) or 1, 0) + 1)
                option.sort_key = (tier, reference.nsites[option.row] or 0,
                                   -round(prior + self.explore * g, 9), -round(log_p, 9), u)
            else:
                option.sort_key = (tier, -round(log_p + self.explore * g, 9), u)
        options.sort(key=lambda o: o.sort_key)
        library = [o for o in options if is_library_row(reference.ids[o.row])]
        if not library or len(library) == len(options):
            return options
        # both a data table and the library: take the two rankings in turn
        table = [o for o in options if not is_library_row(reference.ids[o.row])]
        return [o for pair in itertools.zip_longest(table, library) for o in pair
                if o is not None]

    @staticmethod
    def _rescaled(structure: Structure, template: Structure, option: _Option) -> Structure:
        """``structure`` scaled to the volume the radii ratio to ``template`` predicts."""
        from pymatgen.analysis.structure_prediction.volume_predictor import RLSVolumePredictor

        scaled = structure.copy()
        try:
            if option.template_oxidation is not None and option.target_oxidation is not None:
                new = structure.copy()
                new.add_oxidation_state_by_element(
                    {el: round(v) for el, v in option.target_oxidation.items()}
                )
                ref = template.copy()
                ref.add_oxidation_state_by_element(
                    {el: round(v) for el, v in option.template_oxidation.items()}
                )
                predictor = RLSVolumePredictor(
                    check_isostructural=False, radii_type="ionic-atomic", use_bv=False
                )
            else:
                new, ref = structure, template
                predictor = RLSVolumePredictor(
                    check_isostructural=False, radii_type="atomic", use_bv=False
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                volume = predictor.predict(new, ref)
        except Exception:
            ratio = sum(_radius(site.specie) ** 3 for site in structure) / sum(
                _radius(site.specie) ** 3 for site in template
            )
            volume = template.volume * ratio
        if np.isfinite(volume) and volume > 0:
            scaled.scale_lattice(float(volume))
        return scaled


def _count_groups(composition: Composition) -> dict[float, list[str]]:
    """Element symbols of a reduced composition grouped by their amount."""
    groups: dict[float, list[str]] = {}
    for el, amount in composition.reduced_composition.items():
        groups.setdefault(round(float(amount), 6), []).append(Element(str(el)).symbol)
    return {c: sorted(els) for c, els in groups.items()}


@functools.lru_cache(maxsize=1)
def _substitution_probability():
    """pymatgen's data-mined substitution probabilities (the table takes seconds to build)."""
    from pymatgen.analysis.structure_prediction.substitution_probability import (
        SubstitutionProbability,
    )

    return SubstitutionProbability()


@functools.lru_cache(maxsize=100_000)
def _pair_probability(new: str, new_oxi: int, old: str, old_oxi: int) -> float:
    """P(ion ``new`` replaces ion ``old``), safe for species missing from the lambda table."""
    probabilities = _substitution_probability()
    new_species, old_species = Species(new, new_oxi), Species(old, old_oxi)
    if probabilities.get_px(old_species) > 0:
        return probabilities.cond_prob(new_species, old_species)
    if new_species == old_species:
        return 1.0
    return math.exp(probabilities.alpha) / probabilities.Z


def _ionic_assignments(
    template_groups: dict[float, list[str]],
    target_groups: dict[float, list[str]],
    template_oxi: dict[str, float],
    target_oxi: dict[str, float],
) -> list[tuple[dict[str, str], float]]:
    """Count-respecting template->target element maps with their substitution probability."""
    per_group: list[list[tuple[dict[str, str], float]]] = []
    for count, old_elements in template_groups.items():
        new_elements = target_groups[count]
        matrix = np.array(
            [
                [
                    _pair_probability(
                        new,
                        int(round(target_oxi.get(new, 0.0))),
                        old,
                        int(round(template_oxi.get(old, 0.0))),
                    )
                    for new in new_elements
                ]
                for old in old_elements
            ]
        )
        if len(old_elements) > _MAX_ENUMERATED_GROUP:
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(-np.log(np.clip(matrix, 1e-300, None)))
            perms = [tuple(int(c) for c in cols[np.argsort(rows)])]
        else:
            perms = list(itertools.permutations(range(len(new_elements))))
        choices = [
            (
                {old_elements[i]: new_elements[j] for i, j in enumerate(perm)},
                float(np.prod([matrix[i, j] for i, j in enumerate(perm)])),
            )
            for perm in perms
        ]
        per_group.append(choices)
    assignments = []
    for combo in itertools.product(*per_group):
        mapping: dict[str, str] = {}
        p = 1.0
        for part, q in combo:
            mapping.update(part)
            p *= q
        assignments.append((mapping, p))
    return assignments


def _electronegativity_assignment(
    template_groups: dict[float, list[str]], target_groups: dict[float, list[str]]
) -> tuple[dict[str, str], float]:
    """Pair elements in electronegativity order within each count; score by similarity."""
    mapping: dict[str, str] = {}
    distance = 0.0
    for count, old_elements in template_groups.items():
        old_sorted = sorted(old_elements, key=lambda s: (_electronegativity(Element(s)), s))
        new_sorted = sorted(
            target_groups[count], key=lambda s: (_electronegativity(Element(s)), s)
        )
        for old, new in zip(old_sorted, new_sorted, strict=True):
            mapping[old] = new
            distance += abs(_electronegativity(Element(old)) - _electronegativity(Element(new)))
            distance += abs(_radius(Element(old)) - _radius(Element(new)))
    return mapping, math.exp(-distance)

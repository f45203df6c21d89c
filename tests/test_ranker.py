"""The ML ranker: relax, deduplicate with StructureMatcher, hull, top-k (EMT as the model)."""

import pytest
from pymatgen.core import Composition, Lattice, Structure

from xtalloop.generators.base import Candidate
from xtalloop.hull import energies_above_hull
from xtalloop.rankers.ml_ranker import MLRanker


def b2() -> Structure:
    return Structure(Lattice.cubic(3.15), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def l10() -> Structure:
    return Structure(Lattice.tetragonal(2.85, 3.7), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def candidates() -> list[Candidate]:
    shifted = b2().copy()
    shifted.translate_sites(range(2), [0.1, 0.2, 0.3])
    supercell = b2().copy()
    supercell.make_supercell([1, 1, 2])
    return [
        Candidate(b2(), "test", 0, 0),
        Candidate(shifted, "test", 0, 1),
        Candidate(supercell, "test", 0, 2),
        Candidate(l10(), "test", 0, 3),
    ]


def test_ranker_deduplicates_and_orders_by_energy():
    ranking = MLRanker(model="emt", top_k=5, progress=False).rank(
        Composition("CuAu"), candidates())
    assert ranking.funnel["generated"] == 4
    assert ranking.funnel["relaxed"] == 4
    assert ranking.funnel["unique"] < 4  # the shifted and doubled B2 cells are one structure
    energies = [p.energy_per_atom for p in ranking.picks]
    assert energies == sorted(energies)
    assert ranking.picks[0].e_above_hull == min(p.e_above_hull for p in ranking.picks)
    assert all(p.e_above_hull >= 0 for p in ranking.picks)
    assert sum(p.n_duplicates for p in ranking.picks) == 4 - ranking.funnel["unique"]
    assert {r.element for r in ranking.references} == {"Cu", "Au"}
    assert len(ranking.relaxed_e_above_hull) == 4
    for pick in ranking.picks:
        assert pick.provenance["generator"] == "test"
        assert pick.structure.composition.reduced_formula == "CuAu"


def test_top_k_limits_the_picks():
    ranking = MLRanker(model="emt", top_k=1, progress=False).rank(
        Composition("CuAu"), candidates())
    assert len(ranking.picks) == 1
    assert ranking.funnel["picked"] == 1


def test_energy_above_hull_against_elemental_references():
    refs = [(Composition("Na"), -1.0), (Composition("Cl"), -2.0)]
    # NaCl at -2.5 eV/atom is 1.0 eV/atom below the elements' line: on the hull.
    values = energies_above_hull(
        [(Composition("NaCl").fractional_composition, -2.5),
         (Composition("NaCl").fractional_composition, -2.3),
         (Composition("NaCl2").fractional_composition, -1.0)],
        refs,
    )
    assert values[0] == pytest.approx(0.0)
    assert values[1] == pytest.approx(0.2)
    # NaCl2 between NaCl (-2.5 at x=1/2) and Cl (-2 at x=1): hull at x=2/3 is -2.333
    assert values[2] == pytest.approx(-1.0 + 2.5 - 1 / 6, abs=1e-6)


class _UncertainEmt:
    """EMT with an "ensemble spread" that grows with the cell volume per atom."""

    name, version = "emt-ensemble", "test"

    def __init__(self):
        from xtalloop.models.energy_model import load_energy_model

        self._emt = load_energy_model("emt")
        self.identity = {"name": self.name, "version": self.version}

    def predict(self, atoms):
        predictions = self._emt.predict(atoms)
        for a, p in zip(atoms, predictions):
            p.energy_std = 0.5 * len(a) * (a.get_volume() / len(a) - 10.0)
        return predictions


class _UncertainRanker(MLRanker):
    @property
    def energy_model(self):
        return _UncertainEmt()


def test_explore_weight_trades_energy_for_ensemble_spread():
    cubic = [([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], 3.6),  # fcc
             ([[0, 0, 0], [0.5, 0.5, 0.5]], 2.9),  # bcc
             ([[0, 0, 0]], 2.4)]  # simple cubic
    polymorphs = [Candidate(Structure(Lattice.cubic(a), ["Cu"] * len(sites), sites), "test", 0, i)
                  for i, (sites, a) in enumerate(cubic)]
    exploit = _UncertainRanker(model="emt", top_k=3, progress=False).rank(
        Composition("Cu"), polymorphs)
    explore = _UncertainRanker(model="emt", top_k=3, explore_weight=10.0, progress=False).rank(
        Composition("Cu"), polymorphs)
    assert len(exploit.picks) == 3 and all(p.energy_std_per_atom for p in exploit.picks)
    energies = [p.energy_per_atom for p in exploit.picks]
    assert energies == sorted(energies)
    spreads = [p.energy_std_per_atom for p in explore.picks]
    assert spreads == sorted(spreads, reverse=True)
    assert [p.energy_per_atom for p in explore.picks] != energies


def test_rerank_model_orders_the_screened_structures():
    """EMT screens; CHGNet relaxes only the ``rerank_top`` best and its energies decide."""
    layered = Structure(Lattice.hexagonal(2.9, 7.1), ["Cu", "Cu", "Au", "Au"],
                        [[0, 0, 0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.25], [0, 0, 0.75]])
    pool = [*candidates(), Candidate(layered, "test", 0, 4)]
    ranking = MLRanker(model="emt", top_k=2, rerank_model="chgnet", rerank_top=1,
                       progress=False).rank(Composition("CuAu"), pool)
    assert ranking.funnel["reranked"] == 1
    assert ranking.funnel["unique"] >= 2  # more were screened than re-ranked
    assert len(ranking.picks) == 1
    assert ranking.energy_model["name"] == "chgnet"
    assert ranking.energy_model["screened_by"] == "emt"
    pick = ranking.picks[0]
    # EMT puts CuAu near 0 eV/atom, CHGNet (DFT-like) near -4: the pick carries CHGNet's
    assert pick.energy_per_atom < -2.0 < pick.provenance["screening_energy_per_atom"] + 1.0
    assert pick.provenance["generator"] == "test"
    assert {r.element for r in ranking.references} == {"Cu", "Au"}
    assert all(r.energy_per_atom < -2.0 for r in ranking.references)
    assert len(ranking.relaxed_e_above_hull) == 5  # every screened candidate kept


def test_reference_phases_are_exactly_symmetric():
    """DIEP relaxes fcc Na to a cell 2e-6 degrees off cubic; GPAW's symmetry analysis then
    fails on it, so the reference sent to DFT is the symmetrised primitive cell."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    reference = MLRanker(model="diep", progress=False).reference_phases(["Na"])[0]
    loose = SpacegroupAnalyzer(reference.structure, symprec=1e-3).get_space_group_number()
    assert loose in (166, 194, 225, 229)  # 9R (alpha Sm type), hcp, fcc or bcc: 0.1 meV apart
    assert SpacegroupAnalyzer(reference.structure, symprec=1e-8).get_space_group_number() == loose


def test_reference_starts_hold_the_elemental_ground_states():
    """Beside fcc/bcc/hcp/diamond/sc, an element gets the AFLOW ground states of itself and
    its family (A7 As for Bi, alpha Se for Te, alpha Ga), scaled to the element; a metal
    with a close-packed ground state gets the five alone, a diatomic element its dimer."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from xtalloop.references import elemental_prototypes

    def groups(symbol):
        return {SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_number()
                for s in elemental_prototypes(symbol)[5:]}

    assert len(elemental_prototypes("As", library=False)) == 5
    assert 166 in groups("As") and 166 in groups("Bi")  # A7
    assert 152 in groups("Se") and 152 in groups("Te")  # alpha Se chains
    assert 64 in groups("Ga")  # alpha Ga
    assert len(elemental_prototypes("Cu")) == 5 and len(elemental_prototypes("O")) == 1
    assert all(s.composition.reduced_formula == "Bi" for s in elemental_prototypes("Bi"))
    # rescaled by the radius: Bi's A7 cell is larger than As's
    assert elemental_prototypes("Bi")[5].volume > elemental_prototypes("As")[5].volume


def test_gallium_reference_is_alpha_gallium():
    """CHGNet puts alpha Ga (Cmce, the ground state) 14 meV/atom below the best simple
    prototype; with the simple set alone every gallide's formation energy is off by it."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    reference = MLRanker(model="chgnet", progress=False).reference_phases(["Ga"])[0]
    assert SpacegroupAnalyzer(reference.structure, symprec=0.05).get_space_group_number() == 64


def test_reference_phases_are_relaxed_once_per_process_model_and_settings(monkeypatch):
    # a loop builds a ranker per composition: the second one must not relax Cu again
    import xtalloop.rankers.ml_ranker as ml_ranker

    first = MLRanker(model="emt", steps=40, progress=False).reference_phases(["Cu"])[0]

    class Refuse:
        def __init__(self, *args, **kwargs):
            raise AssertionError("relaxed again")

    monkeypatch.setattr(ml_ranker, "BatchRelaxer", Refuse)
    again = MLRanker(model="emt", steps=40, progress=False).reference_phases(["Cu"])[0]
    assert again == first and again.energy_per_atom == first.energy_per_atom
    again.structure.perturb(0.3)  # a caller edits its copy: the next caller is not affected
    third = MLRanker(model="emt", steps=40, progress=False).reference_phases(["Cu"])[0]
    assert third.structure == first.structure and third.structure != again.structure
    with pytest.raises(AssertionError, match="relaxed again"):  # other settings: relaxed
        MLRanker(model="emt", steps=41, progress=False).reference_phases(["Cu"])


def _ranked(candidates_: list[Candidate], ranks: dict[int, int]) -> list[Candidate]:
    """The candidates with a generator ranking (``prior_rank``) on the ones in ``ranks``."""
    from xtalloop.generators.base import PRIOR_RANK

    for c in candidates_:
        if c.index in ranks:
            c.metadata[PRIOR_RANK] = ranks[c.index]
    return candidates_


def _layered() -> Structure:
    """A hexagonal CuAu that EMT relaxes to a structure of its own, above B2/L1_0."""
    return Structure(Lattice.hexagonal(2.9, 7.1), ["Cu", "Cu", "Au", "Au"],
                     [[0, 0, 0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.25], [0, 0, 0.75]])


def test_prior_picks_take_the_generators_first_then_the_lowest_energy():
    pool = [*candidates(), Candidate(_layered(), "test", 0, 4)]
    by_energy = MLRanker(model="emt", top_k=1, progress=False).rank(Composition("CuAu"), pool)
    lowest = by_energy.picks[0]
    assert lowest.provenance["index"] != 4  # the model does not favour the layered cell
    pool = _ranked([*candidates(), Candidate(_layered(), "test", 0, 4)], {4: 0, 0: 1})
    ranking = MLRanker(model="emt", top_k=2, prior_picks=1, progress=False).rank(
        Composition("CuAu"), pool)
    first, second = ranking.picks
    assert first.provenance["index"] == 4 and first.picked_by == "prior"
    assert second.picked_by == "energy"
    assert second.energy_per_atom == pytest.approx(lowest.energy_per_atom)
    assert first.energy_per_atom > second.energy_per_atom  # kept although higher
    # with one pick, the generator's favourite is all DFT gets
    alone = MLRanker(model="emt", top_k=1, prior_picks=1, progress=False).rank(
        Composition("CuAu"), pool)
    assert [p.provenance["index"] for p in alone.picks] == [4]


def test_a_prior_pick_carries_the_ranked_candidates_provenance():
    """Under EMT the four CuAu starts relax to one structure, lowest from L1_0 (index 3);
    the generator ranked B2 (index 0): the pick is B2's relaxed cell, with B2's provenance."""
    ranking = MLRanker(model="emt", top_k=1, prior_picks=1, progress=False).rank(
        Composition("CuAu"), _ranked(candidates(), {0: 0}))
    assert ranking.funnel["unique"] == 1
    (pick,) = ranking.picks
    assert pick.picked_by == "prior" and pick.provenance["index"] == 0
    assert pick.provenance["prior_rank"] == 0


def test_candidates_without_a_generator_ranking_are_picked_by_energy():
    plain = MLRanker(model="emt", top_k=2, progress=False).rank(Composition("CuAu"), candidates())
    prior = MLRanker(model="emt", top_k=2, prior_picks=1, progress=False).rank(
        Composition("CuAu"), candidates())  # random samples: no prior_rank
    assert [p.energy_per_atom for p in prior.picks] == [p.energy_per_atom for p in plain.picks]
    assert all(p.picked_by == "energy" for p in prior.picks)


def test_the_rerank_keeps_the_prior_pick():
    pool = _ranked([*candidates(), Candidate(_layered(), "test", 0, 4)], {4: 0})
    ranking = MLRanker(model="emt", top_k=2, prior_picks=1, rerank_model="emt", rerank_top=2,
                       progress=False).rank(Composition("CuAu"), pool)
    assert ranking.picks[0].provenance["index"] == 4 and ranking.picks[0].picked_by == "prior"
    assert [p.picked_by for p in ranking.picks[1:]] == ["energy"]


def test_prior_picks_beyond_top_k_are_refused_naming_the_key():
    from pydantic import ValidationError

    from xtalloop.config import PrefilterConfig

    with pytest.raises(ValidationError, match="prior_picks"):
        PrefilterConfig(top_k=1, prior_picks=2)


def test_the_run_config_hands_prior_picks_to_the_prefilter_job():
    from xtalloop.config import RunConfig
    from xtalloop.workflows.csp import csp_flow_maker

    config = RunConfig.model_validate({
        "compositions": ["NaCl"], "prefilter": {"model": "emt", "top_k": 2, "prior_picks": 1},
        "generate": {"sources": [{"kind": "prototype_substitution", "reference_csv": "aflow"}]},
    })
    maker = csp_flow_maker(config, {"id": "r", "name": "r"}, progress=False)
    assert maker.prefilter_maker.prior_picks == 1

"""Skeleton proposals: every bank skeleton that can hold a composition, scored by the model."""

from __future__ import annotations

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure

from xtalloop.generators.wyckoff import DEFAULT_CHECKPOINT, WyckoffGenerator, load_wyckoff
from xtalloop.generators.wyckoff.proposals import assignments, propose, ranking, score
from xtalloop.generators.wyckoff.sites import build, describe
from xtalloop.generators.wyckoff.skeletons import build_bank, skeleton_key


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Small passes: one torch thread is faster on a shared CPU."""


def test_assignments_split_the_positions_once_per_multiset():
    mult = {0: 4, 1: 2, 2: 2}
    # 2 + 6 atoms: the 2-fold element takes position 1 or 2, the other the rest
    assert sorted(assignments((0, 1, 2), mult, [2, 6])) == [[[1], [0, 2]], [[2], [0, 1]]]
    # two orbits of the same position are interchangeable: one split, not two
    assert assignments((0, 0), mult, [4, 4]) == [[[0], [0]]]
    assert assignments((0, 1, 2), mult, [4, 3]) == []  # 8 atoms, not 7
    assert assignments((1, 1, 1, 1), {1: 2}, [2, 2, 2, 2]) == [[[1], [1], [1], [1]]]
    assert len(assignments((1,) * 8, {1: 2}, [8, 8], limit=3)) == 1
    assert len(assignments((1, 2) * 4, mult, [8, 8], limit=3)) == 3


def rutile(a: float = 4.59, c: float = 2.96, x: float = 0.305) -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(a, c), ["Ti", "O"],
                                     [[0, 0, 0], [x, x, 0]])


def test_a_bank_skeleton_is_proposed_for_a_composition_it_never_held():
    """Rutile TiO2 alone in the bank: SnO2 gets rutile (the cations on 2a), ranked by
    the model's score less a charge for Sn standing where Ti stood, with the model's
    volume; NaCl (1:1) gets nothing."""
    loaded = load_wyckoff(DEFAULT_CHECKPOINT)
    bank = build_bank([describe(rutile())])
    proposals = propose(loaded.model, bank, {50: 1, 8: 2}, max_atoms=20)
    assert len(proposals) == 1  # 2a + 4f: only the cation can take 2a
    crystal = proposals[0].crystal
    assert skeleton_key(crystal) == next(iter(bank))
    target = rutile()
    target.replace_species({"Ti": "Sn"})
    assert StructureMatcher().fit(build(crystal), target)
    logp = float(score(loaded.model, [crystal])[0][0])
    assert proposals[0].score == pytest.approx(ranking(logp, crystal, bank))
    assert proposals[0].score < logp  # Sn is not Ti
    assert ranking(logp, crystal, build_bank([describe(target)])) == pytest.approx(logp)
    volume = build(crystal).volume / 6
    assert 8 < volume < 25  # the model's volume per atom for SnO2, not TiO2's cell at 1 Å
    assert propose(loaded.model, bank, {11: 1, 17: 1}, max_atoms=20) == []
    assert propose(loaded.model, bank, {50: 1, 8: 2}, max_atoms=4) == []  # 6 atoms > 4


def test_generator_ranks_proposals_with_samples_reproducibly():
    generator = WyckoffGenerator(max_atoms=20)
    first = generator.generate(Composition("ZnSnN2"), 12, seed=3)
    again = generator.generate(Composition("ZnSnN2"), 12, seed=3)
    assert len(first) == 12
    assert [c.structure for c in first] == [c.structure for c in again]
    assert any(c.metadata["proposed"] for c in first)
    logp = [c.metadata["score"] for c in first]
    assert logp == sorted(logp, reverse=True)
    without = WyckoffGenerator(max_atoms=20, skeleton_proposals=False)
    assert not any(c.metadata["proposed"] for c in without.generate(Composition("ZnSnN2"), 12,
                                                                     seed=3))

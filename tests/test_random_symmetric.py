"""Random symmetric generation: right stoichiometry, reproducible, no overlapping atoms."""

from pymatgen.core import Composition

from xtalloop.generators import Generator, RandomSymmetricGenerator, build_generator
from xtalloop.generators.base import too_close


def test_is_a_generator_with_provenance():
    generator = RandomSymmetricGenerator(max_atoms=8)
    assert isinstance(generator, Generator)
    candidates = generator.generate(Composition("NaCl"), 6, seed=3)
    assert len(candidates) == 6
    for i, c in enumerate(candidates):
        assert c.structure.composition.reduced_formula == "NaCl"
        assert len(c.structure) <= 8
        assert c.provenance["generator"] == "random_symmetric"
        assert c.provenance["seed"] == 3 and c.provenance["index"] == i
        assert "space_group" in c.provenance


def test_same_seed_same_structures_other_seed_others():
    generator = RandomSymmetricGenerator(max_atoms=8)
    first = generator.generate(Composition("GaAs"), 4, seed=11)
    again = generator.generate(Composition("GaAs"), 4, seed=11)
    other = generator.generate(Composition("GaAs"), 4, seed=12)
    assert [c.structure for c in first] == [c.structure for c in again]
    assert [c.structure for c in first] != [c.structure for c in other]


def test_minimum_distance_is_respected():
    generator = RandomSymmetricGenerator(max_atoms=8, min_distance_factor=0.6)
    for c in generator.generate(Composition("MgO"), 8, seed=5):
        assert not too_close(c.structure, 0.6)


def test_volume_is_sensible():
    import numpy as np

    candidates = RandomSymmetricGenerator(max_atoms=8).generate(Composition("Si"), 12, seed=0)
    volumes = [c.structure.volume / len(c.structure) for c in candidates]
    assert 10 < np.median(volumes) < 40  # diamond Si: 20 Å³/atom
    assert min(volumes) > 5


def test_space_group_prior_favours_common_symmetries():
    import numpy as np

    def high_symmetry_share(prior):
        generator = RandomSymmetricGenerator(max_atoms=8, space_group_prior=prior)
        groups = [c.metadata["space_group"]
                  for c in generator.generate(Composition("NaCl"), 40, seed=2)]
        return np.mean([g >= 195 for g in groups])  # cubic groups

    assert high_symmetry_share("mp20") > high_symmetry_share("uniform")


def test_factory_builds_the_configured_generator():
    generator = build_generator({"kind": "random_symmetric", "n": 3, "volume_factor": 1.3}, 6)
    assert isinstance(generator, RandomSymmetricGenerator)
    assert generator.max_atoms == 6 and generator.volume_factor == 1.3

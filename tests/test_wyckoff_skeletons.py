"""The skeleton bank: training crystals' free coordinates dress the model's sampled skeletons."""

from __future__ import annotations

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure
from typer.testing import CliRunner

from xtalloop.cli import app
from xtalloop.generators.wyckoff import DEFAULT_CHECKPOINT, WyckoffGenerator, load_wyckoff
from xtalloop.generators.wyckoff.checkpoint import add_skeletons
from xtalloop.generators.wyckoff.sites import WyckoffCrystal, WyckoffSite, build, describe
from xtalloop.generators.wyckoff.skeletons import (
    build_bank,
    chemical_distance,
    dress,
    dump_bank,
    load_bank,
    skeleton_key,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread is much faster on a shared CPU."""


def rutile(a: float = 4.59, c: float = 2.96, x: float = 0.305) -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(a, c), ["Ti", "O"],
                                     [[0, 0, 0], [x, x, 0]])


def test_dressing_gives_the_training_crystals_coordinates_and_shape_at_its_own_volume():
    """A sampled SnO2 on rutile's skeleton (P4_2/mnm, 2a + 4f) with wrong oxygen x and a
    cubic-ish cell gets rutile's x and c/a; its volume stays the sample's."""
    known = describe(rutile())
    bank = load_bank(dump_bank(build_bank([known])))  # as stored in a checkpoint
    assert list(bank) == [skeleton_key(known)]
    sample = WyckoffCrystal(136, [5.0, 5.0, 5.0, 90, 90, 90],
                            [WyckoffSite(50, s.wp, [0.1] * len(s.free)) if s.z == 22 else
                             WyckoffSite(8, s.wp, [0.1] * len(s.free)) for s in known.sites])
    dressed = dress(sample, bank, 0)
    assert dress(sample, bank, 1) is None  # one entry only
    a, b, c = dressed.lattice[:3]
    assert a * b * c == pytest.approx(125.0)
    assert c / a == pytest.approx(2.96 / 4.59, rel=1e-3)
    structure = build(dressed)
    assert structure.composition.reduced_formula == "SnO2"
    target = rutile()
    target.replace_species({"Ti": "Sn"})
    assert StructureMatcher().fit(structure, target)
    assert not StructureMatcher().fit(build(sample), target)  # the model's coordinates miss


def test_chemically_closest_entry_comes_first():
    assert chemical_distance([22, 8], [22, 8]) == 0
    assert chemical_distance([50, 8], [22, 8]) < chemical_distance([50, 8], [55, 9])
    assert chemical_distance([50, 8], [22]) == float("inf")
    close, far = describe(rutile(x=0.30)), describe(rutile(x=0.25))
    for site in far.sites:  # a fluoride of a large cation: chemically further from SnO2
        site.z = 55 if site.z == 22 else 9
    bank = build_bank([far, close])
    sample = WyckoffCrystal(136, [4.7, 4.7, 3.2, 90, 90, 90],
                            [WyckoffSite(50 if s.z == 22 else 8, s.wp, [0.5] * len(s.free))
                             for s in close.sites])
    free = [f for s in dress(sample, bank, 0).sites for f in s.free]
    assert free == pytest.approx([0.30])
    assert [f for s in dress(sample, bank, 1).sites for f in s.free] == pytest.approx([0.25])


def test_fine_tuning_puts_its_crystals_first_and_keeps_the_parents():
    parent = build_bank([describe(rutile(x=0.25))])
    key = skeleton_key(describe(rutile()))
    bank = build_bank([describe(rutile(x=0.31))], start=parent)
    free = [[x for site in entry[2] for x in site] for entry in bank[key]]
    assert free == [[pytest.approx(0.31)], [pytest.approx(0.25)]]
    assert len(build_bank([describe(rutile(x=0.31))], per_skeleton=1, start=parent)[key]) == 1


def test_tiny_training_writes_a_bank_and_the_generator_uses_it(tiny_wyckoff):
    loaded = load_wyckoff(tiny_wyckoff)
    assert loaded.skeletons and "skeletons" not in loaded.metadata
    with_bank = WyckoffGenerator(checkpoint=str(tiny_wyckoff)).generate(
        Composition("NaCl"), 6, seed=0)
    without = WyckoffGenerator(checkpoint=str(tiny_wyckoff), skeleton_coordinates=False
                               ).generate(Composition("NaCl"), 6, seed=0)
    assert {c.metadata["coordinates"] for c in without} == {"model"}
    assert len(with_bank) == len(without) == 6
    for candidate in with_bank:
        assert candidate.structure.composition.reduced_formula == "NaCl"


def test_a_checkpoint_without_a_bank_still_samples(tmp_path, tiny_wyckoff):
    import torch

    old = tmp_path / "old.pt"
    ckpt = torch.load(tiny_wyckoff, weights_only=True)
    del ckpt["skeletons"]
    torch.save(ckpt, old)
    assert load_wyckoff(old).skeletons == {}
    candidates = WyckoffGenerator(checkpoint=str(old)).generate(Composition("MgO"), 4, seed=1)
    assert len(candidates) == 4
    assert {c.metadata["coordinates"] for c in candidates} == {"model"}
    assert add_skeletons(old, [describe(rutile())]) == 1
    assert list(load_wyckoff(old).skeletons) == [skeleton_key(describe(rutile()))]


def test_shipped_checkpoint_dresses_rutile_from_its_bank():
    """The shipped model's bank holds thousands of skeletons: SnO2 on rutile's skeleton with
    uniform-guess coordinates comes out as rutile SnO2; most of the model's own SnO2
    candidates carry bank coordinates."""
    loaded = load_wyckoff(DEFAULT_CHECKPOINT)
    assert len(loaded.skeletons) > 2000
    known = describe(rutile())
    sample = WyckoffCrystal(136, [5.0, 5.0, 5.0, 90, 90, 90],
                            [WyckoffSite(50 if s.z == 22 else 8, s.wp, [0.5] * len(s.free))
                             for s in known.sites])
    target = rutile(a=4.74, c=3.19)
    target.replace_species({"Ti": "Sn"})
    matcher = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    assert matcher.fit(build(dress(sample, loaded.skeletons, 0)), target)
    candidates = WyckoffGenerator().generate(Composition("SnO2"), 10, seed=0)
    sources = [c.metadata["coordinates"] for c in candidates]
    assert sources.count("bank") > len(sources) / 2


def test_wyckoff_skeletons_command(tmp_path, tiny_wyckoff):
    from wyckoff_checkpoint import mp20_rows

    table = tmp_path / "rows.csv"
    mp20_rows(30, skip=200).to_csv(table, index=False)  # crystals the tiny model never saw
    copy = tmp_path / "model.pt"
    copy.write_bytes(tiny_wyckoff.read_bytes())
    result = CliRunner().invoke(app, ["generator", "wyckoff-skeletons", str(copy),
                                      "--data", str(table), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skeletons of" in result.output
    bank = load_wyckoff(copy).skeletons
    assert bank != load_wyckoff(tiny_wyckoff).skeletons
    assert sum(len(entries) for entries in bank.values()) <= 30
    bad = CliRunner().invoke(app, ["generator", "wyckoff-skeletons", str(tmp_path / "no.pt"),
                                   "--data", str(table)])
    assert bad.exit_code != 0 and "not found" in bad.output

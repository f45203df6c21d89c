"""Behaviour of the prototype-substitution generator on a tiny reference set."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from xtalloop.errors import DataError, XtalloopError
from xtalloop.generators import Generator
from xtalloop.generators.base import PRIOR_RANK
from xtalloop.generators.prototype_substitution import (
    PrototypeSubstitutionGenerator,
    load_reference_set,
)

SHARED_DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


def fcc_primitive(a: float) -> Lattice:
    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def rocksalt(a: float, cation: str, anion: str) -> Structure:
    return Structure(fcc_primitive(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def b2(a: float, first: str, second: str) -> Structure:
    return Structure(Lattice.cubic(a), [first, second], [[0, 0, 0], [0.5, 0.5, 0.5]])


def zincblende(a: float, cation: str, anion: str) -> Structure:
    return Structure(fcc_primitive(a), [cation, anion], [[0, 0, 0], [0.25, 0.25, 0.25]])


def perovskite(a: float) -> Structure:
    return Structure(
        Lattice.cubic(a),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def write_table(path: Path, structures: dict[str, Structure], shape: str = "mp_20") -> Path:
    """A CSV like the shared data: full MP-20 columns, or MPTS-52 val's (cif only)."""
    rows = []
    for material_id, s in structures.items():
        row = {"material_id": material_id, "cif": str(CifWriter(s))}
        if shape == "mp_20":
            comp = s.composition
            row |= {
                "spacegroup_number": SpacegroupAnalyzer(s).get_space_group_number(),
                "nsites": len(s),
                "n_elements": len(comp),
                "elements_list": " ".join(sorted(el.symbol for el in comp)),
                "reduced_formula": comp.reduced_formula,
                "formation_energy_per_atom": -1.0,
            }
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=(shape != "mp_20"))
    return path


TEMPLATES = {
    "t-NaCl": rocksalt(5.64, "Na", "Cl"),
    "t-NaCl-B2": b2(3.4, "Na", "Cl"),
    "t-CsCl": b2(4.12, "Cs", "Cl"),
    "t-ZnS": zincblende(5.41, "Zn", "S"),
    "t-CuZn": b2(2.95, "Cu", "Zn"),
    "t-SrTiO3": perovskite(3.905),
}


@pytest.fixture
def reference(tmp_path: Path) -> str:
    return str(write_table(tmp_path / "ref.csv", TEMPLATES))


def by_template(candidates, template_id):
    found = [c for c in candidates if c.metadata["template_id"] == template_id]
    assert len(found) == 1, [c.metadata["template_id"] for c in candidates]
    return found[0]


def test_is_a_generator(reference):
    gen = PrototypeSubstitutionGenerator(reference_csv=reference)
    assert isinstance(gen, Generator)
    assert gen.name == "prototype_substitution"


def test_kbr_into_rocksalt_matches_rocksalt_kbr_with_larger_volume(reference):
    candidates = PrototypeSubstitutionGenerator(reference_csv=reference).generate(
        Composition("KBr"), 10, seed=0
    )
    candidate = by_template(candidates, "t-NaCl")
    s = candidate.structure
    assert s.composition.reduced_formula == "KBr"
    assert StructureMatcher().fit(s, rocksalt(6.60, "K", "Br"))
    nacl_volume = TEMPLATES["t-NaCl"].volume / len(TEMPLATES["t-NaCl"])
    kbr_volume = 6.60**3 / 8  # experimental rocksalt KBr, per atom
    per_atom = s.volume / len(s)
    assert per_atom > 1.3 * nacl_volume
    assert 0.9 < per_atom / kbr_volume < 1.1
    assert candidate.metadata["template_formula"] == "NaCl"
    assert candidate.metadata["space_group"] == 225
    assert candidate.metadata["assignment"] == {"Na": "K", "Cl": "Br"}
    assert 0 < candidate.metadata["substitution_probability"] <= 1
    assert candidate.metadata["score_method"] == "ionic"


def test_candidates_are_distinct_prototypes_most_probable_first(reference):
    candidates = PrototypeSubstitutionGenerator(reference_csv=reference).generate(
        Composition("KBr"), 10, seed=0
    )
    # rocksalt, B2 (CsCl, NaCl-B2 and CuZn give the same one) and zincblende
    assert sorted(c.metadata["space_group"] for c in candidates) == [216, 221, 225]
    assert [c.index for c in candidates] == list(range(len(candidates)))
    # the order is a ranking, which the prefilter's prior_picks reads
    assert [c.metadata[PRIOR_RANK] for c in candidates] == list(range(len(candidates)))
    matcher = StructureMatcher()
    for i, a in enumerate(candidates):
        assert a.structure.composition.reduced_formula == "KBr"
        for b in candidates[i + 1 :]:
            assert not matcher.fit(a.structure, b.structure)
    probabilities = [c.metadata["substitution_probability"] for c in candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    # K+ replaces Cs+ more readily than Na+ (Hautier et al.), and both beat Zn2+/S2-
    assert candidates[0].metadata["template_id"] == "t-CsCl"
    assert candidates[-1].metadata["template_id"] == "t-ZnS"


def test_same_seed_same_candidates(reference):
    first = PrototypeSubstitutionGenerator(reference_csv=reference).generate(
        Composition("NaBr"), 5, seed=3
    )
    again = PrototypeSubstitutionGenerator(reference_csv=reference).generate(
        Composition("NaBr"), 5, seed=3
    )
    assert len(first) == len(again) > 0
    for a, b in zip(first, again, strict=True):
        assert a.metadata == b.metadata
        assert a.structure.species == b.structure.species
        np.testing.assert_array_equal(a.structure.lattice.matrix, b.structure.lattice.matrix)
        np.testing.assert_array_equal(a.structure.frac_coords, b.structure.frac_coords)
    # fewer candidates are a prefix of more
    fewer = PrototypeSubstitutionGenerator(reference_csv=reference).generate(
        Composition("NaBr"), 2, seed=3
    )
    assert [c.metadata for c in fewer] == [c.metadata for c in first[:2]]


def test_seed_breaks_ties_between_equally_probable_templates(reference):
    # NaBr from rocksalt NaCl or from B2 NaCl: the same substitution, the same probability.
    gen = PrototypeSubstitutionGenerator(reference_csv=reference)
    firsts = {
        gen.generate(Composition("NaBr"), 1, seed=s)[0].metadata["template_id"] for s in range(20)
    }
    assert firsts == {"t-NaCl", "t-NaCl-B2"}


def test_explore_samples_beyond_the_top_of_the_ranking(reference):
    gen = PrototypeSubstitutionGenerator(reference_csv=reference, explore=3.0)
    firsts = {
        gen.generate(Composition("KBr"), 1, seed=s)[0].metadata["template_id"] for s in range(30)
    }
    assert len(firsts) >= 3  # not only the most probable template (t-CsCl)


def test_no_template_gives_empty_list(reference):
    gen = PrototypeSubstitutionGenerator(reference_csv=reference)
    assert gen.generate(Composition("Li3PS4"), 5, seed=0) == []
    assert gen.generate(Composition("KBr"), 0, seed=0) == []
    assert PrototypeSubstitutionGenerator(reference_csv=reference, max_atoms=1).generate(
        Composition("KBr"), 5, seed=0
    ) == []


def test_multiple_formula_units_and_ternary(reference):
    candidates = PrototypeSubstitutionGenerator(reference_csv=reference).generate(
        Composition("Ba2Zr2O6"), 3, seed=0
    )
    # Ba on the A site first; the swapped (Zr on A) perovskite is distinct but far less likely
    assert [c.metadata["assignment"] for c in candidates] == [
        {"Sr": "Ba", "Ti": "Zr", "O": "O"},
        {"Sr": "Zr", "Ti": "Ba", "O": "O"},
    ]
    p_first, p_swapped = (c.metadata["substitution_probability"] for c in candidates)
    assert p_first > 100 * p_swapped
    s = candidates[0].structure
    assert s.composition.reduced_formula == "BaZrO3"
    assert candidates[0].metadata["formula_units"] == 1
    assert s.volume > TEMPLATES["t-SrTiO3"].volume  # Ba2+ and Zr4+ are larger ions


def test_alloys_fall_back_to_electronegativity_order(reference):
    candidates = PrototypeSubstitutionGenerator(reference_csv=reference).generate(
        Composition("NiAl"), 5, seed=0
    )
    assert candidates
    first = candidates[0]
    assert first.metadata["score_method"] == "electronegativity"
    assert first.metadata["template_id"] == "t-CuZn"
    # chi(Cu) 1.90 > chi(Zn) 1.65 and chi(Ni) 1.91 > chi(Al) 1.61
    assert first.metadata["assignment"] == {"Cu": "Ni", "Zn": "Al"}
    assert first.structure.composition.reduced_formula == "AlNi"


def test_formula_read_from_cif_when_table_has_none(tmp_path):
    path = write_table(tmp_path / "val.csv", {"x-1": rocksalt(5.64, "Na", "Cl")}, shape="mpts_52")
    assert pd.read_csv(path).columns[0].startswith("Unnamed")
    candidates = PrototypeSubstitutionGenerator(reference_csv=str(path)).generate(
        Composition("KBr"), 2, seed=0
    )
    assert len(candidates) == 1
    assert candidates[0].metadata["template_formula"] == "NaCl"
    assert candidates[0].metadata["space_group"] == 225


def test_reference_set_is_read_once(reference):
    assert load_reference_set(reference) is load_reference_set(reference)


@pytest.mark.parametrize("kind", ["missing", "garbage_gzip", "no_cif_column"])
def test_bad_reference_csv_raises_one_line_data_error(tmp_path, kind):
    path = tmp_path / "ref.csv.gz"
    if kind == "garbage_gzip":
        path.write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip \x00\xff" * 10)
    elif kind == "no_cif_column":
        with gzip.open(path, "wt") as f:
            f.write("material_id,formula\nmp-1,NaCl\n")
    gen = PrototypeSubstitutionGenerator(reference_csv=str(path))
    with pytest.raises(DataError) as info:
        gen.generate(Composition("KBr"), 3, seed=0)
    assert isinstance(info.value, XtalloopError)
    message = str(info.value)
    assert message and "\n" not in message
    assert "ref.csv.gz" in message


def test_real_mp20_templates_give_rocksalt_kbr():
    path = SHARED_DATA / "mp_20" / "train_partial.csv.gz"
    if not path.is_file():
        pytest.skip("shared MP-20 data not available")
    candidates = PrototypeSubstitutionGenerator(reference_csv=str(path)).generate(
        Composition("KBr"), 5, seed=0
    )
    assert len(candidates) == 5
    assert all(c.structure.composition.reduced_formula == "KBr" for c in candidates)
    matcher = StructureMatcher()
    assert any(matcher.fit(c.structure, rocksalt(6.60, "K", "Br")) for c in candidates)

"""Prototype substitution from the AFLOW prototype library shipped with pymatgen."""

import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure

from xtalloop.generators.prototype_library import aflow_table, split_reference
from xtalloop.generators.prototype_substitution import PrototypeSubstitutionGenerator


def diamond_si() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.47), ["Si"], [[0, 0, 0]])


def zincblende_gaas() -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(5.75), ["Ga", "As"],
                                     [[0, 0, 0], [0.25, 0.25, 0.25]])


def test_library_is_read_from_pymatgen_with_formulas_and_groups():
    table = aflow_table()
    assert len(table) > 200
    assert {"material_id", "cif", "reduced_formula", "nsites", "spacegroup_number"} <= set(
        table.columns)
    assert table["material_id"].str.startswith("aflow:").all()
    assert table["spacegroup_number"].between(1, 230).all()
    assert split_reference("aflow") == (True, None)
    assert split_reference("aflow+x.csv") == (True, "x.csv")
    assert split_reference("x.csv") == (False, "x.csv")


@pytest.mark.parametrize(("formula", "known", "within"), [
    ("Si", diamond_si, 16),       # MP-20's train_partial has no diamond-structure element
    ("GaAs", zincblende_gaas, 4),
])
def test_textbook_structures_come_early(formula, known, within):
    generator = PrototypeSubstitutionGenerator(reference_csv="aflow", max_atoms=8)
    candidates = generator.generate(Composition(formula), within, seed=0)
    assert len(candidates) == within
    assert all(c.metadata["template_id"].startswith("aflow:") for c in candidates)
    matcher = StructureMatcher(scale=True)
    assert any(matcher.fit(c.structure, known()) for c in candidates)
    again = generator.generate(Composition(formula), within, seed=0)
    assert [c.metadata["template_id"] for c in again] == \
        [c.metadata["template_id"] for c in candidates]


def test_library_and_table_are_taken_in_turn(tmp_path):
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])
    csv = tmp_path / "one.csv"
    pd.DataFrame({"material_id": ["mine-1"], "cif": [rocksalt.to(fmt="cif")]}).to_csv(csv)
    candidates = PrototypeSubstitutionGenerator(
        reference_csv=f"aflow+{csv}", max_atoms=8).generate(Composition("KBr"), 3, seed=0)
    ids = [c.metadata["template_id"] for c in candidates]
    assert ids[0] == "mine-1" and ids[1].startswith("aflow:")


def test_source_config_accepts_the_library_and_names_a_missing_table():
    from xtalloop.config_sources import PrototypeSubstitutionSource
    from xtalloop.errors import DataError

    assert PrototypeSubstitutionSource(kind="prototype_substitution",
                                       reference_csv="aflow").reference_csv == "aflow"
    with pytest.raises((DataError, ValueError), match="missing.csv"):
        PrototypeSubstitutionSource(kind="prototype_substitution",
                                    reference_csv="aflow+missing.csv")

"""Formulas users type: what is accepted and the one-line reason when not."""

import pytest

from xtalloop.composition import parse_composition
from xtalloop.errors import CompositionError


@pytest.mark.parametrize(
    ("formula", "reduced"),
    [("NaCl", "NaCl"), ("Na2Cl2", "NaCl"), ("Li3PS4", "Li3PS4"), ("BaTiO3", "BaTiO3"),
     ("Si", "Si"), ("CuAu", "CuAu"), ("GaAs", "GaAs")],
)
def test_accepts_real_compositions(formula, reduced):
    assert parse_composition(formula).reduced_formula == reduced


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("NaXx", "unknown element 'Xx'"),
        ("Na0Cl", "must be positive"),
        ("Na-1Cl", "must be positive"),
        ("Na1.5Cl", "must be an integer"),
        ("NaCl2", "no charge-balanced reading"),
        ("", "empty formula"),
        ("Na$Cl", "unexpected characters"),
    ],
)
def test_rejects_bad_formulas_with_one_line(formula, message):
    with pytest.raises(CompositionError) as info:
        parse_composition(formula)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_charge_balance_can_be_switched_off():
    assert parse_composition("NaCl2", charge_balance="off").reduced_formula == "NaCl2"


def test_too_many_atoms_for_the_config():
    with pytest.raises(CompositionError, match="8 atoms per formula unit, more than .* 7"):
        parse_composition("Li3PS4", max_atoms=7)
    assert parse_composition("Li3PS4", max_atoms=8).num_atoms == 8

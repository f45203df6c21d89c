"""Parse and check the compositions a user asks to predict."""

from __future__ import annotations

import re
from typing import Literal

from pymatgen.core import Composition, Element

from xtalloop.errors import CompositionError

ChargeBalance = Literal["strict", "off"]

_TOKEN = re.compile(r"([A-Z][a-z]?)\s*(-?\d*\.?\d*)")


_ISOTOPES = {"D": "deuterium", "T": "tritium"}


def check_symbol(symbol: str, formula: str) -> None:
    """Refuse an unknown element symbol, and the isotopes D and T.

    pymatgen reads ``D`` and ``T`` as hydrogen, so ``D2O`` would be stored and
    queried as ``H2O``; structures are predicted per element, so the user is
    asked to write ``H`` rather than have the formula changed silently.
    """
    if symbol in _ISOTOPES:
        raise CompositionError(
            f"{symbol!r} ({_ISOTOPES[symbol]}) in {formula!r}: isotopes are not distinguished "
            "(pymatgen reads them as H); write H instead")
    if not Element.is_valid_symbol(symbol):
        raise CompositionError(f"unknown element {symbol!r} in formula {formula!r}")


def _check_tokens(formula: str) -> None:
    """Reject unknown symbols and non-positive-integer counts before pymatgen guesses."""
    text = formula.replace(" ", "")
    if not text:
        raise CompositionError("empty formula")
    for symbol in re.findall(r"[A-Z][a-z]?", text):
        check_symbol(symbol, formula)
    if re.search(r"[()\[\]]", text):
        # pymatgen expands brackets; counts are checked on the result.
        return
    consumed = "".join(m.group(0) for m in _TOKEN.finditer(text))
    if consumed != text:
        raise CompositionError(f"cannot read formula {formula!r}: unexpected characters")
    for symbol, count in _TOKEN.findall(text):
        if count:
            value = float(count)
            if value <= 0:
                raise CompositionError(
                    f"count of {symbol} in {formula!r} must be positive, got {count}"
                )
            if value != int(value):
                raise CompositionError(
                    f"count of {symbol} in {formula!r} must be an integer, got {count}"
                )


def parse_composition(
    formula: str,
    max_atoms: int | None = None,
    charge_balance: ChargeBalance = "strict",
) -> Composition:
    """Read a formula into a reduced pymatgen Composition and check it can be a crystal.

    Parameters
    ----------
    formula
        A chemical formula such as ``"GaN"`` or ``"Li3PS4"``.
    max_atoms
        Largest number of atoms of one formula unit allowed (``None``: no limit).
    charge_balance
        ``"strict"`` rejects compositions with no charge-balanced reading in
        common oxidation states, unless every element is a metal (alloys and
        intermetallics are not charge balanced); ``"off"`` skips the check.

    Returns
    -------
    Composition
        The reduced composition.

    Raises
    ------
    CompositionError
        With a one-line message naming what is wrong.
    """
    if not isinstance(formula, str):
        raise CompositionError(f"formula must be text, got {formula!r}")
    _check_tokens(formula)
    try:
        comp = Composition(formula)
    except Exception as exc:  # pymatgen raises several types for bad formulas
        raise CompositionError(f"cannot read formula {formula!r}: {exc}") from None
    if any(amount <= 0 for amount in comp.values()):
        raise CompositionError(f"all element counts in {formula!r} must be positive")
    if any(not isinstance(el, Element) for el in comp.elements):
        raise CompositionError(f"formula {formula!r} contains non-element species")
    if any(abs(a - round(a)) > 1e-8 for a in comp.values()):
        raise CompositionError(f"element counts in {formula!r} must be integers")
    reduced = comp.reduced_composition
    if max_atoms is not None and reduced.num_atoms > max_atoms:
        raise CompositionError(
            f"{reduced.reduced_formula} has {int(reduced.num_atoms)} atoms per formula unit, "
            f"more than the configured maximum of {max_atoms}"
        )
    if charge_balance == "strict" and not _charge_balanced_or_metallic(reduced):
        raise CompositionError(
            f"{reduced.reduced_formula} has no charge-balanced reading in common oxidation "
            "states (set charge_balance: off to predict it anyway)"
        )
    return reduced


def _charge_balanced_or_metallic(comp: Composition) -> bool:
    if len(comp) == 1 or all(el.is_metal for el in comp.elements):
        return True
    return len(comp.oxi_state_guesses(max_sites=-50)) > 0

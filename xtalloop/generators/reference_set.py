"""Known crystals to substitute into: a structure table read once, indexed by formula type.

A table is a CSV with a ``cif`` column (the shared data's shape, such as the
MP-20 training split), the AFLOW prototype library shipped with pymatgen
(``"aflow"``), or both (``"aflow+<csv>"``).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition, Structure

from xtalloop.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_REFERENCE_CSV = "../shared/data/mp_20/train_partial.csv.gz"

_FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+['\"]?([^'\"\n]+?)['\"]?\s*$", re.M)


def read_structure_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table of structures (the shared data's shape: a ``cif`` column at least).

    A leading unnamed index column, which some of the shared files have, is dropped.

    Raises
    ------
    DataError
        With a one-line message if the file is missing, unreadable, has no
        ``cif`` column or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"structure table not found: {path}")
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # gzip, decoding and parser errors all mean "corrupt"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read structure table {path}: {reason}") from None
    table = table.loc[:, [not str(c).startswith("Unnamed:") for c in table.columns]]
    if "cif" not in table.columns:
        raise DataError(f"structure table {path} has no 'cif' column")
    if len(table) == 0:
        raise DataError(f"structure table {path} has no rows")
    return table.reset_index(drop=True)


def _cell_composition_from_cif(cif: str) -> Composition | None:
    """Cell composition from a CIF's ``_chemical_formula_sum`` (None if absent or odd)."""
    match = _FORMULA_SUM.search(cif)
    if match is None:
        return None
    try:
        return Composition(match.group(1))
    except Exception:
        return None


def _parse_cif(cif: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
    structure.remove_oxidation_states()
    return structure


class ReferenceSet:
    """Known structures to substitute into, indexed by anonymised formula.

    Only formulas are read up front (from a ``reduced_formula`` column, else
    from each CIF's ``_chemical_formula_sum``); CIFs are parsed on first use
    and kept. Use :func:`load_reference_set` to share one instance per file.

    Parameters
    ----------
    table
        Rows with a ``cif`` column and optionally ``material_id``,
        ``reduced_formula``, ``nsites`` and ``spacegroup_number``.
    source
        Where the table came from, for messages.
    """

    def __init__(self, table: pd.DataFrame, source: str = "<table>") -> None:
        self.source = source
        self.cifs: list[str] = [str(c) for c in table["cif"]]
        n = len(self.cifs)
        if "material_id" in table.columns:
            self.ids = [str(m) for m in table["material_id"]]
        else:
            self.ids = [f"row-{i}" for i in range(n)]
        self._space_groups: list[int | None] = [
            int(v) if pd.notna(v) else None for v in _column(table, "spacegroup_number", n)
        ]
        self.reduced_formulas: list[str | None] = [None] * n
        self.nsites: list[int | None] = [None] * n
        self._by_anonymous: dict[str, list[int]] = {}
        self._structures: dict[int, Structure | None] = {}
        self._oxidation: dict[str, dict[str, float] | None] = {}
        unusable = 0
        reduced_col = _column(table, "reduced_formula", n)
        nsites_col = _column(table, "nsites", n)
        for i, cif in enumerate(self.cifs):
            reduced: Composition | None = None
            nsites: int | None = None
            if pd.notna(nsites_col[i]):
                nsites = int(nsites_col[i])
            if isinstance(reduced_col[i], str):
                try:
                    reduced = Composition(reduced_col[i]).reduced_composition
                except Exception:
                    reduced = None
            if reduced is None or nsites is None:
                cell = _cell_composition_from_cif(cif)
                if cell is None:
                    structure = self.structure(i)
                    cell = structure.composition if structure is not None else None
                if cell is None:
                    unusable += 1
                    continue
                reduced = reduced or cell.reduced_composition
                nsites = nsites or int(round(cell.num_atoms))
            self.reduced_formulas[i] = reduced.reduced_formula
            self.nsites[i] = nsites
            self._by_anonymous.setdefault(reduced.anonymized_formula, []).append(i)
        if unusable:
            logger.warning("%s: %d of %d rows have no readable formula", source, unusable, n)

    def __len__(self) -> int:
        return len(self.cifs)

    def rows_like(self, composition: Composition, max_atoms: int | None = None) -> list[int]:
        """Rows with the anonymised formula of ``composition`` and at most ``max_atoms`` sites."""
        rows = self._by_anonymous.get(composition.reduced_composition.anonymized_formula, [])
        if max_atoms is None:
            return list(rows)
        return [i for i in rows if (self.nsites[i] or 0) <= max_atoms]

    def structure(self, row: int) -> Structure | None:
        """The structure of ``row`` (parsed once; None if its CIF cannot be read)."""
        if row not in self._structures:
            try:
                self._structures[row] = _parse_cif(self.cifs[row])
            except Exception as exc:
                logger.warning("%s: cannot parse CIF of %s: %s", self.source, self.ids[row], exc)
                self._structures[row] = None
        structure = self._structures[row]
        return structure.copy() if structure is not None else None

    def space_group(self, row: int) -> int | None:
        """Space-group number of ``row`` (from the table, else found with spglib)."""
        if self._space_groups[row] is None:
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            structure = self.structure(row)
            if structure is None:
                return None
            try:
                self._space_groups[row] = SpacegroupAnalyzer(
                    structure, symprec=0.1
                ).get_space_group_number()
            except Exception:
                return None
        return self._space_groups[row]

    def oxidation_states(self, reduced_formula: str) -> dict[str, float] | None:
        """Oxidation state per element of a formula, cached (None: no ionic reading)."""
        if reduced_formula not in self._oxidation:
            self._oxidation[reduced_formula] = guess_oxidation_states(Composition(reduced_formula))
        return self._oxidation[reduced_formula]


def _column(table: pd.DataFrame, name: str, n: int) -> list:
    """A column as a list, or ``n`` Nones if the table lacks it."""
    return table[name].tolist() if name in table.columns else [None] * n


_REFERENCE_CACHE: dict[tuple[str, int, int], ReferenceSet] = {}


def load_reference_set(path: str | os.PathLike) -> ReferenceSet:
    """The :class:`ReferenceSet` of a CSV file, read once per (path, modification time).

    ``"aflow"`` names the AFLOW prototype library shipped with pymatgen, and
    ``"aflow+<csv>"`` that library and a CSV together (see
    :mod:`xtalloop.generators.prototype_library`).

    Raises
    ------
    DataError
        If the file is missing or unreadable (see :func:`read_structure_csv`).
    """
    from xtalloop.generators.prototype_library import aflow_table, split_reference

    with_library, csv = split_reference(str(path))
    key: tuple[str, int, int] = ("", 0, 0)
    if csv is not None:
        resolved = Path(csv).expanduser().resolve()
        try:
            stat = resolved.stat()
        except OSError:
            raise DataError(f"reference structures not found: {csv}") from None
        key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    key = (("aflow+" if with_library else "") + key[0], key[1], key[2])
    if key not in _REFERENCE_CACHE:
        tables = [aflow_table()] if with_library else []
        if csv is not None:
            tables.append(read_structure_csv(resolved))
        table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        _REFERENCE_CACHE[key] = ReferenceSet(table, source=str(path))
    return _REFERENCE_CACHE[key]


def guess_oxidation_states(composition: Composition) -> dict[str, float] | None:
    """Most likely charge-balanced oxidation state of each element, or None (also for
    elements, whose only "guess" is zero)."""
    reduced = composition.element_composition.reduced_composition
    try:
        guesses = reduced.oxi_state_guesses(max_sites=-50)
    except Exception:
        return None
    if not guesses or all(v == 0 for v in guesses[0].values()):
        return None  # elements and alloys: no ions to substitute
    return dict(guesses[0])

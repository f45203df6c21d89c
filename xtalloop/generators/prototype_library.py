"""The AFLOW prototype library as a template table for prototype substitution.

pymatgen ships the 288 prototypes of the AFLOW Library of Crystallographic
Prototypes (Mehl et al., 2017) inside its wheel: diamond, rocksalt,
zincblende, wurtzite, fluorite, rutile, perovskite, the A15 and Laves
phases... They are the textbook structures a materials scientist tries
first, they need no data download, and they fill the gaps of a data split:
MP-20's ``train_partial`` holds no diamond-structure element, so templates
from it alone never propose diamond Si. Pass ``reference_csv: aflow`` (or
``aflow+<csv>`` to use both) to a prototype-substitution source.
"""

from __future__ import annotations

import functools
import warnings

import pandas as pd

#: The name that selects the library wherever a template table is named.
AFLOW = "aflow"
#: Prefix joining the library to a CSV table: ``aflow+path/to/train.csv.gz``.
AFLOW_PLUS = "aflow+"


def is_library_row(material_id: str) -> bool:
    """Whether a template row came from the AFLOW library."""
    return material_id.startswith("aflow:")


def split_reference(spec: str) -> tuple[bool, str | None]:
    """``(uses the AFLOW library, CSV path or None)`` of a ``reference_csv`` value."""
    if spec == AFLOW:
        return True, None
    if spec.startswith(AFLOW_PLUS):
        return True, spec[len(AFLOW_PLUS):]
    return False, spec


@functools.lru_cache(maxsize=1)
def aflow_table() -> pd.DataFrame:
    """The AFLOW prototypes as a structure table (``material_id`` is ``aflow:<label>``).

    Built once per process from pymatgen's bundled JSON (about a second):
    CIF text, reduced formula, number of sites and space group per row.
    """
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY
    from pymatgen.io.cif import CifWriter

    rows = []
    for entry in AFLOW_PROTOTYPE_LIBRARY:
        structure = entry["snl"].structure
        label = entry["tags"]["aflow"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cif = str(CifWriter(structure))
        rows.append({
            "material_id": f"aflow:{label}",
            "cif": cif,
            "reduced_formula": structure.composition.reduced_formula,
            "nsites": len(structure),
            "spacegroup_number": int(label.split("_")[2]),
        })
    return pd.DataFrame(rows)

"""Structure tables for the arity benchmarks and the campaign: rows by arity, seeded draws.

Shared by :mod:`xtalloop.benchmark.arity`, :mod:`xtalloop.benchmark.arity_wyckoff`
and the campaign (:mod:`xtalloop.benchmark.campaign`), which all draw
compositions of a given number of elements from the shared data sets' CSV tables.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure

logger = logging.getLogger(__name__)



def parse_cif(cif: str) -> Structure | None:
    """Structure of a CIF text without oxidation states (``None`` if unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(str(cif), fmt="cif")
    except Exception:  # the CIF parser raises many types on bad text
        return None
    structure.remove_oxidation_states()
    return structure


def rows_of_arity(
    table: pd.DataFrame, arities: Sequence[int], max_atoms: int | None
) -> pd.DataFrame:
    """Rows whose structure has one of ``arities`` distinct elements and ≤ ``max_atoms`` atoms.

    ``nsites`` and ``n_elements`` columns, where present, prune rows before the CIFs
    are parsed; the decision is always made on the parsed structure. Unreadable and
    disordered structures are dropped. The result has ``n_elements``, ``nsites`` and
    ``formula`` (reduced) columns computed from the structures and keeps the
    original row order.
    """
    frame = table
    if max_atoms is not None and "nsites" in frame.columns:
        frame = frame[pd.to_numeric(frame["nsites"], errors="coerce").fillna(0) <= max_atoms]
    if "n_elements" in frame.columns:
        frame = frame[pd.to_numeric(frame["n_elements"], errors="coerce").isin(list(arities))]
    keep, n_el, n_sites, formulas = [], [], [], []
    n_bad = 0
    for position, cif in enumerate(frame["cif"]):
        structure = parse_cif(cif)
        if structure is None or not structure.is_ordered:
            n_bad += 1
            continue
        arity = len(structure.composition.elements)
        if arity not in arities or (max_atoms is not None and len(structure) > max_atoms):
            continue
        keep.append(position)
        n_el.append(arity)
        n_sites.append(len(structure))
        formulas.append(structure.composition.reduced_formula)
    if n_bad:
        logger.warning("skipped %d unreadable or disordered structures", n_bad)
    out = frame.iloc[keep].copy()
    out["n_elements"] = n_el
    out["nsites"] = n_sites
    out["formula"] = formulas
    return out


def pick_eval_rows(rows: pd.DataFrame, arity: int, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``arity`` elements with distinct reduced formulas, drawn with ``seed``.

    Fewer are returned if fewer distinct formulas exist.
    """
    pool = rows[rows["n_elements"] == arity]
    order = np.random.default_rng(seed).permutation(len(pool))
    shuffled = pool.iloc[order].drop_duplicates("formula")
    return shuffled.head(n)


def nested_subsets(n: int, fractions: Sequence[float], seed: int) -> dict[float, list[int]]:
    """Seeded, nested index subsets of ``range(n)``: each is a prefix of one permutation.

    A fraction ``f`` gets ``max(1, round(f * n))`` indices, so a smaller fraction's
    subset lies inside every larger one's.

    Raises
    ------
    ValueError
        If a fraction is not in (0, 1] or ``n`` is zero.
    """
    if n < 1:
        raise ValueError("no crystals to draw fine-tuning subsets from")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"fractions must lie in (0, 1], got {bad}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return {float(f): sorted(order[: max(1, int(round(f * n)))]) for f in fractions}


def row_ids(rows: pd.DataFrame) -> list[str]:
    """``material_id`` of each row, or ``row-<index in the source table>`` without one."""
    if "material_id" in rows.columns:
        return [str(m) for m in rows["material_id"]]
    return [f"row-{i}" for i in rows.index]


def write_rows(rows: pd.DataFrame, path: Path) -> Path:
    """Write rows (in their order) as a CSV that ``run_csp_benchmark`` reads whole."""
    pd.DataFrame({"material_id": row_ids(rows), "cif": list(rows["cif"])}).to_csv(
        path, index=False)
    return path

"""Honest defaults of the CSP benchmark: whose templates, how large a cell.

A benchmark of prototype substitution is only as honest as its reference set:
templates drawn from another data set (MP-20's for MPTS-52 targets) or
containing the targets themselves (a row substituted into itself matches at
``k = 1``) make the figures meaningless. So the templates default to the
training split beside the evaluated table (``mpts_52/val.csv.gz`` →
``mpts_52/train_partial.csv.gz``), any template whose ``material_id`` is
a row of the evaluated table is refused, and the largest cell a generator
may return defaults to the largest cell of the evaluated table (20 atoms for
MP-20, 52 for MPTS-52), read from its ``nsites`` column or from each CIF's
formula, so that no target is out of reach by default.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition

from xtalloop.errors import ConfigError, DataError
from xtalloop.generators.reference_set import (
    _cell_composition_from_cif,
    _parse_cif,
    read_structure_csv,
)

logger = logging.getLogger(__name__)

#: Names of a training split looked for beside the evaluated table, in this order.
TRAIN_SPLIT_NAMES: tuple[str, ...] = ("train_partial.csv.gz", "train_partial.csv")


def default_reference_csv(data_csv: str | os.PathLike) -> Path:
    """The training split in the folder of ``data_csv`` (the templates it may use).

    Raises
    ------
    ConfigError
        If the folder holds none of :data:`TRAIN_SPLIT_NAMES`.
    """
    folder = Path(data_csv).parent
    for name in TRAIN_SPLIT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"no training split ({TRAIN_SPLIT_NAMES[0]}) beside {data_csv} to take "
                      "templates from: pass --reference-csv")


#: Shipped Wyckoff checkpoints trained on the train split of a data set, by its folder name.
WYCKOFF_CHECKPOINTS: dict[str, str] = {"mp_20": "wyckoff-mp20.pt", "mpts_52": "wyckoff-mpts52.pt"}


def default_wyckoff_checkpoint(data_csv: str | os.PathLike) -> Path:
    """The shipped Wyckoff checkpoint for benchmarking on ``data_csv``.

    The one trained on the training split of the evaluated data set (the
    same rule as the templates): a table in a folder named ``mp_20`` gets
    ``wyckoff-mp20.pt``, ``mpts_52`` gets ``wyckoff-mpts52.pt``, any other the
    general ``wyckoff.pt`` (trained on both). The path is returned whether or
    not the file exists; loading it reports a missing one.
    """
    from xtalloop.generators.wyckoff.checkpoint import DEFAULT_CHECKPOINT, SHIPPED

    name = WYCKOFF_CHECKPOINTS.get(Path(os.path.abspath(data_csv)).parent.name)
    return SHIPPED / name if name else DEFAULT_CHECKPOINT


def cell_sizes(table: pd.DataFrame) -> list[int | None]:
    """Sites in each row's cell: the ``nsites`` column, else the CIF's formula, else the CIF.

    None for a row whose CIF cannot be read. Reading formulas rather than
    structures keeps this to a fraction of a second for the shared tables.
    """
    nsites = table["nsites"].tolist() if "nsites" in table.columns else [None] * len(table)
    sizes: list[int | None] = []
    for n, cif in zip(nsites, table["cif"], strict=True):
        if n is not None and not (isinstance(n, float) and math.isnan(n)):
            sizes.append(int(n))
            continue
        cell = _cell_composition_from_cif(cif) if isinstance(cif, str) else None
        if cell is None and isinstance(cif, str):
            try:
                cell = _parse_cif(cif).composition
            except Exception:
                cell = None
        sizes.append(int(round(cell.num_atoms)) if cell is not None else None)
    return sizes


def largest_cell(table: pd.DataFrame, source: str | os.PathLike) -> int:
    """The largest cell (sites) of a structure table: the benchmark's default ``max_atoms``.

    Raises
    ------
    DataError
        If no row has a readable cell (no usable target).
    """
    sizes = [s for s in cell_sizes(table) if s]
    if not sizes:
        raise DataError(f"no usable target in {source}: no row has a readable CIF")
    return max(sizes)


@dataclass(frozen=True)
class Templates:
    """The reference set prototype substitution is benchmarked with.

    Attributes
    ----------
    source
        The table named with ``--reference-csv`` or found beside the data.
    path
        The table the generator reads: ``source`` itself, or a copy without
        the refused and unreadable rows.
    n_rows
        Rows of ``source``.
    n_refused
        Rows refused because their ``material_id`` is a row of the evaluated table.
    n_unreadable
        Rows skipped because their CIF or formula cannot be read.
    """

    source: Path
    path: Path
    n_rows: int
    n_refused: int
    n_unreadable: int

    @property
    def n_used(self) -> int:
        """Templates left for the generator."""
        return self.n_rows - self.n_refused - self.n_unreadable


def prepare_templates(
    reference_csv: str | os.PathLike,
    data_csv: str | os.PathLike,
    data: pd.DataFrame,
    out_dir: str | os.PathLike,
) -> Templates:
    """Check a reference set against the evaluated table; drop targets and unreadable rows.

    Parameters
    ----------
    reference_csv
        The templates' table.
    data_csv, data
        The evaluated table, its path and its rows.
    out_dir
        Where a filtered copy (``templates.csv.gz``) is written when rows are dropped.

    Raises
    ------
    DataError
        If the reference table is missing or unreadable, is the evaluated table,
        holds every one of its ``material_id`` values ("templates include the
        targets"), or has no readable template left.
    """
    source = Path(reference_csv)
    if not source.is_file():
        raise DataError(f"reference table of prototype_substitution not found: {source} "
                        "(pass --reference-csv)")
    if source.resolve() == Path(data_csv).resolve():
        raise DataError(f"templates include the targets: the reference table is the "
                        f"benchmark table {data_csv}")
    table = read_structure_csv(source)
    refused = pd.Series(False, index=table.index)
    if "material_id" in table.columns and "material_id" in data.columns:
        target_ids = set(data["material_id"].astype(str))
        template_ids = table["material_id"].astype(str)
        refused = template_ids.isin(target_ids)
        if target_ids <= set(template_ids):
            raise DataError(f"templates include the targets: every material_id of {data_csv} "
                            f"is in {source}")
    readable = pd.Series([_usable(row) for row in table.itertuples(index=False)],
                         index=table.index)
    keep = readable & ~refused
    n_unreadable = int((~readable & ~refused).sum())
    if not keep.any() or not _any_parses(table["cif"][keep]):
        raise DataError(f"no usable template in {source}: none of its {len(table)} rows "
                        "that is not a target has a readable CIF")
    path = source
    if not keep.all():
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "templates.csv.gz"
        table[keep].to_csv(path, index=False,
                           compression={"method": "gzip", "compresslevel": 1, "mtime": 0})
    if n_unreadable:
        logger.warning("%s: skipped %d of %d rows with an unreadable CIF or formula",
                       source, n_unreadable, len(table))
    return Templates(source, path, len(table), int(refused.sum()), n_unreadable)


def _usable(row) -> bool:
    """Whether a reference row looks like a template: a formula and a CIF with a cell and sites.

    A cheap textual check (parsing every CIF of a 16,000-row table takes over a
    minute); a CIF that passes it and still fails to parse is skipped by the generator.
    """
    cif = getattr(row, "cif", None)
    if not isinstance(cif, str) or "_cell_length_a" not in cif or "_atom_site_" not in cif:
        return False
    formula = getattr(row, "reduced_formula", None)
    if isinstance(formula, str):
        try:
            Composition(formula)
            return True
        except Exception:
            pass
    return _cell_composition_from_cif(cif) is not None


def _any_parses(cifs: pd.Series) -> bool:
    """Whether any CIF parses (tried in order, so a healthy table costs one parse)."""
    for cif in cifs:
        try:
            if len(_parse_cif(cif)):
                return True
        except Exception:
            continue
    return False

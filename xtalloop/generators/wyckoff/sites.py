"""Crystals as Wyckoff descriptions: space group, lattice, and atoms on Wyckoff positions.

A symmetric crystal is fully described by its space group, its conventional
lattice parameters and, for each symmetry-distinct atom, the Wyckoff position
it occupies and that position's free coordinates (none for a special position
such as ``4a (0,0,0)``, up to three for the general one). This is the language
the Wyckoff generator learns in: the number of atoms follows from the
multiplicities, and every sample has its space group by construction.

Positions follow PyXtal's tables (``Group(sg)[index]``; index 0 is the general
position, the last one the most special), so a description round-trips through
:func:`describe` and :func:`build`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Lattice, Structure

logger = logging.getLogger(__name__)

#: Tolerance (Å) with which a stored crystal's symmetry is found.
SYMPREC = 0.05


@dataclass
class WyckoffSite:
    """One symmetry-distinct atom: element (atomic number), Wyckoff index, free coordinates."""

    z: int
    wp: int
    free: list[float] = field(default_factory=list)


@dataclass
class WyckoffCrystal:
    """A crystal as space group, conventional lattice (Å, degrees) and Wyckoff sites."""

    space_group: int
    lattice: list[float]
    sites: list[WyckoffSite]
    material_id: str = ""

    @property
    def n_atoms(self) -> int:
        """Atoms in the conventional cell."""
        g = group(self.space_group)
        return sum(g[s.wp].multiplicity for s in self.sites)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WyckoffCrystal:
        sites = [WyckoffSite(**s) for s in data["sites"]]
        return cls(data["space_group"], list(data["lattice"]), sites, data.get("material_id", ""))


@lru_cache(maxsize=256)
def group(space_group: int):
    """PyXtal's ``Group`` (cached: building one takes milliseconds)."""
    from pyxtal.symmetry import Group

    return Group(space_group)


def centering(space_group: int) -> int:
    """Lattice points per conventional cell (1 for P, 2 for I/C/A, 3 for R, 4 for F)."""
    from xtalloop.generators.wyckoff.tables import wyckoff_table

    return int(wyckoff_table().centering[space_group])


def describe(structure: Structure, material_id: str = "") -> WyckoffCrystal | None:
    """The Wyckoff description of ``structure``, or ``None`` if PyXtal cannot find one."""
    from pyxtal import pyxtal

    crystal = pyxtal()
    try:
        crystal.from_seed(structure, tol=SYMPREC)
    except Exception:  # PyXtal raises many kinds of errors on odd cells
        return None
    sites = []
    for site in crystal.atom_sites:
        wp = site.wp
        free = [float(v) for v in wp.get_free_xyzs(site.position)]
        sites.append(WyckoffSite(Element(site.specie).Z, int(wp.index), free))
    lattice = [float(v) for v in crystal.lattice.get_para(degree=True)]
    return WyckoffCrystal(int(crystal.group.number), lattice, sites, material_id)


def build(crystal: WyckoffCrystal, merge_tol: float = 0.05) -> Structure | None:
    """The primitive structure of a Wyckoff description (``None`` if sites coincide)."""
    g = group(crystal.space_group)
    lattice = Lattice.from_parameters(*crystal.lattice)
    if not np.all(np.isfinite(lattice.matrix)) or abs(lattice.volume) < 1e-3:
        return None  # angles that close no cell (a sampled triclinic lattice can have them)
    species, coords = [], []
    for site in crystal.sites:
        wp = g[site.wp]
        position = wp.get_position_from_free_xyzs(np.asarray(site.free, float)) \
            if site.free else wp.get_position_from_free_xyzs([])
        orbit = np.mod(wp.apply_ops(position), 1.0)
        if len(orbit) != wp.multiplicity:
            return None
        species += [Element.from_Z(site.z).symbol] * len(orbit)
        coords.append(orbit)
    coords = np.concatenate(coords)
    structure = Structure(lattice, species, coords)
    if _has_overlap(structure, merge_tol):
        return None
    try:
        return structure.get_primitive_structure(tolerance=0.05)
    except Exception:
        return structure


def _has_overlap(structure: Structure, tol: float) -> bool:
    distances = structure.distance_matrix
    np.fill_diagonal(distances, np.inf)
    return bool(len(structure) > 1 and distances.min() < tol * max(1.0, structure.lattice.a))


def _describe_cif(args: tuple[str, str]) -> dict | None:
    import warnings

    cif, material_id = args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = Structure.from_str(cif, fmt="cif")
        except Exception:
            return None
        crystal = describe(structure, material_id)
    return crystal.to_dict() if crystal is not None else None


def describe_table(path: str | os.PathLike, *, exclude_ids: set[str] | frozenset = frozenset(),
                   workers: int = 1, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> list[WyckoffCrystal]:
    """Wyckoff descriptions of every readable row of a structure table (a ``cif`` column).

    PyXtal takes about 50 ms per crystal, so the descriptions of a table are
    cached under ``cache_dir`` (default ``$XTALLOOP_CACHE/wyckoff``) keyed by the
    file's content; ``exclude_ids`` (``material_id`` values) are dropped after.

    Raises
    ------
    ConfigError
        The table cannot be read or has no ``cif`` column.
    """
    import pandas as pd

    from xtalloop.preflight import check_structure_table

    path = Path(path)
    check_structure_table(str(path))
    table = pd.read_csv(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cache = Path(cache_dir or Path(os.environ.get("XTALLOOP_CACHE",
                                                  Path.home() / ".cache" / "xtalloop")) / "wyckoff")
    cached = cache / f"{path.name.split('.')[0]}-{digest}-{SYMPREC}.json.gz"
    if cached.exists():
        rows = json.loads(gzip.decompress(cached.read_bytes()))
    else:
        ids = table["material_id"].astype(str).tolist() if "material_id" in table else \
            [str(i) for i in range(len(table))]
        jobs = list(zip(table["cif"].tolist(), ids, strict=True))
        rows = []
        chunk = max(1, len(jobs) // 50)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for i, row in enumerate(pool.map(_describe_cif, jobs, chunksize=chunk)):
                    rows.append(row)
                    _report(progress, i, len(jobs), path)
        else:
            for i, job in enumerate(jobs):
                rows.append(_describe_cif(job))
                _report(progress, i, len(jobs), path)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(json.dumps(rows).encode()))
        tmp.replace(cached)
    crystals = [WyckoffCrystal.from_dict(r) for r in rows if r is not None]
    dropped = sum(r is None for r in rows)
    if dropped:
        logger.info("%s: %d rows without a Wyckoff description skipped", path, dropped)
    return [c for c in crystals if c.material_id not in exclude_ids]


def _report(progress: bool, i: int, total: int, path: Path) -> None:
    if progress and (i + 1) % 1000 == 0 or progress and i + 1 == total:
        print(f"  described {i + 1}/{total} crystals of {path.name}", flush=True)

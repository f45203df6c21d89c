"""Crystals as tensors: atom types, fractional coordinates, lattices, atom counts."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from xtalloop.digest import file_sha256

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1


@dataclass
class CrystalBatch:
    """A batch of crystals, atoms concatenated.

    Parameters
    ----------
    atom_types
        Atomic numbers, shape ``(N,)``.
    frac_coords
        Fractional coordinates in [0, 1), shape ``(N, 3)``.
    lattices
        Lattice matrices, rows are the lattice vectors (Å), shape ``(B, 3, 3)``.
    num_atoms
        Atoms per crystal, shape ``(B,)``.
    """

    atom_types: torch.Tensor
    frac_coords: torch.Tensor
    lattices: torch.Tensor
    num_atoms: torch.Tensor

    @property
    def batch(self) -> torch.Tensor:
        """Crystal index of every atom, shape ``(N,)``."""
        return torch.repeat_interleave(
            torch.arange(len(self.num_atoms), device=self.num_atoms.device), self.num_atoms
        )

    def to(self, device: torch.device | str) -> CrystalBatch:
        """The same batch on ``device``."""
        return CrystalBatch(
            self.atom_types.to(device),
            self.frac_coords.to(device),
            self.lattices.to(device),
            self.num_atoms.to(device),
        )


@dataclass
class CrystalDataset:
    """A set of crystals stored as concatenated tensors.

    Parameters
    ----------
    atom_types, frac_coords, lattices, num_atoms
        As in :class:`CrystalBatch`, for the whole set.
    formula_units
        Formula units per cell of each crystal, shape ``(B,)``.
    atoms_per_formula_unit
        Atoms in the reduced formula of each crystal, shape ``(B,)``.
    data_hash
        sha256 of the sorted source texts (CIFs); identifies the training set.
    """

    atom_types: torch.Tensor
    frac_coords: torch.Tensor
    lattices: torch.Tensor
    num_atoms: torch.Tensor
    formula_units: torch.Tensor
    atoms_per_formula_unit: torch.Tensor
    data_hash: str
    _offsets: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._offsets = torch.cumsum(self.num_atoms, 0) - self.num_atoms

    def __len__(self) -> int:
        return len(self.num_atoms)

    @property
    def max_atoms(self) -> int:
        """Largest cell in the set."""
        return int(self.num_atoms.max()) if len(self) else 0

    def formula_unit_counts(self) -> dict[int, dict[int, int]]:
        """How often each number of formula units occurs, per atoms-per-formula-unit."""
        counts: dict[int, dict[int, int]] = {}
        for apf, z in zip(
            self.atoms_per_formula_unit.tolist(), self.formula_units.tolist(), strict=True
        ):
            per = counts.setdefault(int(apf), {})
            per[int(z)] = per.get(int(z), 0) + 1
        return counts

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> CrystalBatch:
        """Gather crystals ``indices`` into one batch."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        n = self.num_atoms[idx]
        starts = self._offsets[idx]
        # atom index = start of its crystal + position within the crystal
        crystal = torch.repeat_interleave(torch.arange(len(idx)), n)
        within = torch.arange(int(n.sum())) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        atoms = starts[crystal] + within
        return CrystalBatch(
            self.atom_types[atoms], self.frac_coords[atoms], self.lattices[idx], n
        )

    def subset(self, indices: Sequence[int] | torch.Tensor) -> CrystalDataset:
        """A new dataset of crystals ``indices`` (its hash derives from this one's)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        b = self.get_batch(idx)
        tag = hashlib.sha256(f"{self.data_hash}:{idx.tolist()}".encode()).hexdigest()
        return CrystalDataset(
            b.atom_types,
            b.frac_coords,
            b.lattices,
            b.num_atoms,
            self.formula_units[idx],
            self.atoms_per_formula_unit[idx],
            tag,
        )

    def save(self, path: str | Path) -> None:
        """Write the tensors and hash to a ``.pt`` file."""
        torch.save(
            {
                "format": _CACHE_FORMAT,
                "atom_types": self.atom_types,
                "frac_coords": self.frac_coords,
                "lattices": self.lattices,
                "num_atoms": self.num_atoms,
                "formula_units": self.formula_units,
                "atoms_per_formula_unit": self.atoms_per_formula_unit,
                "data_hash": self.data_hash,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> CrystalDataset:
        """Read a dataset written by :meth:`save`."""
        d = torch.load(path, map_location="cpu", weights_only=True)
        if d.get("format") != _CACHE_FORMAT:
            raise ValueError(f"{path} is not a dataset cache of format {_CACHE_FORMAT}")
        return cls(
            d["atom_types"],
            d["frac_coords"],
            d["lattices"],
            d["num_atoms"],
            d["formula_units"],
            d["atoms_per_formula_unit"],
            d["data_hash"],
        )


def content_hash(texts: Iterable[str]) -> str:
    """sha256 of the sorted texts, independent of their order."""
    h = hashlib.sha256()
    for text in sorted(texts):
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()


def canonical_cell(structure: Structure) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Niggli-reduced lattice in the standard orientation, fractional coords, atomic numbers.

    The lattice is rebuilt from its six parameters (a along x, b in the xy plane),
    so equal crystals give equal matrices whatever their input orientation.
    """
    reduced = structure.get_reduced_structure(reduction_algo="niggli")
    lattice = Lattice.from_parameters(*reduced.lattice.parameters)
    frac = np.mod(reduced.frac_coords, 1.0)
    z = [site.specie.Z for site in reduced]
    return lattice.matrix, frac, z


def structures_to_dataset(
    structures: Sequence[Structure], texts: Sequence[str] | None = None
) -> CrystalDataset:
    """Turn ordered structures into a :class:`CrystalDataset`.

    Parameters
    ----------
    structures
        Ordered crystals (no partial occupancies).
    texts
        Source texts to hash (e.g. the CIFs they were read from); default: their CIFs.
    """
    types, coords, lattices, counts, fus, apfs = [], [], [], [], [], []
    for s in structures:
        if not s.is_ordered:
            raise ValueError(f"disordered structure {s.formula} cannot be used")
        matrix, frac, z = canonical_cell(s)
        types.extend(z)
        coords.append(frac)
        lattices.append(matrix)
        counts.append(len(z))
        comp = s.composition
        apf = int(round(comp.reduced_composition.num_atoms))
        apfs.append(apf)
        fus.append(int(round(comp.num_atoms / apf)))
    if texts is None:
        texts = [s.to(fmt="cif") for s in structures]
    return CrystalDataset(
        atom_types=torch.tensor(types, dtype=torch.long),
        frac_coords=torch.tensor(np.concatenate(coords) if coords else np.zeros((0, 3)),
                                 dtype=torch.float32),
        lattices=torch.tensor(np.array(lattices).reshape(-1, 3, 3), dtype=torch.float32),
        num_atoms=torch.tensor(counts, dtype=torch.long),
        formula_units=torch.tensor(fus, dtype=torch.long),
        atoms_per_formula_unit=torch.tensor(apfs, dtype=torch.long),
        data_hash=content_hash(texts),
    )


def load_csv(
    path: str | Path,
    max_atoms: int | None = None,
    n_elements: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> CrystalDataset:
    """Read a CSV with a ``cif`` column into a :class:`CrystalDataset`.

    Parameters
    ----------
    path
        CSV (optionally gzipped), e.g. MP-20's ``train_partial.csv.gz``.
    max_atoms
        Drop cells with more atoms than this.
    n_elements
        Keep only these arities (e.g. ``(2, 3)`` for binaries and ternaries).
    cache_dir
        Directory for a ``.pt`` cache of the parsed set, keyed by file content and filters.
    limit
        Keep at most the first ``limit`` rows that pass the filters.
    """
    import pandas as pd

    path = Path(path)
    arity = tuple(sorted(n_elements)) if n_elements else None
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256(
            f"{file_sha256(path)}|{max_atoms}|{arity}|{limit}|{_CACHE_FORMAT}".encode()
        ).hexdigest()[:16]
        cache = Path(cache_dir) / f"{path.name.split('.')[0]}-{key}.pt"
        if cache.exists():
            logger.info("reading parsed dataset from %s", cache)
            return CrystalDataset.load(cache)

    frame = pd.read_csv(path)
    if frame.columns[0].startswith("Unnamed"):
        frame = frame.drop(columns=frame.columns[0])
    if "cif" not in frame.columns:
        raise ValueError(f"{path} has no 'cif' column")
    cifs: list[str] = []
    structures: list[Structure] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in frame.itertuples(index=False):
            if max_atoms is not None and "nsites" in frame.columns and row.nsites > max_atoms:
                continue
            if arity is not None and "n_elements" in frame.columns and row.n_elements not in arity:
                continue
            s = Structure.from_str(row.cif, fmt="cif")
            if max_atoms is not None and len(s) > max_atoms:
                continue
            if arity is not None and len(s.composition.elements) not in arity:
                continue
            if not s.is_ordered:
                continue
            cifs.append(row.cif)
            structures.append(s)
            if limit is not None and len(structures) >= limit:
                break
    dataset = structures_to_dataset(structures, texts=cifs)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        dataset.save(cache)
    return dataset

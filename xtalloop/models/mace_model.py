"""MACE models evaluated on many structures per forward pass.

:class:`MaceModel` builds one MACE graph (mace's neighbour lists, the input
tensors of a collated batch) for runs of structures of at most
``max_atoms_per_batch`` atoms and runs one forward pass per batch, so a batched
relaxation costs one model call per optimiser step instead of one per structure. Several model files
form an ensemble (a committee): predictions are the members' mean, and the
spread of their energies is reported as :attr:`Prediction.energy_std`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from xtalloop.errors import XtalloopError
from xtalloop.models.energy_model import EnergyModel, Prediction

if TYPE_CHECKING:
    import torch
    from ase import Atoms


class MaceModel(EnergyModel):
    """One MACE model file, or an ensemble of several, evaluated in batches.

    Parameters
    ----------
    paths
        MACE model files in xtalloop's native format (``*.mace.json``
        descriptions plus weights-only state dicts, see
        :mod:`xtalloop.models.mace_format`); a pickled ``.model`` is refused,
        since unpickling it can run code. More than one makes an ensemble;
        its members must share the cutoff radius and the element table.
    device
        Torch device (``"cpu"`` or ``"cuda"``).
    max_atoms_per_batch
        Most atoms in one forward pass; a larger structure goes in a pass alone.
        ``None`` picks what measured fastest in ``benchmarks/batch_relax_speed.py``
        for the device: 256 on CPU (1.3x faster than 4000; 128 is within
        noise of it) and 4096 on a GPU (3x faster than 256 on an H100).
    dtype
        ``"float64"`` (as the model was trained) or ``"float32"``: about twice as
        fast on CPU, energies within 0.001 meV/atom in the speed benchmark.

    Raises
    ------
    XtalloopError
        If no file is given, a file is missing, a pickle or not a MACE model, the
        members of an ensemble disagree on cutoff or elements, or a model has
        several heads and none named ``default``.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        device: str = "cpu",
        max_atoms_per_batch: int | None = None,
        dtype: str = "float64",
    ) -> None:
        from mace.tools.utils import AtomicNumberTable

        self._paths = [Path(p).expanduser() for p in paths]
        if not self._paths:
            raise XtalloopError("no MACE model files given")
        if dtype not in ("float64", "float32"):
            raise XtalloopError(f"MACE dtype must be float64 or float32, not {dtype!r}")
        self.dtype = dtype
        self._models = [_load(path, device, dtype) for path in self._paths]
        self._r_max, zs = _shared_graph_settings(self._models, self._paths)
        self._z_table = AtomicNumberTable(list(zs))
        self._z_index = np.full(max(zs) + 1, -1)  # atomic number -> one-hot column
        self._z_index[list(zs)] = np.arange(len(zs))
        self._heads = list(getattr(self._models[0], "heads", ["Default"]))
        self._head = _default_head(self._heads, self._paths[0])
        self.device = device
        if max_atoms_per_batch is None:
            max_atoms_per_batch = 256 if str(device).startswith("cpu") else 4096
        self.max_atoms_per_batch = max_atoms_per_batch
        self.name = "mace" if len(self._paths) == 1 else "mace-ensemble"
        self.version = ", ".join(f"{p.name} sha256:{_digest(p)}" for p in self._paths)

    @property
    def elements(self) -> set[str]:
        """The chemical symbols the model has parameters for."""
        return {chemical_symbols[int(z)] for z in self._z_table.zs}

    @property
    def paths(self) -> list[Path]:
        """The model files (one per ensemble member)."""
        return list(self._paths)

    def predict(self, atoms: list[Atoms]) -> list[Prediction]:
        """Energies, forces and stresses of all structures, in order.

        With an ensemble, each quantity is the mean over the members and
        ``energy_std`` is the population standard deviation (as in mace's
        ``energy_var``) of their total energies.

        Raises
        ------
        XtalloopError
            If a structure holds an element the model was not trained on.
        """
        self._check_elements(atoms)
        out: list[Prediction] = []
        for chunk in _chunks(atoms, self.max_atoms_per_batch):
            out += self._predict_chunk(chunk)
        return out

    def _check_elements(self, atoms: list[Atoms]) -> None:
        present = {int(z) for a in atoms for z in a.numbers}
        missing = sorted(present - set(self._z_table.zs))
        if missing:
            names = ", ".join(chemical_symbols[z] for z in missing)
            raise XtalloopError(
                f"MACE model {self._paths[0]} has no parameters for element(s) {names}"
            )

    def _predict_chunk(self, atoms: list[Atoms]) -> list[Prediction]:
        batch = self._batch(atoms)
        energies, forces, stresses = zip(*(_evaluate(m, batch) for m in self._models))
        energy = np.mean(energies, axis=0)
        energy_std = np.std(energies, axis=0) if len(self._models) > 1 else None
        force = np.mean(forces, axis=0)
        stress = np.mean(stresses, axis=0)
        ptr = np.concatenate([[0], np.cumsum([len(a) for a in atoms])])
        return [
            Prediction(
                energy=float(energy[i]),
                forces=force[ptr[i] : ptr[i + 1]],
                stress=full_3x3_to_voigt_6_stress(stress[i]),
                energy_std=None if energy_std is None else float(energy_std[i]),
            )
            for i in range(len(atoms))
        ]

    def _batch(self, atoms: list[Atoms]) -> dict[str, torch.Tensor]:
        """The input of a MACE forward pass for all of ``atoms`` as one graph.

        The same tensors as collating mace's ``AtomicData.from_config`` of each
        structure (``tests/test_mace_model.py`` checks the predictions), built
        directly: that route creates some thirty small tensors per structure
        and took 13 % of a batched relaxation.
        """
        import torch
        from mace.data.neighborhood import get_neighborhood

        dtype = getattr(torch, self.dtype)
        positions, cells, senders, receivers, unit_shifts = [], [], [], [], []
        offset = 0
        for a in atoms:
            edge_index, _, shifts, cell = get_neighborhood(
                positions=a.positions, cutoff=self._r_max, pbc=tuple(bool(p) for p in a.pbc),
                cell=np.array(a.cell),
            )
            positions.append(a.positions)
            cells.append(cell)
            senders.append(edge_index[0] + offset)
            receivers.append(edge_index[1] + offset)
            unit_shifts.append(shifts)
            offset += len(a)
        numbers = np.concatenate([a.numbers for a in atoms])
        index = self._z_index[numbers]
        node_attrs = np.zeros((len(numbers), len(self._z_table.zs)))
        node_attrs[np.arange(len(numbers)), index] = 1.0
        cell = np.concatenate(cells)
        unit_shift = np.concatenate(unit_shifts).astype(float)
        edge_graph = np.repeat(np.arange(len(atoms)), [len(s) for s in senders])
        # shifts in Å: unit shifts times the cell of each edge's structure
        shift = np.einsum("ei,eij->ej", unit_shift, cell.reshape(-1, 3, 3)[edge_graph])
        sizes = [len(a) for a in atoms]

        def tensor(value: np.ndarray, kind: torch.dtype = dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(value), dtype=kind,
                                   device=self.device)

        return {
            "positions": tensor(np.concatenate(positions)),
            "node_attrs": tensor(node_attrs),
            "edge_index": tensor(np.stack([np.concatenate(senders),
                                           np.concatenate(receivers)]), torch.long),
            "shifts": tensor(shift),
            "unit_shifts": tensor(unit_shift),
            "cell": tensor(cell),
            "batch": tensor(np.repeat(np.arange(len(atoms)), sizes), torch.long),
            "ptr": tensor(np.concatenate([[0], np.cumsum(sizes)]), torch.long),
            "head": tensor(np.full(len(atoms), self._heads.index(self._head)), torch.long),
        }


def _load(path: Path, device: str, dtype: str = "float64") -> torch.nn.Module:
    """Read one native MACE model (``*.mace.json``) as a ``dtype`` model in evaluation mode.

    The module is rebuilt in code and its weights read weights-only
    (:mod:`xtalloop.models.mace_format`); a pickled ``.model`` is refused in
    one line, before a byte of it is read.
    """
    import torch

    from xtalloop.models.mace_format import PICKLE_SUFFIXES, is_native, load_native, pickle_refused

    if not is_native(path):
        if path.suffix in PICKLE_SUFFIXES:
            raise pickle_refused(path)
        raise XtalloopError(f"{path} is not a MACE model file (expected *.mace.json)")
    model = load_native(path, device)
    if not (
        isinstance(model, torch.nn.Module)
        and hasattr(model, "r_max")
        and hasattr(model, "atomic_numbers")
    ):
        raise XtalloopError(f"{path} is not a MACE model file ({type(model).__name__})")
    model = (model.double() if dtype == "float64" else model.float()).eval()
    for param in model.parameters():
        param.requires_grad = False  # forces and stress need gradients wrt inputs only
    return model


def _shared_graph_settings(
    models: list[torch.nn.Module], paths: list[Path]
) -> tuple[float, tuple[int, ...]]:
    """Cutoff radius and atomic numbers, which every member must share."""
    settings = [
        (float(m.r_max), tuple(int(z) for z in m.atomic_numbers)) for m in models
    ]
    for path, setting in zip(paths[1:], settings[1:]):
        if setting != settings[0]:
            raise XtalloopError(
                f"MACE ensemble members {paths[0].name} and {path.name} differ in "
                "cutoff radius or elements"
            )
    return settings[0]


def _default_head(heads: list[str], path: Path) -> str:
    """The only head, or the one named ``default`` (as mace's ASE calculator picks)."""
    if len(heads) == 1:
        return heads[0]
    for head in heads:
        if head.lower() == "default":
            return head
    raise XtalloopError(
        f"MACE model {path} has heads {', '.join(heads)} and none is named 'default'"
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _chunks(atoms: list[Atoms], max_atoms: int) -> Iterator[list[Atoms]]:
    """Consecutive runs of structures holding at most ``max_atoms`` atoms together."""
    chunk: list[Atoms] = []
    size = 0
    for a in atoms:
        if chunk and size + len(a) > max_atoms:
            yield chunk
            chunk, size = [], 0
        chunk.append(a)
        size += len(a)
    if chunk:
        yield chunk


def _evaluate(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy per graph (eV), forces per atom (eV/Å) and stress per graph (eV/Å³, 3×3)."""
    out = model(dict(batch), compute_stress=True, training=False)
    return tuple(out[key].detach().cpu().numpy() for key in ("energy", "forces", "stress"))

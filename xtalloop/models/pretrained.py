"""Pretrained potentials whose weights ship inside their PyPI wheels: SevenNet and DIEP.

Like CHGNet's, these weights are installed with the package, so loading them
needs no network. Both run a batch of structures as one graph (PyTorch
Geometric's ``Batch``) per forward pass, so :meth:`predict` costs one model
call for a whole list, as the batched relaxation wants.

Names (the ``model`` of the prefilter, of ``dft.mlip`` and of
``benchmark csp --relax``):

``sevennet``
    SevenNet ``7net-l3i5`` (MIT; PBE, MPtrj), the larger of the two it ships.
``sevennet:7net-0``, ``sevennet:7net-l3i5``
    A named SevenNet model. ``7net-mf-0`` ships only with sevenn 0.11 or later,
    which needs e3nn 0.5 while mace-torch pins e3nn 0.4.4, so it is refused.
``diep``
    DIEP ``diep_fold1`` (BSD-3; r2SCAN, MatPES).

Neither checkpoint is unpickled with ``weights_only=False``: SevenNet's is
read with torch's weights-only loader allowing only numpy's array
reconstruction (its config holds arrays), DIEP's two files hold tensors and
plain values only, and the DIEP module is built in code from its JSON-able
arguments.
"""

from __future__ import annotations

import importlib.util
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from xtalloop.errors import XtalloopError
from xtalloop.models.energy_model import EnergyModel, Prediction

if TYPE_CHECKING:
    from ase import Atoms

#: SevenNet models that the pinned sevenn wheel ships, by the name after ``sevennet:``.
SEVENNET_MODELS = ("7net-l3i5", "7net-0")
SEVENNET_DEFAULT = "7net-l3i5"
DIEP_MODEL = "diep_fold1"
_UNAVAILABLE = {"7net-mf-0": "it ships only with sevenn>=0.11, which needs e3nn>=0.5 while "
                             "mace-torch pins e3nn==0.4.4"}
#: The package each pretrained family needs.
PACKAGES = {"sevennet": "sevenn", "diep": "diep"}
INSTALL_HINT = "pip install -e '.[potentials]' (make install does)"
#: The names :func:`canonical_name` accepts, for error messages.
NAMES = ("chgnet", "sevennet", *(f"sevennet:{m}" for m in SEVENNET_MODELS), "diep")


def canonical_name(spec: str) -> str | None:
    """``spec`` as the canonical pretrained name, or None if it names no pretrained model.

    ``sevennet`` becomes ``sevennet:7net-l3i5``; case and spaces are ignored.
    A spec starting with a known family (``sevennet:``, ``diep``) but naming
    something unknown raises, as does one whose package is not installed.

    Raises
    ------
    XtalloopError
        One line naming the fix.
    """
    key = spec.strip().lower()
    family, sep, variant = key.partition(":")
    if family == "chgnet" and not sep:
        return "chgnet"
    if family not in PACKAGES:
        return None
    if family == "diep":
        if sep:
            raise XtalloopError(f"unknown model {spec!r}: DIEP ships one model, use 'diep'")
        name = "diep"
    else:
        variant = variant or SEVENNET_DEFAULT
        if variant.startswith("sevennet-"):
            variant = "7net-" + variant.removeprefix("sevennet-")
        if variant in _UNAVAILABLE:
            raise XtalloopError(f"model {spec!r} is not available: {_UNAVAILABLE[variant]}; "
                                f"use one of {', '.join(SEVENNET_MODELS)}")
        if variant not in SEVENNET_MODELS:
            raise XtalloopError(f"unknown SevenNet model {spec!r}: use 'sevennet' (= "
                                f"sevennet:{SEVENNET_DEFAULT}) or "
                                + ", ".join(f"'sevennet:{m}'" for m in SEVENNET_MODELS))
        name = f"sevennet:{variant}"
    package = PACKAGES[family]
    if importlib.util.find_spec(package) is None:
        raise XtalloopError(f"model {spec!r} needs the {package!r} package, which is not "
                            f"installed: {INSTALL_HINT}")
    return name


def pretrained_version(name: str) -> str:
    """The version an energy model of canonical ``name`` reports, without loading it."""
    if name == "diep":
        return f"diep {version('diep')}, {DIEP_MODEL}"
    if name.startswith("sevennet:"):
        return f"sevenn {version('sevenn')}, {name.removeprefix('sevennet:')}"
    return f"chgnet {version('chgnet')}"


def _check_elements(atoms: list[Atoms], known: set[str], model: str) -> None:
    for a in atoms:
        unknown = sorted(set(a.get_chemical_symbols()) - known)
        if unknown:
            raise XtalloopError(f"{model} has no parameters for {', '.join(unknown)}")


class _BatchedPretrained(EnergyModel):
    """A pretrained model that evaluates ``batch_size`` structures per forward pass.

    Subclasses set ``_elements`` (what the weights know) and ``batch_size``, and
    implement ``_predict_batch``.
    """

    _elements: set[str]
    batch_size: int

    def predict(self, atoms: list[Atoms]) -> list[Prediction]:
        """Evaluate all structures in batches of ``batch_size``."""
        _check_elements(atoms, self._elements, self.name)
        out: list[Prediction] = []
        for start in range(0, len(atoms), self.batch_size):
            out += self._predict_batch(atoms[start:start + self.batch_size])
        return out

    def _predict_batch(self, atoms: list[Atoms]) -> list[Prediction]:
        raise NotImplementedError


class SevenNetModel(_BatchedPretrained):
    """A SevenNet model from the ``sevenn`` wheel, a batch per forward pass.

    Parameters
    ----------
    variant
        One of :data:`SEVENNET_MODELS`.
    batch_size
        Structures per forward pass.
    device
        Torch device.
    """

    def __init__(self, variant: str = SEVENNET_DEFAULT, batch_size: int = 64,
                 device: str = "cpu") -> None:
        import mace  # noqa: F401  (before e3nn: sets torch's loading default e3nn needs)
        import sevenn._keys as KEY
        import torch
        from ase.data import chemical_symbols
        from sevenn import util

        # the checkpoint's config holds numpy arrays: allow what rebuilds one, nothing else
        # (the pickle names numpy 1's module, which numpy 2 keeps as numpy._core)
        core = getattr(np, "_core", None) or np.core
        array_globals = [np.dtype, np.ndarray,
                         (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
        array_globals += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "bool")]
        path = util.pretrained_name_to_path(variant)
        with warnings.catch_warnings(), torch.serialization.safe_globals(array_globals):
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            self._model, config = util.model_from_checkpoint(checkpoint)
        self._model.set_is_batch_data(True)
        self._model.to(device).eval()
        self._cutoff = float(config[KEY.CUTOFF])
        self._elements = {chemical_symbols[z] for z in config[KEY.TYPE_MAP]}
        self._device = device
        self.name = f"sevennet:{variant}"
        self.version = pretrained_version(self.name)
        self.batch_size = batch_size

    def _predict_batch(self, atoms: list[Atoms]) -> list[Prediction]:
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        graphs = [AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(a, self._cutoff))
                  for a in atoms]
        batch = Batch.from_data_list(graphs).to(self._device)
        result = self._model(batch)
        energies = result[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().astype(float)
        forces = result[KEY.PRED_FORCE].detach().cpu().numpy().astype(float)
        # sevenn's order is xx yy zz xy yz zx and its sign the negative of ASE's
        stresses = -result[KEY.PRED_STRESS].detach().cpu().numpy().astype(float)
        stresses = stresses[:, [0, 1, 2, 4, 5, 3]]
        bounds = np.cumsum([0] + [len(a) for a in atoms])
        return [Prediction(float(energies[i]), forces[bounds[i]:bounds[i + 1]], stresses[i])
                for i in range(len(atoms))]


class DiepModel(_BatchedPretrained):
    """DIEP's released ``diep_fold1`` from the ``diep`` wheel, a batch per forward pass.

    Parameters
    ----------
    batch_size
        Structures per forward pass.
    device
        Torch device.
    """

    name = "diep"

    def __init__(self, batch_size: int = 64, device: str = "cpu") -> None:
        import diep
        import torch
        from diep.apps.pes import Potential
        from diep.ext.ase import Atoms2Graph
        from diep.models import DIEP

        # the wheel's own copy (diep.pretrained's default follows $DIEP_MODEL_DIR)
        folder = Path(diep.__file__).parent / "pretrained_models" / DIEP_MODEL
        arguments = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        spec = arguments.pop("model")
        if spec.get("@class") != "DIEP":
            raise XtalloopError(f"{folder} describes a {spec.get('@class')!r}, not a DIEP model")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._potential = Potential(model=DIEP(**spec["init_args"]), **arguments)
        self._potential.load_state_dict(state, strict=True)
        self._potential.calc_stresses = True
        self._potential.to(device).eval()
        self._graphs = Atoms2Graph(self._potential.model.element_types,
                                   self._potential.model.cutoff)
        self._elements = set(self._potential.model.element_types)
        self._device = device
        self.version = pretrained_version(self.name)
        self.batch_size = batch_size

    def _predict_batch(self, atoms: list[Atoms]) -> list[Prediction]:
        import torch
        from torch_geometric.data import Batch

        parts = []
        for a in atoms:
            wrapped = a.copy()  # as DIEP's own calculator: the neighbour search wants it
            wrapped.wrap()
            parts.append(self._graphs.get_graph(wrapped))
        graph = Batch.from_data_list([p[0] for p in parts]).to(self._device)
        lattice = torch.cat([p[1] for p in parts]).to(self._device)
        state = torch.stack([torch.as_tensor(p[2]) for p in parts]).to(self._device)
        energies, forces, stresses, _ = self._potential(graph, lattice, state)
        energies = energies.detach().cpu().numpy().astype(float).reshape(-1)
        forces = forces.detach().cpu().numpy().astype(float)
        # GPa, 3 rows per structure; ASE's sign already
        stresses = stresses.detach().cpu().numpy().astype(float).reshape(-1, 3, 3) * GPa
        bounds = np.cumsum([0] + [len(a) for a in atoms])
        return [Prediction(float(energies[i]), forces[bounds[i]:bounds[i + 1]],
                           full_3x3_to_voigt_6_stress(stresses[i]))
                for i in range(len(atoms))]


def load_pretrained(name: str, device: str = "cpu") -> EnergyModel:
    """The pretrained model a canonical name (from :func:`canonical_name`) stands for."""
    if name == "diep":
        return DiepModel(device=device)
    if name.startswith("sevennet:"):
        return SevenNetModel(name.removeprefix("sevennet:"), device=device)
    from xtalloop.models.energy_model import CHGNetModel

    return CHGNetModel(device=device)

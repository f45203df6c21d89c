"""Energy models: energies, forces and stresses for many structures at once.

An :class:`EnergyModel` declares a ``name`` and ``version`` and has one override
point, :meth:`EnergyModel.predict`, which takes a list of ASE ``Atoms`` and
returns one :class:`Prediction` each. Models that can batch (CHGNet, SevenNet and
DIEP in :mod:`xtalloop.models.pretrained`, MACE model files in
:mod:`xtalloop.models.mace_model`) evaluate the whole list in a few
forward passes; any other ASE calculator (EMT) is wrapped by
:class:`AseCalculatorModel`, which evaluates one at a time.
"""

from __future__ import annotations

import functools
import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from xtalloop.errors import XtalloopError

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Energy (eV), forces (eV/Å, n×3) and stress (eV/Å³, Voigt 6, ASE sign).

    ``energy_std`` is the standard deviation (eV) of an ensemble's member total
    energies, or None for a single model.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray
    energy_std: float | None = None


class EnergyModel(ABC):
    """A model of the potential energy surface."""

    name: str = "energy model"
    version: str = "unknown"

    @abstractmethod
    def predict(self, atoms: list[Atoms]) -> list[Prediction]:
        """Energies, forces and stresses of every structure in ``atoms``."""

    def calculator(self) -> Calculator:
        """An ASE calculator that evaluates this model on one structure."""
        from ase.calculators.calculator import Calculator, all_changes

        model = self

        class _ModelCalculator(Calculator):
            implemented_properties = ("energy", "free_energy", "forces", "stress")

            def calculate(self, atoms=None, properties=None, system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                pred = model.predict([self.atoms])[0]
                self.results = {
                    "energy": pred.energy,
                    "free_energy": pred.energy,
                    "forces": pred.forces,
                    "stress": pred.stress,
                }

        _ModelCalculator.name = self.name
        return _ModelCalculator()

    @property
    def identity(self) -> dict[str, str]:
        """Name and version, as recorded in provenance."""
        return {"name": self.name, "version": self.version}


class CHGNetModel(EnergyModel):
    """CHGNet with the pretrained weights shipped inside the ``chgnet`` wheel.

    Parameters
    ----------
    batch_size
        Structures per forward pass.
    device
        Torch device (``"cpu"`` or ``"cuda"``).
    model, version
        A CHGNet module to use instead of the pretrained one (a fine-tuned
        model, :mod:`xtalloop.learn.chgnet_finetune`) and its version string.
    """

    name = "chgnet"

    def __init__(self, batch_size: int = 64, device: str = "cpu", model: Any = None,
                 version: str | None = None) -> None:
        import chgnet
        from chgnet.model import CHGNet

        if model is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CHGNet.load(verbose=False, use_device=device)
            model.eval()  # ours: nothing trains it in place (trainers copy it)
        self._model = model
        self.version = version or f"chgnet {chgnet.__version__}, weights {model.version}"
        self.batch_size = batch_size

    @property
    def module(self) -> Any:
        """The CHGNet torch module (shared: copy it before training)."""
        return self._model

    def predict(self, atoms: list[Atoms]) -> list[Prediction]:
        """Evaluate all structures in batches of ``batch_size``."""
        from pymatgen.io.ase import AseAtomsAdaptor

        if not atoms:
            return []
        from xtalloop.models.chgnet_inference import predict_efs

        structures = [AseAtomsAdaptor.get_structure(a) for a in atoms]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # CHGNet's own numbers with one backward pass (predict_structure takes two)
            raw = predict_efs(self._model, structures, self.batch_size)
        out = []
        for structure, result in zip(structures, raw, strict=True):
            stress = np.asarray(result["s"], dtype=float) * GPa
            if stress.shape == (3, 3):
                stress = full_3x3_to_voigt_6_stress(stress)
            out.append(
                Prediction(
                    energy=float(result["e"]) * len(structure),  # CHGNet is per atom
                    forces=np.asarray(result["f"], dtype=float),
                    stress=stress,
                )
            )
        return out


class AseCalculatorModel(EnergyModel):
    """Any ASE calculator, evaluated one structure at a time.

    Parameters
    ----------
    factory
        Callable returning a fresh calculator.
    name, version
        Identity recorded in provenance.
    """

    def __init__(self, factory: Callable[[], Calculator], name: str, version: str) -> None:
        self._calc = factory()
        self.name = name
        self.version = version

    def predict(self, atoms: list[Atoms]) -> list[Prediction]:
        """Evaluate each structure with the wrapped calculator.

        Like every model's, the predictions are the calculator's own: a
        structure's constraints are not applied (relaxations apply them).
        """
        out = []
        for a in atoms:
            a = a.copy()
            a.calc = self._calc
            stress = a.get_stress(voigt=True, apply_constraint=False)
            out.append(Prediction(a.get_potential_energy(), a.get_forces(apply_constraint=False),
                                  stress))
        return out

    def calculator(self) -> Calculator:
        """The wrapped calculator itself."""
        return self._calc


@functools.lru_cache(maxsize=4)
def load_energy_model(spec: str, device: str = "cpu", dtype: str = "float64") -> EnergyModel:
    """Load an energy model by name or path (cached per process).

    Parameters
    ----------
    spec
        ``"chgnet"``, ``"sevennet"`` (or ``"sevennet:7net-0"``), ``"diep"``
        (pretrained, weights in their wheels; see :mod:`xtalloop.models.pretrained`),
        ``"emt"`` (ASE's effective-medium
        theory, for tests), a path to a MACE model file, or a directory whose
        model files form a MACE ensemble. MACE models are read in xtalloop's
        native format only (``*.mace.json``: a description plus a
        weights-only state dict), which loads without running code; a pickled
        ``*.model`` file is refused (README, "Model files and trust", says
        how to convert one you trust).
    device
        Torch device for neural-network models.
    dtype
        Precision of a MACE model: ``"float64"`` (as trained) or ``"float32"``
        (about twice as fast on CPU; see :class:`~xtalloop.models.mace_model.MaceModel`).
        Other models keep their own.

    Raises
    ------
    XtalloopError
        If the name is unknown, a pretrained model's package is not installed,
        a model file is missing, a pickle or not a
        MACE model, or the directory holds no model file.
    """
    from xtalloop.learn.chgnet_finetune import SUFFIX as CHGNET_SUFFIX
    from xtalloop.learn.chgnet_finetune import is_finetuned_chgnet, load_finetuned
    from xtalloop.models.mace_format import PICKLE_SUFFIXES, SUFFIX, is_native, pickle_refused
    from xtalloop.models.mace_model import MaceModel
    from xtalloop.models.pretrained import NAMES, canonical_name, load_pretrained

    key = spec.strip()
    pretrained = canonical_name(key)
    if pretrained is not None:
        return load_pretrained(pretrained, device=device)
    if key.lower() == "emt":
        import ase
        from ase.calculators.emt import EMT

        return AseCalculatorModel(EMT, name="emt", version=f"ase {ase.__version__}")
    path = Path(key).expanduser()
    finetuned = sorted(path.glob(f"*{CHGNET_SUFFIX}")) if path.is_dir() else [path]
    if finetuned and is_finetuned_chgnet(finetuned[0]):
        if len(finetuned) > 1:
            raise XtalloopError(f"{path} holds {len(finetuned)} fine-tuned CHGNet models; "
                                "name one file")
        return load_finetuned(finetuned[0], device)
    if path.is_dir():
        members = sorted(path.glob(f"*{SUFFIX}"))
        pickles = sorted(path.glob("*.model"))
        if not members and pickles:
            raise pickle_refused(pickles[0])
        if not members:
            raise XtalloopError(f"no MACE model files (*{SUFFIX}) in directory {path}")
        return MaceModel(members, device=device, dtype=dtype)
    if is_native(path):
        return MaceModel([path], device=device, dtype=dtype)
    if path.suffix in PICKLE_SUFFIXES:
        raise pickle_refused(path)
    raise XtalloopError(
        f"unknown energy model {spec!r}: use {', '.join(repr(n) for n in NAMES)}, 'emt', "
        f"a MACE model file (*{SUFFIX}) or a directory of them, "
        f"or a fine-tuned CHGNet (*{CHGNET_SUFFIX})"
    )

"""xtalloop's native MACE model format: a JSON description plus a weights-only state dict.

A ``.model`` file as ``mace_run_train`` writes it is a pickled ``nn.Module``;
e3nn's generated modules run code when they are unpickled, so no allow-list
can make ``torch.load`` of one safe. xtalloop therefore keeps the models it
trains as two files:

``<name>.mace.json``
    The constructor arguments of the ``ScaleShiftMACE`` (from mace's own
    :func:`mace.tools.scripts_utils.extract_config_mace_model`), with classes
    and functions written as names from mace's own tables
    (``interaction_classes``, ``readout_classes``, ``gate_dict``), irreps as
    strings and arrays as lists; plus the weights file's name and sha256.
``<name>.mace.pt``
    ``model.state_dict()``: tensors only, read with ``weights_only=True``.

Loading rebuilds the module in code from the description and loads the
weights into it, so neither file can run code: a class or function name
outside mace's tables is refused, and so is a weights file holding anything
but tensors.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalloop.digest import file_sha256
from xtalloop.errors import XtalloopError

if TYPE_CHECKING:
    import torch

FORMAT = "xtalloop-mace/1"
SUFFIX = ".mace.json"
WEIGHTS_SUFFIX = ".mace.pt"
_CLASS_KEYS = {"interaction_cls": "interaction_classes",
               "interaction_cls_first": "interaction_classes",
               "readout_cls": "readout_classes"}
_IRREPS_KEYS = ("hidden_irreps", "MLP_irreps", "edge_irreps")
_ARRAY_KEYS = ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift")
_MODEL_CLASSES = ("ScaleShiftMACE",)


class ModelFormatError(XtalloopError, ValueError):
    """A native model file that is missing, damaged or describes something we do not build."""


#: Suffixes of pickled MACE models (``mace_run_train``'s ``.model``, ``torch.save`` files).
PICKLE_SUFFIXES = (".model", ".pt", ".pth")


def pickle_refused(path: str | Path) -> XtalloopError:
    """The one-line error for a pickled MACE model: xtalloop never unpickles one.

    Unpickling runs whatever code the file names (e3nn's generated modules
    need exactly that), and xtalloop only unpickles files its own process
    wrote. A user who trusts a ``.model`` (a local MACE-MP-0, say) converts it
    once, in a Python session of their own, to this native format (README,
    "Model files and trust"); from then on it loads without running code.
    """
    stem = Path(path).name.rsplit(".", 1)[0]
    return XtalloopError(
        f"{path}: a pickled MACE model, which can run code when loaded; xtalloop reads MACE "
        f"models only in its native format ({stem}{SUFFIX} + {stem}.mace.pt): if you trust "
        "the file, convert it once with save_native (README, 'Model files and trust')")


def is_native(path: str | Path) -> bool:
    """Whether ``path`` names a native description file (``*.mace.json``)."""
    return str(path).endswith(SUFFIX)


def weights_path(description: str | Path) -> Path:
    """The weights file beside a description file."""
    description = Path(description)
    return description.with_name(description.name.removesuffix(SUFFIX) + WEIGHTS_SUFFIX)


sha256 = file_sha256  # the name config checks and the trust list use


def _mace_modules():
    import mace  # noqa: F401  (before e3nn: mace sets torch's loading default for e3nn)
    from mace import modules

    return modules


def _name_of(value: Any, table: dict[str, Any], key: str) -> str:
    for name, member in table.items():
        if member is value:
            return name
    raise XtalloopError(f"cannot describe MACE setting {key}: {value!r} is not in mace's table")


def _plain(key: str, value: Any) -> Any:
    """``value`` as JSON data, or an error naming ``key``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(key, v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(key, v) for k, v in value.items()}
    raise XtalloopError(f"cannot describe MACE setting {key} ({type(value).__name__}) as data")


def describe(model: torch.nn.Module) -> dict[str, Any]:
    """The JSON-able constructor arguments of a ``ScaleShiftMACE``."""
    from mace.tools.scripts_utils import extract_config_mace_model

    modules = _mace_modules()
    name = type(model).__name__
    if name not in _MODEL_CLASSES:
        raise XtalloopError(f"cannot describe a {name}: only {', '.join(_MODEL_CLASSES)} "
                            "models have a native format")
    kwargs = dict(extract_config_mace_model(model))
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _CLASS_KEYS:
            out[key] = _name_of(value, getattr(modules, _CLASS_KEYS[key]), key)
        elif key == "gate":
            out[key] = _name_of(value, modules.gate_dict, key)
        elif key in _IRREPS_KEYS:
            out[key] = None if value is None else str(value)
        elif key in _ARRAY_KEYS:
            out[key] = np.asarray(value, dtype=float).tolist()
        else:
            out[key] = _plain(key, value)
    return out


def save_native(model: torch.nn.Module, description: str | Path) -> Path:
    """Write ``model`` as ``<name>.mace.json`` and ``<name>.mace.pt``; returns the JSON path."""
    import torch

    from xtalloop import __version__

    description = Path(description)
    if not is_native(description):
        raise XtalloopError(f"a native MACE model file ends in {SUFFIX}: {description}")
    kwargs = describe(model)
    weights = weights_path(description)
    description.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda f: torch.save(state, f))
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    dtype = str(floats[0] if floats else torch.float64).removeprefix("torch.")
    import mace

    doc = {"format": FORMAT, "class": type(model).__name__, "dtype": dtype,
           "weights": weights.name, "weights_sha256": sha256(weights), "kwargs": kwargs,
           "mace_version": mace.__version__, "xtalloop_version": __version__}
    _atomic_write(description, lambda f: f.write(json.dumps(doc, indent=1).encode()))
    return description


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        write(f)
    os.replace(tmp, path)


def read_description(path: str | Path) -> dict[str, Any]:
    """The parsed description file, checked for its format and its weights' sha256.

    Raises
    ------
    ModelFormatError
        One line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: MACE model file not found")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a native MACE model description "
                               f"({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFormatError(f"{path}: not a native MACE model description ({FORMAT})")
    if doc.get("class") not in _MODEL_CLASSES or not isinstance(doc.get("kwargs"), dict):
        raise ModelFormatError(f"{path}: describes a {doc.get('class')!r}, not one of "
                               f"{', '.join(_MODEL_CLASSES)}")
    if doc.get("dtype") not in ("float64", "float32"):
        raise ModelFormatError(f"{path}: dtype must be float64 or float32")
    weights = weights_path(path)
    if doc.get("weights") != weights.name:
        raise ModelFormatError(f"{path}: its weights must be {weights.name} beside it")
    if not weights.is_file():
        raise ModelFormatError(f"{path}: weights file {weights.name} not found")
    if sha256(weights) != doc.get("weights_sha256"):
        raise ModelFormatError(f"{path}: {weights.name} is not the weights it describes "
                               "(sha256 differs)")
    return doc


def _arguments(path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a description: names looked up in mace's tables only."""
    from e3nn import o3

    modules = _mace_modules()
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _CLASS_KEYS or key == "gate":
            table = modules.gate_dict if key == "gate" else getattr(modules, _CLASS_KEYS[key])
            if not isinstance(value, str) or value not in table:
                raise ModelFormatError(f"{path}: {key} {value!r} is not one of mace's "
                                       f"{', '.join(table)}")
            out[key] = table[value]
        elif key in _IRREPS_KEYS:
            try:
                out[key] = None if value is None else o3.Irreps(value)
            except (ValueError, TypeError, AssertionError):
                raise ModelFormatError(f"{path}: {key} {value!r} are not irreps") from None
        elif key in _ARRAY_KEYS:
            out[key] = np.asarray(value, dtype=float)
        else:
            out[key] = value
    return out


def load_native(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Rebuild the model a description file describes and load its weights (weights-only).

    Raises
    ------
    ModelFormatError
        One line naming the file: not a description, a name outside mace's
        tables, weights that are not plain tensors or do not fit the model.
    """
    import pickle

    import torch
    from mace.tools import torch_tools

    path = Path(path)
    doc = read_description(path)
    weights = weights_path(path)
    try:  # first: a weights file that is not plain tensors is refused before anything else
        state = torch.load(weights, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFormatError(f"{weights}: holds objects that are not plain tensors "
                               "and is refused unread") from None
    except Exception as exc:  # a damaged zip or tensor record
        raise ModelFormatError(f"{weights}: damaged weights file ({type(exc).__name__})"
                               ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelFormatError(f"{weights}: not a state dict of tensors")
    kwargs = _arguments(path, doc["kwargs"])
    modules = _mace_modules()
    try:
        with torch_tools.default_dtype(doc["dtype"]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript notes on mace's blocks
            model = getattr(modules, doc["class"])(**kwargs)
    except Exception as exc:  # mace raises many kinds on arguments that do not fit
        raise ModelFormatError(f"{path}: cannot build the model it describes "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:150]})"
                               ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{weights}: weights do not fit the model {path.name} describes "
                               f"({str(exc).splitlines()[0][:150]})") from None
    return model.to(device)

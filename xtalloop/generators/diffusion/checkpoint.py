"""Checkpoint files of the diffusion generator: what they hold, how to read them.

A checkpoint is plain data: the config, the weights (``model_state``), the
optimizer state and a few counts, all tensors, dicts, lists, strings and
numbers. It is read with ``torch.load(weights_only=True)``, so a crafted file
(a pickle whose objects run code when they are built) is refused instead of
run: a checkpoint path can come from a config file, a command line or a
finished job of a loop, none of which the reader wrote.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xtalloop import __version__
from xtalloop.digest import file_sha256
from xtalloop.errors import DataError
from xtalloop.generators.diffusion.config import DiffusionConfig
from xtalloop.generators.diffusion.model import CrystalDenoiser

FORMAT = "xtalloop-diffusion/1"


class CheckpointError(DataError):
    """A checkpoint file that is missing, damaged, unsafe or not an xtalloop checkpoint."""


file_hash = file_sha256  # the name the trainer and older callers use


def _plain(value: Any) -> Any:
    """``value`` as what weights-only loading accepts: tensors, dicts, lists, str, numbers."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str) and type(value) is not str:  # torch.__version__ is a subclass
        return str.__str__(value)  # that weights-only loading refuses: store the plain text
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def save_checkpoint(path: str | Path, payload: dict[str, Any], fmt: str = FORMAT) -> Path:
    """Write ``payload`` (with format tag and xtalloop version) atomically to ``path``.

    Everything is converted to plain types first, so the file loads with
    ``weights_only=True`` (see :func:`read_checkpoint`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _plain({"format": fmt, "xtalloop_version": __version__, **payload})
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is shared like any file
    os.replace(tmp, path)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _load(path: Path, mmap: bool = False, fmt: str = FORMAT,
          kind: str = "diffusion") -> dict[str, Any]:
    """The checkpoint's dict, read weights-only; one-line :class:`CheckpointError` otherwise.

    ``fmt`` is the format tag the file must carry (``kind`` names it in errors).
    """
    import pickle

    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # weights-only loading refused an object: a pickle that would build (and so
        # could run) arbitrary code, never a checkpoint xtalloop wrote
        detail = str(exc).split("\n")
        reason = next((ln.strip() for ln in detail if "Unsupported global" in ln),
                      detail[0].strip())
        raise CheckpointError(
            f"{path}: cannot read checkpoint: it holds objects that are not plain data "
            f"and is refused unread ({reason[:200]})") from None
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        raise CheckpointError(f"{path}: cannot read checkpoint (damaged, or not an xtalloop "
                              f"checkpoint): {_first_line(exc)[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path}: cannot read checkpoint: not an xtalloop {kind} "
                              f"checkpoint ({fmt})")
    for key, kind in (("config", dict), ("model_state", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{path}: cannot read checkpoint: no {key!r} in it")
    return ckpt


def _config(path: Path, ckpt: dict[str, Any]) -> DiffusionConfig:
    from pydantic import ValidationError

    try:
        return DiffusionConfig.model_validate(ckpt["config"])
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise CheckpointError(f"{path}: cannot read checkpoint: its config is invalid "
                              f"({where}: {error['msg']})") from None


def _check_weights(path: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """The stored weights are exactly the tensors the config's model has, shape for shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(stored) != len(state):
        raise CheckpointError(f"{path}: cannot read checkpoint: model_state holds non-tensors")
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    if missing or extra or wrong:
        parts = [f"{name} {', '.join(keys[:3])}{'…' if len(keys) > 3 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", extra),
                                    ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{path}: cannot read checkpoint: its weights do not match the "
                              f"model its config describes ({'; '.join(parts)})")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (tensors on CPU), read weights-only.

    Raises
    ------
    CheckpointError
        One line starting with the path: missing, damaged, holding anything
        but plain data, or not an xtalloop diffusion checkpoint.
    """
    return _load(Path(path))


def check_checkpoint(path: str | Path) -> Path:
    """Check cheaply that ``path`` is a usable checkpoint (for config validation).

    The file is memory-mapped, not read: its structure, config and the names
    and shapes of its weights are checked against the model the config
    describes (built on the ``meta`` device, without memory).

    Raises
    ------
    CheckpointError
        As :func:`read_checkpoint`, or when the weights do not fit the config.
    """
    path = Path(path).expanduser()
    ckpt = _load(path, mmap=True)
    config = _config(path, ckpt)
    with torch.device("meta"):
        model = CrystalDenoiser(config.model)
    _check_weights(path, model, ckpt["model_state"])
    return path


@dataclass
class LoadedModel:
    """A denoiser ready for sampling, with what the checkpoint says about it.

    Parameters
    ----------
    model
        The network, in eval mode, on its device.
    config
        Hyperparameters it was trained with.
    checkpoint_hash
        sha256 of the checkpoint file.
    formula_unit_counts
        Training-set counts of formula units per cell, by atoms per formula unit.
    max_atoms
        Largest training cell.
    lattice_abs_max
        Largest absolute lattice-matrix entry in the training set (Å; ``None`` if unknown).
    """

    model: CrystalDenoiser
    config: DiffusionConfig
    checkpoint_hash: str
    formula_unit_counts: dict[int, dict[int, int]]
    max_atoms: int
    lattice_abs_max: float | None = None


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the denoiser stored in checkpoint ``path`` on ``device``.

    Raises
    ------
    CheckpointError
        As :func:`read_checkpoint`, or when the weights do not fit the config.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    config = _config(path, ckpt)
    model = CrystalDenoiser(config.model)
    _check_weights(path, model, ckpt["model_state"])
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    try:
        counts = {
            int(k): {int(z): int(c) for z, c in v.items()}
            for k, v in ckpt.get("formula_unit_counts", {}).items()
        }
        max_atoms = int(ckpt.get("max_atoms", 20))
        lattice_abs_max = ckpt.get("lattice_abs_max")
        lattice_abs_max = None if lattice_abs_max is None else float(lattice_abs_max)
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: bad training counts "
                              f"({_first_line(exc)})") from None
    return LoadedModel(model, config, file_hash(path), counts, max_atoms, lattice_abs_max)

"""Checkpoint files of the diffusion generator: what they hold, how to read them."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xtalloop import __version__
from xtalloop.generators.diffusion.config import DiffusionConfig
from xtalloop.generators.diffusion.model import CrystalDenoiser

FORMAT = "xtalloop-diffusion/1"


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with format tag and xtalloop version) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "xtalloop_version": __version__, **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (tensors on CPU)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xtalloop diffusion checkpoint ({FORMAT})")
    return ckpt


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
    """Build the denoiser stored in checkpoint ``path`` on ``device``."""
    ckpt = read_checkpoint(path)
    config = DiffusionConfig.model_validate(ckpt["config"])
    model = CrystalDenoiser(config.model)
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    counts = {
        int(k): {int(z): int(c) for z, c in v.items()}
        for k, v in ckpt.get("formula_unit_counts", {}).items()
    }
    return LoadedModel(
        model, config, file_hash(path), counts, int(ckpt.get("max_atoms", 20)),
        ckpt.get("lattice_abs_max"),
    )

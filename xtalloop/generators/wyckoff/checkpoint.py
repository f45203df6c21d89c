"""Checkpoints of the Wyckoff generator: plain data read with ``weights_only=True``.

The same rules as the diffusion generator's (see
:mod:`xtalloop.generators.diffusion.checkpoint`): settings as a dict, weights
as tensors, so a crafted file is refused unread, and a file whose weights do
not fit its settings is refused with one line before any sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xtalloop.digest import file_sha256
from xtalloop.generators.diffusion.checkpoint import (
    CheckpointError,
    _check_weights,
    _load,
    save_checkpoint,
)
from xtalloop.generators.wyckoff.model import WyckoffModel, WyckoffModelConfig
from xtalloop.generators.wyckoff.skeletons import load_bank

FORMAT = "xtalloop-wyckoff/1"

#: The shipped checkpoints (see ``xtalloop/generators/wyckoff/checkpoints/README.md``).
SHIPPED = Path(__file__).parent / "checkpoints"
#: The learned source's default: trained on MP-20 and MPTS-52 ``train_partial``.
DEFAULT_CHECKPOINT = SHIPPED / "wyckoff.pt"


def save_wyckoff(path: str | Path, model: WyckoffModel, extra: dict[str, Any]) -> Path:
    """Write ``model`` (settings, weights) and ``extra`` (training log...) to ``path``."""
    state = {k: v for k, v in model.state_dict().items()}
    return save_checkpoint(path, {"config": model.config.to_dict(), "model_state": state,
                                  **extra}, fmt=FORMAT)


def _config(path: Path, ckpt: dict[str, Any]) -> WyckoffModelConfig:
    try:
        return WyckoffModelConfig(**ckpt["config"])
    except TypeError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: its config is invalid "
                              f"({str(exc).splitlines()[0]})") from None


def check_wyckoff(path: str | Path) -> Path:
    """Check cheaply (memory-mapped, model on the ``meta`` device) that ``path`` is usable.

    Raises
    ------
    CheckpointError
        One line: missing, damaged, not plain data, not a Wyckoff checkpoint,
        or weights that do not fit its settings.
    """
    path = Path(path).expanduser()
    ckpt = _load(path, mmap=True, fmt=FORMAT, kind="wyckoff")
    config = _config(path, ckpt)
    with torch.device("meta"):
        model = WyckoffModel(config)
    _check_weights(path, model, ckpt["model_state"])
    return path


@dataclass
class LoadedWyckoff:
    """A Wyckoff model ready for sampling, and what its checkpoint says about it."""

    model: WyckoffModel
    checkpoint_hash: str
    max_atoms: int
    metadata: dict[str, Any]
    skeletons: dict[str, list] = field(default_factory=dict)
    """Free coordinates of training crystals per skeleton (:mod:`.skeletons`; may be empty)."""


def load_wyckoff(path: str | Path, device: str = "cpu") -> LoadedWyckoff:
    """The model stored in ``path``, in eval mode on ``device``.

    Raises
    ------
    CheckpointError
        As :func:`check_wyckoff`.
    """
    path = Path(path).expanduser()
    ckpt = _load(path, fmt=FORMAT, kind="wyckoff")
    config = _config(path, ckpt)
    model = WyckoffModel(config)
    _check_weights(path, model, ckpt["model_state"])
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model_state", "config", "skeletons")}
    try:
        max_atoms = int(ckpt.get("max_atoms", 20))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: cannot read checkpoint: bad max_atoms") from None
    return LoadedWyckoff(model, file_sha256(path), max_atoms, meta,
                         load_bank(ckpt.get("skeletons")))


def add_skeletons(path: str | Path, crystals: list, out: str | Path | None = None) -> int:
    """Give the checkpoint at ``path`` a skeleton bank of ``crystals`` (written to ``out``,
    default in place); the weights and settings are unchanged. Returns the skeletons."""
    from xtalloop.generators.wyckoff.skeletons import build_bank, dump_bank

    path = Path(path).expanduser()
    ckpt = _load(path, fmt=FORMAT, kind="wyckoff")
    bank = build_bank(crystals)
    ckpt["skeletons"] = dump_bank(bank)
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "xtalloop_version")}
    save_checkpoint(out or path, payload, fmt=FORMAT)
    return len(bank)

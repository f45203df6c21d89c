"""Fine-tuning a Wyckoff generator checkpoint on a few crystals (the loop, the benchmarks).

The Wyckoff generator learns from Wyckoff descriptions, not from structures:
each structure is described by PyXtal first (:func:`~xtalloop.generators.wyckoff.sites.describe`),
and the few that PyXtal cannot describe are skipped and counted, so a caller
can say how much of its data was usable. Training itself is
:func:`~xtalloop.generators.wyckoff.train.train_wyckoff` with ``parent``: it
starts from the parent's weights and keeps them unless the held-out loss
improves, so a fine-tuned checkpoint is never worse than its parent on the
crystals it was shown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

logger = logging.getLogger(__name__)

#: The fine-tuning learning rate is the parent's times this unless told otherwise.
DEFAULT_LR_FACTOR = 0.1


def is_wyckoff_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a Wyckoff checkpoint (``False``: another xtalloop format).

    The file is only memory-mapped (:func:`~xtalloop.generators.wyckoff.checkpoint.check_wyckoff`).

    Raises
    ------
    CheckpointError
        The file is missing, damaged or unsafe, or a Wyckoff checkpoint whose
        weights do not fit its settings: no format could read it, so saying
        which one it is not would hide why.
    """
    from xtalloop.generators.diffusion.checkpoint import CheckpointError
    from xtalloop.generators.wyckoff.checkpoint import FORMAT, check_wyckoff

    try:
        check_wyckoff(path)
    except CheckpointError as exc:
        if f"checkpoint ({FORMAT})" in str(exc):  # readable, but tagged with another format
            return False
        raise
    return True


def wyckoff_parent(checkpoint: str | None) -> str:
    """The checkpoint a Wyckoff source samples: its own, or the shipped one for ``None``."""
    from xtalloop.generators.wyckoff.checkpoint import DEFAULT_CHECKPOINT

    return checkpoint or str(DEFAULT_CHECKPOINT)


@dataclass
class Described:
    """Wyckoff descriptions of some structures, and which structures they are."""

    crystals: list[Any]
    ids: list[str]
    skipped: list[str]

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def describe_structures(structures: Iterable[tuple[str, Structure]],
                        max_sites: int | None = None) -> Described:
    """Describe each ``(id, structure)``; those PyXtal (or the model) cannot use are skipped.

    Parameters
    ----------
    structures
        Identifiers (kept with each description) and structures.
    max_sites
        The model's ``max_sites``: a crystal with more symmetry-distinct sites,
        or otherwise outside the model's range
        (:func:`~xtalloop.generators.wyckoff.data.to_example`), is skipped too,
        because training would drop it silently.
    """
    import warnings

    from xtalloop.generators.wyckoff.data import to_example
    from xtalloop.generators.wyckoff.sites import describe

    crystals, ids, skipped = [], [], []
    for key, structure in structures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crystal = describe(structure, str(key))
        usable = crystal is not None and (
            max_sites is None or to_example(crystal, max_sites) is not None)
        if usable:
            crystals.append(crystal)
            ids.append(str(key))
        else:
            skipped.append(str(key))
    if skipped:
        logger.info("%d of %d structures have no usable Wyckoff description: skipped",
                    len(skipped), len(skipped) + len(ids))
    return Described(crystals, ids, skipped)


def parent_settings(parent: str | Path) -> tuple[int, float, int]:
    """``(max_sites, lr, batch_size)`` of a Wyckoff checkpoint's network and training.

    ``lr`` is the learning rate of the original training (``base_lr``, which a
    fine-tuned checkpoint carries on), not the reduced one it was fine-tuned
    with: otherwise each round of a loop would fine-tune ``lr_factor`` times
    more slowly than the one before. Read weights-only with the tensors
    memory-mapped, so asking costs no model load.
    """
    from xtalloop.generators.diffusion.checkpoint import _load
    from xtalloop.generators.wyckoff.checkpoint import FORMAT, _config
    from xtalloop.generators.wyckoff.train import WyckoffTrainConfig

    path = Path(parent).expanduser()
    ckpt = _load(path, mmap=True, fmt=FORMAT, kind="wyckoff")
    trained = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    defaults = WyckoffTrainConfig()
    lr = ckpt.get("base_lr", trained.get("lr", defaults.lr))
    batch_size = trained.get("batch_size", defaults.batch_size)
    return (int(_config(path, ckpt).max_sites),
            float(lr) if isinstance(lr, (int, float)) else defaults.lr,
            int(batch_size) if isinstance(batch_size, int) else defaults.batch_size)


@dataclass
class WyckoffFinetune:
    """How a Wyckoff checkpoint is fine-tuned.

    Parameters
    ----------
    epochs
        Passes over the crystals.
    lr_factor
        Learning rate = the parent's × this (the parent's own training rate is
        far too high for a few crystals: it would forget what it knew).
    batch_size
        Crystals per step (capped at the training crystals).
    minutes
        Time box (``None``: ``epochs`` only).
    seed, device
        Seed of the held-out split and shuffling; torch device.
    """

    epochs: int = 20
    lr_factor: float = DEFAULT_LR_FACTOR
    batch_size: int = 16
    minutes: float | None = None
    seed: int = 0
    device: str = "cpu"


def finetune_wyckoff(parent: str | Path, crystals: list[Any], out: str | Path,
                     settings: WyckoffFinetune | None = None,
                     metadata: dict[str, Any] | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """Fine-tune the Wyckoff checkpoint ``parent`` on ``crystals``; write ``out``.

    ``metadata`` is stored in the checkpoint, with ``parent`` (its path and
    sha256, and what ``metadata["parent"]`` adds, e.g. a store reference) and
    ``base_lr`` (see :func:`parent_settings`).

    Returns
    -------
    dict
        The training log of :func:`~xtalloop.generators.wyckoff.train.train_wyckoff`
        (``parent_val_loss``, ``best_val_loss``, ``improved``, per-epoch losses).

    Raises
    ------
    DataError
        Fewer than two usable crystals (one is held out to decide whether the
        new weights are better).
    """
    from xtalloop.digest import file_sha256
    from xtalloop.generators.wyckoff.train import WyckoffTrainConfig, train_wyckoff

    settings = settings or WyckoffFinetune()
    _, parent_lr, _ = parent_settings(parent)
    metadata = dict(metadata or {})
    metadata["parent"] = {"path": str(parent), "sha256": file_sha256(parent),
                          **(metadata.get("parent") or {})}
    metadata["base_lr"] = parent_lr
    config = WyckoffTrainConfig(
        epochs=settings.epochs, batch_size=max(1, min(settings.batch_size, len(crystals))),
        lr=parent_lr * settings.lr_factor, minutes=settings.minutes, seed=settings.seed,
        device=settings.device)
    log = train_wyckoff(crystals, out, train_config=config, metadata=metadata,
                        progress=progress, parent=parent)
    log.setdefault("improved", False)
    return log


def outcome(log: dict[str, Any]) -> str:
    """The held-out loss before and after, in words (for a job's ``reason``)."""
    before, after = log.get("parent_val_loss"), log.get("best_val_loss")
    if log.get("improved"):
        return f"held-out loss {before} -> {after}"
    return f"held-out loss not improved ({before}): the parent's weights are kept"

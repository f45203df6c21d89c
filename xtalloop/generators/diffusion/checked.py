"""The diffusion generator's data, configuration and training calls, with one-line errors.

:mod:`xtalloop.generators.diffusion` raises whatever pandas, torch or pydantic raise;
these wrappers turn a missing or damaged file, a bad setting or a refused resume into
a :class:`~xtalloop.errors.DataError` or :class:`~xtalloop.errors.ConfigError` naming
the file or key. The command line (:mod:`xtalloop.cli_generator`) and the benchmarks
(:mod:`xtalloop.benchmark.arity`) both call them, so a user sees the same message
from either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtalloop.devices import check_device
from xtalloop.errors import ConfigError, DataError, one_line

if TYPE_CHECKING:
    from xtalloop.generators.diffusion import CrystalDataset, DiffusionConfig


def load_dataset(
    path: Path,
    max_atoms: int | None = None,
    max_elements: int | None = None,
    limit: int | None = None,
    cache_dir: Path | None = None,
    role: str = "training",
) -> CrystalDataset:
    """Read a structure CSV (``cif`` column) into a dataset, with user-facing errors.

    Parameters
    ----------
    path
        CSV file, optionally gzipped.
    max_atoms
        Drop cells with more atoms (``None``: keep all).
    max_elements
        Keep crystals with at most this many distinct elements (``None``: all).
    limit
        Keep at most this many crystals.
    cache_dir
        Folder for a parsed-dataset cache.
    role
        Word used in messages (``training``, ``validation``).

    Raises
    ------
    DataError
        If the file is missing, unreadable, or no crystal passes the filters.
    """
    from xtalloop.generators.diffusion import load_csv

    if not path.is_file():
        raise DataError(f"{role} data not found: {path}")
    arity = tuple(range(1, max_elements + 1)) if max_elements else None
    try:
        dataset = load_csv(path, max_atoms=max_atoms, n_elements=arity, cache_dir=cache_dir,
                           limit=limit)
    except Exception as exc:  # pandas, gzip and CIF parser errors all mean a bad file
        raise DataError(f"cannot read {role} data {path}: {one_line(exc)}") from None
    if len(dataset) == 0:
        raise DataError(f"no crystals in {path} pass the filters "
                        f"(max atoms {max_atoms}, max elements {max_elements})")
    return dataset



def unreadable_checkpoint(path: Path, exc: BaseException) -> str:
    """Message for a checkpoint file that cannot be loaded."""
    from xtalloop.errors import XtalloopError

    if isinstance(exc, XtalloopError):  # the checkpoint reader's own line names the file
        return str(exc)
    return (f"cannot read checkpoint {path} (damaged, or not an xtalloop checkpoint): "
            f"{one_line(exc)}")



def load_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict, with user-facing errors.

    Raises
    ------
    DataError
        If the file is missing or not a readable xtalloop diffusion checkpoint.
    """
    from xtalloop.generators.diffusion import read_checkpoint

    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        return read_checkpoint(path)
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise DataError(unreadable_checkpoint(path, exc)) from None



def read_config(path: Path) -> DiffusionConfig:
    """A full :class:`~xtalloop.generators.diffusion.DiffusionConfig` from a YAML or JSON file.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML/JSON, or not a valid configuration.
    """
    import yaml
    from pydantic import ValidationError

    from xtalloop.generators.diffusion import DiffusionConfig

    if not path.is_file():
        raise ConfigError(f"diffusion config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML or JSON: {one_line(exc)}") from None
    try:
        return DiffusionConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "config"
        raise ConfigError(f"{path}: {where}: {error['msg']}") from None



def train_overrides(
    epochs: int | None = None,
    minutes: float | None = None,
    device: Any = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """:class:`~xtalloop.generators.diffusion.TrainConfig` fields the user set.

    ``device`` may be a string or an enum whose ``value`` is one; ``None`` values
    are left out, so the preset or parent checkpoint keeps its own.
    """
    values = {
        "epochs": epochs,
        "max_time_s": minutes * 60 if minutes is not None else None,
        "device": getattr(device, "value", device),
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    return {k: v for k, v in values.items() if v is not None}


def with_train_settings(config: DiffusionConfig, overrides: dict[str, Any]) -> DiffusionConfig:
    """``config`` with training fields replaced, validated (bad values: ConfigError)."""
    from pydantic import ValidationError

    from xtalloop.generators.diffusion import TrainConfig

    try:
        settings = TrainConfig(**{**config.train.model_dump(), **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"training setting {field}: {error['msg']}") from None
    return config.model_copy(update={"train": settings})



def run_training(
    config: DiffusionConfig,
    dataset: CrystalDataset,
    out: Path,
    val_dataset: CrystalDataset | None,
    progress: bool,
    resume_from: Path | None = None,
    finetune_from: Path | None = None,
) -> Path:
    """Call :func:`~xtalloop.generators.diffusion.train`, turning its refusals into errors."""
    from xtalloop.generators.diffusion import train

    check_device(config.train.device)
    try:
        return train(config, dataset, out, val_dataset=val_dataset, resume_from=resume_from,
                     finetune_from=finetune_from, progress=progress)
    except ValueError as exc:  # e.g. resuming on other data
        if resume_from is not None and "other data" in str(exc):
            raise ConfigError(f"--resume {resume_from} was trained on other data; "
                              "use `xtalloop generator finetune` instead") from None
        raise ConfigError(one_line(exc)) from None


def training_summary(checkpoint: Path, n_train: int) -> str:
    """One line on what a training run wrote (from the JSON log beside the checkpoint)."""
    stem = checkpoint.with_suffix("")
    log = json.loads(Path(f"{stem}.log.json").read_text())
    history = log.get("history") or [{}]
    last = history[-1]
    parts = [
        f"trained on {n_train} crystals",
        f"epoch {log['epoch']}, step {log['step']} (stopped by {log['stopped_by']})",
    ]
    if "loss" in last:
        parts.append(f"loss {last['loss']:.4f}")
    if "val_loss" in last:
        parts.append(f"val loss {last['val_loss']:.4f}")
    return (f"{'; '.join(parts)}\ncheckpoint: {checkpoint} "
            f"(log {stem}.log.json, loss curve {stem}.loss.png)")

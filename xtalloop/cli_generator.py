"""``xtalloop generator``: train, fine-tune and sample the diffusion generator.

The commands are thin wrappers of :mod:`xtalloop.generators.diffusion`:
``train`` and ``finetune`` call :func:`~xtalloop.generators.diffusion.train`
with a preset (or the parent checkpoint's settings) and a few overrides;
``sample`` asks a :class:`~xtalloop.generators.diffusion.DiffusionGenerator`
(or, for a Wyckoff checkpoint, :mod:`xtalloop.cli_wyckoff`) for structures of
one composition and writes them as CIFs. Problems with the
user's files or formula are reported as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from xtalloop.cli_errors import user_errors
from xtalloop.errors import CompositionError, ConfigError, DataError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from xtalloop.generators.diffusion import CrystalDataset, DiffusionConfig

generator_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, fine-tune and sample the diffusion and Wyckoff generators.",
)


class PresetName(str, Enum):
    """Named diffusion configurations (see :data:`~xtalloop.generators.diffusion.PRESETS`)."""

    small_cpu = "small_cpu"
    full_gpu = "full_gpu"


class Device(str, Enum):
    """Torch device choices."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


# --- helpers -----------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    """First line of an exception's message, or its type name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_device(device: str | None) -> None:
    """Raise :class:`ConfigError` if ``cuda`` is asked for but not available."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for but CUDA is not available here")


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (``None``: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


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
    device: Device | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """:class:`~xtalloop.generators.diffusion.TrainConfig` fields the user set."""
    values = {
        "epochs": epochs,
        "max_time_s": minutes * 60 if minutes is not None else None,
        "device": device.value if device is not None else None,
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


def space_group(structure: Structure, symprec: float) -> tuple[str, int]:
    """Space-group symbol and number at ``symprec`` (``("?", 0)`` if spglib fails)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        return analyzer.get_space_group_symbol(), analyzer.get_space_group_number()
    except Exception:  # degenerate samples (overlapping atoms, flat cells)
        return "?", 0


def cell_formula(structure: Structure) -> str:
    """Formula of the whole cell without counts of one, e.g. ``Li6P2S8`` or ``NaCl``."""
    tokens = structure.composition.formula.split()  # electronegativity order, e.g. "Na1 Cl1"
    return "".join(t[:-1] if t[-1] == "1" and not t[-2].isdigit() else t for t in tokens)


def sample_line(name: str, structure: Structure, symprec: float) -> str:
    """``file  formula  space group (number)  N atoms`` for one sampled structure."""
    symbol, number = space_group(structure, symprec)
    formula = cell_formula(structure)
    return f"{name:<28s} {formula:<16s} {symbol + f' ({number})':<16s} {len(structure):3d} atoms"


# --- commands ----------------------------------------------------------------------


_DATA_HELP = "CSV of crystals with a 'cif' column (optionally .gz), e.g. MP-20 train_partial."


@generator_app.command()
@user_errors
def train(
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (.pt); log and loss "
                                                "curve go beside it."),
    preset_name: PresetName = typer.Option(PresetName.small_cpu, "--preset",
                                           help="Model size and training settings."),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML/JSON DiffusionConfig (model, noise, train sections) "
                               "used instead of the preset."),
    val: Path | None = typer.Option(None, "--val", help="Validation CSV (loss logged per epoch)."),
    val_limit: int = typer.Option(256, min=1, help="Validation crystals used at most."),
    device: Device | None = typer.Option(None, help="Torch device (default: the preset's)."),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (default: the preset's)."),
    minutes: float | None = typer.Option(None, min=0.01,
                                         help="Wall-time box in minutes (default: the preset's)."),
    batch_size: int | None = typer.Option(None, min=1, help="Crystals per step."),
    lr: float | None = typer.Option(None, help="Learning rate."),
    seed: int | None = typer.Option(None, help="Seed of initialisation, shuffling and noise."),
    max_atoms: int | None = typer.Option(None, min=1, help="Drop larger cells from the data."),
    max_elements: int | None = typer.Option(None, min=1,
                                            help="Keep crystals with at most this many elements."),
    limit: int | None = typer.Option(None, min=1, help="Use at most this many crystals."),
    cache_dir: Path | None = typer.Option(None, help="Folder for a parsed-data cache."),
    resume: Path | None = typer.Option(None, help="Continue this checkpoint's run (same data)."),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train the diffusion generator from scratch (or resume a run) on a structure CSV."""
    from xtalloop.generators.diffusion import preset
    from xtalloop.preflight import check_output_file

    check_output_file(out, "--out", force=True, example="model.pt")  # before any training
    if resume is not None:
        load_checkpoint(resume)
    base = read_config(config_file) if config_file is not None else preset(preset_name.value)
    config = with_train_settings(
        base, train_overrides(epochs, minutes, device, batch_size, lr, seed)
    )
    set_threads(threads)
    check_device(config.train.device)
    dataset = load_dataset(data, max_atoms, max_elements, limit, cache_dir)
    val_set = (load_dataset(val, max_atoms, max_elements, val_limit, cache_dir, "validation")
               if val is not None else None)
    source = str(config_file) if config_file is not None else f"preset {preset_name.value}"
    typer.echo(f"training {source} on {len(dataset)} crystals from {data} "
               f"(device {config.train.device}, up to {config.train.epochs} epochs)")
    written = run_training(config, dataset, out, val_set, progress, resume_from=resume)
    typer.echo(training_summary(written, len(dataset)))


@generator_app.command()
@user_errors
def finetune(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint to start from."),
    data: Path = typer.Option(..., "--data", help=_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="New checkpoint to write (not the parent)."),
    val: Path | None = typer.Option(None, "--val", help="Validation CSV (loss logged per epoch)."),
    val_limit: int = typer.Option(256, min=1, help="Validation crystals used at most."),
    device: Device | None = typer.Option(None, help="Torch device (default: the parent's)."),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (default: the parent's)."),
    minutes: float | None = typer.Option(None, min=0.01, help="Wall-time box in minutes."),
    batch_size: int | None = typer.Option(None, min=1, help="Crystals per step."),
    lr_factor: float | None = typer.Option(None, help="Learning rate = parent's lr × this "
                                                      "(default: the parent's setting, 0.1)."),
    seed: int | None = typer.Option(None, help="Seed of shuffling and noise."),
    max_atoms: int | None = typer.Option(None, min=1, help="Drop larger cells from the data."),
    max_elements: int | None = typer.Option(None, min=1,
                                            help="Keep crystals with at most this many elements."),
    limit: int | None = typer.Option(None, min=1, help="Use at most this many crystals."),
    cache_dir: Path | None = typer.Option(None, help="Folder for a parsed-data cache."),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Fine-tune a checkpoint on new data (its weights, model and noise settings)."""
    from xtalloop.generators.diffusion import DiffusionConfig

    from xtalloop.preflight import check_output_file

    if out.resolve() == checkpoint.resolve():
        raise ConfigError("--out must differ from --checkpoint (the parent is kept as provenance)")
    check_output_file(out, "--out", force=True, example="finetuned.pt")
    parent = load_checkpoint(checkpoint)
    overrides = train_overrides(epochs, minutes, device, batch_size, None, seed)
    if lr_factor is not None:
        overrides["finetune_lr_factor"] = lr_factor
    config = with_train_settings(DiffusionConfig.model_validate(parent["config"]), overrides)
    set_threads(threads)
    check_device(config.train.device)
    dataset = load_dataset(data, max_atoms, max_elements, limit, cache_dir)
    val_set = (load_dataset(val, max_atoms, max_elements, val_limit, cache_dir, "validation")
               if val is not None else None)
    typer.echo(f"fine-tuning {checkpoint} (epoch {parent['epoch']}, {parent['n_train']} crystals) "
               f"on {len(dataset)} crystals from {data}")
    written = run_training(config, dataset, out, val_set, progress, finetune_from=checkpoint)
    typer.echo(training_summary(written, len(dataset)))


@generator_app.command()
@user_errors
def sample(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Trained checkpoint "
                                           "(diffusion or Wyckoff: told apart by its format)."),
    kind: str | None = typer.Option(None, "--kind", help="diffusion or wyckoff (default: the "
                                    "checkpoint's); wyckoff without --checkpoint: shipped model."),
    composition: str = typer.Option(..., "--composition", help="Formula, e.g. Li3PS4."),
    n: int = typer.Option(10, "--n", min=1, help="Structures to sample (at most 10000)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives identical files (on CPU)."),
    out: Path = typer.Option(Path("samples"), "--out", help="Folder for the CIF files."),
    n_steps: int | None = typer.Option(None, min=1, help="Reverse diffusion steps "
                                                         "(default: all training timesteps)."),
    step_lr: float = typer.Option(1e-5, help="Langevin corrector step scale."),
    formula_units: list[int] | None = typer.Option(
        None, "--formula-units", min=1,
        help="Formula units per cell to draw from (repeatable; default: training distribution)."),
    max_atoms: int | None = typer.Option(None, min=1, help="Largest cell (default: the "
                                                           "largest training cell)."),
    device: Device = typer.Option(Device.cpu, help="Torch device."),
    symprec: float = typer.Option(0.1, min=0.0, help="Tolerance of the reported space group."),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads."),
) -> None:
    """Sample structures of one composition and write one CIF per structure."""
    from xtalloop.cli_wyckoff import sample_kind, sample_wyckoff, write_samples
    from xtalloop.composition import parse_composition
    from xtalloop.config import MAX_CANDIDATES
    from xtalloop.generators.diffusion import DiffusionGenerator
    from xtalloop.generators.diffusion.generator import formula_unit_options
    from xtalloop.preflight import check_output_folder

    if n > MAX_CANDIDATES:
        raise ConfigError(f"--n: at most {MAX_CANDIDATES} structures per call, not {n}: all are "
                          "held in memory until written; call again with other --seed values")
    reduced = parse_composition(composition, charge_balance="off")
    check_output_folder(out, "--out")
    check_device(device.value)
    set_threads(threads)
    if sample_kind(checkpoint, kind) == "wyckoff":
        return sample_wyckoff(checkpoint, reduced, n, seed, out, max_atoms, device.value, symprec)
    generator = DiffusionGenerator(
        checkpoint=str(checkpoint), n_steps=n_steps, step_lr=step_lr, device=device.value,
        formula_units=tuple(formula_units) if formula_units else None, max_atoms=max_atoms,
    )
    try:
        loaded = generator.load()
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise DataError(unreadable_checkpoint(checkpoint, exc)) from None
    too_heavy = [el.symbol for el in reduced.elements if el.Z > loaded.config.model.max_z]
    if too_heavy:
        raise CompositionError(f"{', '.join(too_heavy)} beyond Z={loaded.config.model.max_z}, "
                               "the largest atomic number the model knows")
    limit = max_atoms or loaded.max_atoms
    zs, _ = formula_unit_options(int(reduced.num_atoms), loaded.formula_unit_counts, limit,
                                 generator.formula_units)
    if not zs:
        raise CompositionError(f"no cell of {reduced.reduced_formula} fits within {limit} atoms "
                               "(pass --max-atoms or other --formula-units)")
    write_samples(generator.generate(reduced, n, seed), reduced, seed, out, symprec)

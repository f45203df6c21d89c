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

from enum import Enum
from pathlib import Path

import typer

from xtalloop.cli_errors import user_errors
from xtalloop.devices import check_device, set_threads
from xtalloop.errors import CompositionError, ConfigError, DataError
from xtalloop.generators.diffusion.checked import (
    load_checkpoint,
    load_dataset,
    read_config,
    run_training,
    train_overrides,
    training_summary,
    unreadable_checkpoint,
    with_train_settings,
)

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

"""``xtalloop generator train-wyckoff``: train the symmetry-aware Wyckoff generator.

A thin wrapper of :func:`xtalloop.generators.wyckoff.train.train_wyckoff`: it
describes each training table's crystals by their Wyckoff positions (cached),
drops those whose ``material_id`` is in an ``--exclude`` table (so a benchmark
on that table is not trained on its answers), trains within ``--minutes`` and
writes the checkpoint with its training log beside it.

``xtalloop generator sample`` hands a Wyckoff checkpoint (told apart by its
format tag), or ``--kind wyckoff`` without one (the shipped model), to
:func:`sample_wyckoff` here; ``xtalloop benchmark csp`` builds its Wyckoff
generator with :func:`xtalloop.benchmark.generators.wyckoff_generator`.
"""

from __future__ import annotations

import json
import platform
import time
from enum import Enum
from pathlib import Path

import typer

from xtalloop.cli_errors import user_errors
from xtalloop.cli_generator import generator_app
from xtalloop.devices import set_threads
from xtalloop.preflight import check_structure_table


class WyckoffPreset(str, Enum):
    """Model sizes: ``small`` trains within an hour on 2 CPU cores; ``large`` wants a GPU."""

    small = "small"
    large = "large"


#: (model settings, training settings) of each preset.
PRESETS = {
    "small": ({"d_model": 128, "n_layers": 3, "n_heads": 4},
              {"epochs": 30, "batch_size": 128, "lr": 1e-3}),
    "large": ({"d_model": 256, "n_layers": 6, "n_heads": 8},
              {"epochs": 80, "batch_size": 256, "lr": 6e-4}),
}


def excluded_ids(tables: list[Path]) -> set[str]:
    """``material_id`` values of every row of ``tables`` (benchmark targets to keep out)."""
    import pandas as pd

    from xtalloop.errors import DataError

    ids: set[str] = set()
    for table in tables:
        try:
            frame = pd.read_csv(table, usecols=["material_id"])
        except (ValueError, OSError) as exc:
            raise DataError(f"--exclude {table}: cannot read its material_id column "
                            f"({str(exc).splitlines()[0]})") from None
        ids |= set(frame["material_id"].astype(str))
    return ids


@generator_app.command("train-wyckoff")
@user_errors
def train_wyckoff_command(
    data: list[Path] = typer.Option(..., "--data", help="Structure CSV with a 'cif' column "
                                    "(repeatable: the tables are pooled)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (.pt); its training log "
                             "goes beside it (.json)."),
    exclude: list[Path] = typer.Option([], "--exclude", help="CSV whose material_id rows are "
                                       "left out of training (repeatable), e.g. val splits."),
    preset: WyckoffPreset = typer.Option(WyckoffPreset.small, help="Model size."),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (default: the preset's)."),
    minutes: float | None = typer.Option(None, min=0.01, help="Stop training after this "
                                         "many minutes (data description not counted)."),
    device: str = typer.Option("cpu", help="Torch device: cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of initialisation and shuffling."),
    workers: int = typer.Option(2, min=1, help="Processes describing crystals (cached)."),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads."),
    limit: int | None = typer.Option(None, min=1, help="Use at most this many crystals."),
) -> None:
    """Train the Wyckoff generator (space group, Wyckoff sites, coordinates, lattice)."""
    import torch

    from xtalloop.devices import check_device
    from xtalloop.generators.wyckoff.model import WyckoffModelConfig
    from xtalloop.generators.wyckoff.train import WyckoffTrainConfig, train_wyckoff
    from xtalloop.preflight import check_output_file

    check_output_file(out, "--out", force=True, example="wyckoff.pt")
    for table in data:
        check_structure_table(str(table))
    check_device(device)
    set_threads(threads)
    skip = excluded_ids(list(exclude))
    started = time.monotonic()
    crystals = described_crystals(data, skip, workers)
    if limit is not None:
        crystals = crystals[:limit]
    described = time.monotonic() - started
    model_settings, train_settings = PRESETS[preset.value]
    train_config = WyckoffTrainConfig(**{**train_settings, **({"epochs": epochs} if epochs
                                                               else {})},
                                      minutes=minutes, seed=seed, device=device)
    typer.echo(f"training the {preset.value} Wyckoff model on {len(crystals)} crystals "
               f"({len(skip)} excluded ids; up to {train_config.epochs} epochs"
               + (f", {minutes} min" if minutes else "") + f", {device})")
    metadata = {"data": [str(p) for p in data], "exclude": [str(p) for p in exclude],
                "preset": preset.value, "torch": str(torch.__version__),
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                "describe_seconds": round(described, 1)}
    log = train_wyckoff(crystals, out, WyckoffModelConfig(**model_settings), train_config,
                        metadata)
    out.with_suffix(".json").write_text(json.dumps({**metadata, **log}, indent=1))
    size = out.stat().st_size / 1e6
    typer.echo(f"wrote {out} ({size:.1f} MB): best epoch {log.get('best_epoch')} of "
               f"{len(log['epochs'])}, validation loss {log['best_val_loss']}, "
               f"{log['seconds'] / 60:.1f} min training")


def described_crystals(data: list[Path], skip: set[str], workers: int) -> list:
    """The Wyckoff descriptions of every crystal of ``data`` not in ``skip``, each once."""
    from xtalloop.generators.wyckoff.sites import describe_table

    crystals = []
    for table in data:
        typer.echo(f"describing the crystals of {table} by Wyckoff positions (cached)")
        crystals += describe_table(table, exclude_ids=skip, workers=workers)
    unique = {}
    for crystal in crystals:  # a crystal in two tables (same material_id) counts once
        unique.setdefault(crystal.material_id or id(crystal), crystal)
    return list(unique.values())


@generator_app.command("wyckoff-skeletons")
@user_errors
def wyckoff_skeletons_command(
    checkpoint: Path = typer.Argument(..., help="Wyckoff checkpoint to give a skeleton bank."),
    data: list[Path] = typer.Option(..., "--data", help="Its training tables (repeatable)."),
    exclude: list[Path] = typer.Option([], "--exclude", help="CSV whose material_id rows are "
                                       "left out (repeatable), as in its training."),
    workers: int = typer.Option(2, min=1, help="Processes describing crystals (cached)."),
) -> None:
    """Give a Wyckoff checkpoint trained before skeleton banks its bank (weights unchanged).

    Training writes the bank itself; this is for older checkpoints.
    """
    from xtalloop.generators.wyckoff.checkpoint import add_skeletons, check_wyckoff

    check_wyckoff(checkpoint)
    for table in data:
        check_structure_table(str(table))
    crystals = described_crystals(data, excluded_ids(list(exclude)), workers)
    n = add_skeletons(checkpoint, crystals)
    typer.echo(f"wrote {checkpoint}: {n} skeletons of {len(crystals)} crystals "
               f"({checkpoint.stat().st_size / 1e6:.1f} MB)")


# --- `xtalloop generator sample` with a Wyckoff checkpoint ---------------------------


def is_wyckoff_checkpoint(path: Path) -> bool:
    """Whether ``path`` carries the Wyckoff format tag (read weights-only, memory-mapped).

    A file that cannot be read this way is not one: the diffusion reader then
    reports what is wrong with it.
    """
    import torch

    from xtalloop.generators.wyckoff.checkpoint import FORMAT

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged, foreign or unsafe: not a Wyckoff checkpoint
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


def sample_kind(checkpoint: Path | None, kind: str | None) -> str:
    """``"wyckoff"`` or ``"diffusion"``: ``--kind``, else the checkpoint's format.

    Raises
    ------
    ConfigError, DataError
        An unknown ``--kind``, no checkpoint for the diffusion generator, a missing file.
    """
    from xtalloop.errors import ConfigError, DataError

    if kind not in (None, "diffusion", "wyckoff"):
        raise ConfigError(f"--kind: diffusion or wyckoff, not {kind!r}")
    if kind == "wyckoff":
        return kind
    if checkpoint is None:
        raise ConfigError("--checkpoint is needed (or --kind wyckoff: the shipped Wyckoff model)")
    if not checkpoint.is_file():
        raise DataError(f"checkpoint not found: {checkpoint}")
    if kind == "diffusion":
        return kind
    return "wyckoff" if is_wyckoff_checkpoint(checkpoint) else "diffusion"


def sample_wyckoff(checkpoint: Path | None, reduced, n: int, seed: int, out: Path,
                   max_atoms: int | None, device: str, symprec: float) -> None:
    """Sample ``n`` structures of ``reduced`` from a Wyckoff checkpoint and write CIFs.

    ``checkpoint`` ``None`` is the shipped model; ``device`` ``auto`` is CUDA
    when there is one. The composition is checked against what the model can
    build before any sampling (one-line errors).
    """
    import torch

    import xtalloop.generators.wyckoff.checkpoint as wyckoff_checkpoints
    from xtalloop.errors import CompositionError
    from xtalloop.generators.wyckoff import WyckoffGenerator
    from xtalloop.generators.wyckoff.data import MAX_ELEMENTS
    from xtalloop.generators.wyckoff.tables import MAX_Z

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = checkpoint or wyckoff_checkpoints.DEFAULT_CHECKPOINT
    generator = WyckoffGenerator(checkpoint=str(path), max_atoms=max_atoms, device=device)
    loaded = generator.load()  # CheckpointError: one line naming the file
    too_heavy = [el.symbol for el in reduced.elements if el.Z > MAX_Z]
    if too_heavy:
        raise CompositionError(f"{', '.join(too_heavy)} beyond Z={MAX_Z}, the largest "
                               "atomic number the Wyckoff model knows")
    if len(reduced.elements) > MAX_ELEMENTS:
        raise CompositionError(f"{reduced.reduced_formula} has {len(reduced.elements)} "
                               f"elements; the Wyckoff model places at most {MAX_ELEMENTS}")
    if reduced.num_atoms > generator.cell_limit:
        raise CompositionError(f"no cell of {reduced.reduced_formula} fits within "
                               f"{generator.cell_limit} atoms (pass --max-atoms)")
    typer.echo(f"sampling {reduced.reduced_formula} from the Wyckoff model "
               f"{path} (sha256 {loaded.checkpoint_hash[:12]}, "
               f"cells up to {generator.cell_limit} atoms)")
    write_samples(generator.generate(reduced, n, seed), reduced, seed, out, symprec)


def write_samples(candidates: list, reduced, seed: int, out: Path, symprec: float) -> None:
    """One CIF per candidate in ``out`` (``FORMULA_sSEED_NNN.cif``), one line each."""
    from xtalloop.generators.describe import sample_line
    from xtalloop.preflight import writing_into

    with writing_into(out, "--out"):
        for candidate in candidates:
            name = f"{reduced.reduced_formula}_s{seed}_{candidate.index:03d}.cif"
            (out / name).write_text(candidate.structure.to(fmt="cif"))
            typer.echo(sample_line(name, candidate.structure, symprec))
    typer.echo(f"wrote {len(candidates)} CIFs to {out}")


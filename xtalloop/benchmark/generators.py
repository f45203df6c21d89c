"""Which generators ``xtalloop benchmark csp`` compares, and how each is built and checked.

Every generator is built (checkpoints loaded, reference tables found) before
any composition runs, so a missing or damaged file stops the benchmark with
one line instead of failing every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from xtalloop.errors import ConfigError, DataError


class GeneratorKind(str, Enum):
    """Generators the benchmark can run."""

    random_symmetric = "random_symmetric"
    prototype_substitution = "prototype_substitution"
    diffusion = "diffusion"
    templates_then_diffusion = "templates+diffusion"
    wyckoff = "wyckoff"
    templates_then_wyckoff = "templates+wyckoff"


DEFAULT_MAX_ATOMS = 20  # MP-20's largest cell

#: Generators that substitute into templates (they need a reference table).
TEMPLATE_KINDS = frozenset({GeneratorKind.prototype_substitution,
                            GeneratorKind.templates_then_diffusion,
                            GeneratorKind.templates_then_wyckoff})
#: Generators that sample the Wyckoff model (they need a Wyckoff checkpoint).
WYCKOFF_KINDS = frozenset({GeneratorKind.wyckoff, GeneratorKind.templates_then_wyckoff})


def build_generators(
    kinds: Sequence[GeneratorKind],
    max_atoms: int | None = None,
    checkpoint: Path | None = None,
    reference_csv: str | None = None,
    n_steps: int | None = None,
    device: str = "cpu",
    default_max_atoms: int = DEFAULT_MAX_ATOMS,
    wyckoff_checkpoint: Path | None = None,
) -> list[Any]:
    """One generator per distinct kind, in the order given, checked before any run.

    Parameters
    ----------
    kinds
        Generators to build (repeats are dropped).
    max_atoms
        Largest cell a generator may return (``None``: ``default_max_atoms``, or
        for the diffusion generator its checkpoint's largest training cell).
    checkpoint
        Diffusion checkpoint (needed for ``diffusion`` and ``templates+diffusion``,
        which interleaves prototype substitution's candidates with the model's).
    reference_csv
        Prototype table of ``prototype_substitution`` (``None``: its default).
    n_steps
        Reverse steps of the diffusion sampler (``None``: all).
    device
        Torch device of the diffusion generator.
    default_max_atoms
        Largest cell of the template, random and Wyckoff generators when ``max_atoms``
        is None.
    wyckoff_checkpoint
        Wyckoff checkpoint (needed for ``wyckoff`` and ``templates+wyckoff``); it
        is loaded once, here, and shared by both.

    Raises
    ------
    ConfigError, DataError
        A diffusion or Wyckoff generator without a readable checkpoint, a missing
        reference table.
    """
    generators: list[Any] = []
    cap = max_atoms or default_max_atoms
    if WYCKOFF_KINDS.intersection(kinds):
        wyckoff = wyckoff_generator(cap, wyckoff_checkpoint, device)
    for kind in dict.fromkeys(kinds):
        if kind is GeneratorKind.random_symmetric:
            from xtalloop.generators.random_symmetric import RandomSymmetricGenerator

            generators.append(RandomSymmetricGenerator(max_atoms=cap))
        elif kind is GeneratorKind.prototype_substitution:
            generators.append(_prototype_generator(cap, reference_csv))
        elif kind is GeneratorKind.diffusion:
            generators.append(_diffusion_generator(max_atoms, checkpoint, n_steps, device))
        elif kind is GeneratorKind.wyckoff:
            generators.append(wyckoff)
        elif kind is GeneratorKind.templates_then_wyckoff:
            from xtalloop.generators.pooled import PooledGenerator

            generators.append(PooledGenerator([_prototype_generator(cap, reference_csv), wyckoff],
                                              shares=(2, 1), name=kind.value, dedup=True))
        else:
            from xtalloop.generators.pooled import PooledGenerator

            generators.append(PooledGenerator(
                [_prototype_generator(cap, reference_csv),
                 _diffusion_generator(max_atoms, checkpoint, n_steps, device)],
                name=kind.value))
    return generators


def _prototype_generator(max_atoms: int, reference_csv: str | None) -> Any:
    from xtalloop.generators.prototype_substitution import (
        DEFAULT_REFERENCE_CSV,
        PrototypeSubstitutionGenerator,
    )

    reference = reference_csv or DEFAULT_REFERENCE_CSV
    if not Path(reference).is_file():
        raise DataError(f"reference table of prototype_substitution not found: {reference} "
                        "(pass --reference-csv)")
    return PrototypeSubstitutionGenerator(reference_csv=str(reference), max_atoms=max_atoms)


def _diffusion_generator(
    max_atoms: int | None, checkpoint: Path | None, n_steps: int | None, device: str
) -> Any:
    from xtalloop.devices import check_device
    from xtalloop.generators.diffusion import DiffusionGenerator
    from xtalloop.generators.diffusion.checked import unreadable_checkpoint

    if checkpoint is None:
        raise ConfigError("--generator diffusion needs --checkpoint")
    if not checkpoint.is_file():
        raise DataError(f"checkpoint not found: {checkpoint}")
    check_device(device)
    generator = DiffusionGenerator(checkpoint=str(checkpoint), n_steps=n_steps, device=device,
                                   max_atoms=max_atoms)
    try:
        generator.load()  # fail now, not once per composition
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise DataError(unreadable_checkpoint(checkpoint, exc)) from None
    return generator


def checked_wyckoff(checkpoint: Path | None) -> Path:
    """A usable Wyckoff checkpoint, checked cheaply (memory-mapped); else one-line error.

    Raises
    ------
    ConfigError, DataError
        No checkpoint, a missing file, or one :func:`check_wyckoff` refuses.
    """
    from xtalloop.generators.wyckoff import check_wyckoff

    if checkpoint is None:
        raise ConfigError("--generator wyckoff needs --wyckoff-checkpoint")
    if not checkpoint.is_file():
        raise DataError(f"Wyckoff checkpoint not found: {checkpoint} (pass --wyckoff-checkpoint)")
    return check_wyckoff(checkpoint)


def wyckoff_generator(max_atoms: int, checkpoint: Path | None, device: str):
    """The benchmark's Wyckoff generator, its checkpoint loaded once, before any composition."""
    from xtalloop.devices import check_device
    from xtalloop.generators.wyckoff import WyckoffGenerator

    checkpoint = checked_wyckoff(checkpoint)
    check_device(device)
    generator = WyckoffGenerator(checkpoint=str(checkpoint), max_atoms=max_atoms, device=device)
    generator.load()  # CheckpointError (a DataError): one line naming the file
    return generator

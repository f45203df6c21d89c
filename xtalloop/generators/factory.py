"""Build a generator from its configuration (a ``sources`` entry of a run config)."""

from __future__ import annotations

from typing import Any

from xtalloop.errors import ConfigError
from xtalloop.generators.base import Generator


def build_generator(source: dict[str, Any], max_atoms: int) -> Generator:
    """The :class:`~xtalloop.generators.base.Generator` a source config describes.

    Parameters
    ----------
    source
        A dumped ``RandomSymmetricSource``, ``PrototypeSubstitutionSource``,
        ``DiffusionSource`` or ``WyckoffSource`` (``kind`` picks the class; ``n`` is
        ignored here).
    max_atoms
        Largest cell the generator may return.
    """
    settings = {k: v for k, v in source.items() if k not in ("kind", "n")}
    kind = source.get("kind", "random_symmetric")
    if kind == "random_symmetric":
        from xtalloop.generators.random_symmetric import RandomSymmetricGenerator

        settings["formula_units"] = tuple(settings.get("formula_units", (1, 2, 4, 8)))
        return RandomSymmetricGenerator(max_atoms=max_atoms, **settings)
    if kind == "prototype_substitution":
        from xtalloop.generators.prototype_substitution import PrototypeSubstitutionGenerator

        return PrototypeSubstitutionGenerator(max_atoms=max_atoms, **settings)
    if kind == "diffusion":
        from xtalloop.generators.diffusion import DiffusionGenerator

        return DiffusionGenerator(max_atoms=max_atoms, **settings)
    if kind == "wyckoff":
        from xtalloop.generators.wyckoff import WyckoffGenerator

        return WyckoffGenerator(max_atoms=max_atoms, **settings)
    raise ConfigError(f"unknown generator kind {kind!r}")

"""Run configuration: YAML files validated by pydantic.

A configuration is data. :func:`load_config` reads a YAML file into a
:class:`RunConfig`; any unknown key or bad value becomes one
:class:`~xtalloop.errors.ConfigError` line naming the file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xtalloop.composition import parse_composition
from xtalloop.errors import CompositionError, ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomSymmetricSource(_Section):
    """Random symmetric Wyckoff sampling with PyXtal."""

    kind: Literal["random_symmetric"] = "random_symmetric"
    n: int = Field(24, ge=1, description="candidates per composition")
    formula_units: tuple[int, ...] = (1, 2, 4, 8)
    volume_factor: float = Field(1.1, gt=0)
    min_distance_factor: float = Field(0.6, ge=0)
    space_group_prior: Literal["mp20", "uniform"] = "mp20"
    prior_power: float = Field(1.0, ge=0)


class PrototypeSubstitutionSource(_Section):
    """Known structures of the same stoichiometry with the target's elements swapped in."""

    kind: Literal["prototype_substitution"]
    n: int = Field(10, ge=1)
    reference_csv: str = "../shared/data/mp_20/train_partial.csv.gz"
    explore: float = Field(0.0, ge=0)


class DiffusionSource(_Section):
    """A trained diffusion-model checkpoint."""

    kind: Literal["diffusion"]
    n: int = Field(10, ge=1)
    checkpoint: str
    n_steps: int | None = Field(None, ge=1)
    device: str = "cpu"


GeneratorSource = Annotated[
    RandomSymmetricSource | PrototypeSubstitutionSource | DiffusionSource,
    Field(discriminator="kind"),
]


class GenerateConfig(_Section):
    """Which generators feed the candidate pool, and the seed that reproduces it."""

    seed: int = 0
    max_atoms: int = Field(8, ge=1, le=200, description="largest cell a generator may return")
    sources: tuple[GeneratorSource, ...] = (RandomSymmetricSource(),)

    @field_validator("sources", mode="before")
    @classmethod
    def _default_kind(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [
                {"kind": "random_symmetric", **item} if isinstance(item, dict) else item
                for item in value
            ]
        return value

    @field_validator("sources")
    @classmethod
    def _not_empty(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("at least one generator source is needed")
        return value


class PrefilterConfig(_Section):
    """ML relaxation, deduplication and hull ranking."""

    model: str = Field("chgnet", description="'chgnet', 'emt' or a MACE model file path")
    device: str = "cpu"
    fmax: float = Field(0.05, gt=0)
    steps: int = Field(300, ge=1)
    top_k: int = Field(2, ge=1)
    max_e_above_hull: float | None = Field(None, ge=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value in ("chgnet", "emt"):
            return value
        if not value.endswith(".model"):
            raise ValueError(
                f"unknown model {value!r}: use 'chgnet', 'emt' or a path to a MACE .model file"
            )
        if not Path(value).expanduser().is_file():
            raise ValueError(f"MACE model file {value!r} does not exist")
        return value


class DFTConfig(_Section):
    """DFT validation of the picks (GPAW plane waves through atomate2)."""

    code: Literal["gpaw"] = "gpaw"
    xc: Literal["PBE", "LDA", "PBEsol"] = "PBE"
    ecut: float | None = Field(None, gt=100, description="eV; null picks it from the elements")
    kpoint_density: float = Field(3.0, gt=0, description="k-points per Å⁻¹")
    smearing_width: float = Field(0.05, ge=0)
    fmax: float = Field(0.03, gt=0)
    steps: int = Field(60, ge=1)


class StoreConfig(_Section):
    """Where jobs, validated structures and references live."""

    backend: Literal["embedded"] = "embedded"
    path: str = Field("xtalloop-data", description="folder of the embedded database")

    @property
    def resolved_path(self) -> Path:
        """The store folder, with ``~`` and environment variables expanded."""
        return Path(os.path.expandvars(self.path)).expanduser().resolve()


class RunConfig(_Section):
    """One crystal-structure-prediction run over a list of compositions."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    compositions: tuple[str, ...]
    charge_balance: Literal["strict", "off"] = "strict"
    generate: GenerateConfig = GenerateConfig()
    prefilter: PrefilterConfig = PrefilterConfig()
    dft: DFTConfig = DFTConfig()
    store: StoreConfig = StoreConfig()
    output_dir: str = "runs"

    @field_validator("compositions")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one composition")
        return value

    @model_validator(mode="after")
    def _check_compositions(self) -> RunConfig:
        for i, formula in enumerate(self.compositions):
            try:
                parse_composition(
                    formula,
                    max_atoms=self.generate.max_atoms,
                    charge_balance=self.charge_balance,
                )
            except CompositionError as exc:
                raise ValueError(f"compositions[{i}]: {exc}") from None
        return self

    def parsed_compositions(self):
        """The compositions as reduced pymatgen ``Composition`` objects."""
        return [
            parse_composition(f, max_atoms=self.generate.max_atoms,
                              charge_balance=self.charge_balance)
            for f in self.compositions
        ]


def _location(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("random_symmetric", "prototype_substitution", "diffusion"):
            continue  # discriminator tag pydantic inserts into the path
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def config_error_message(exc: ValidationError) -> str:
    """One line per problem, ``key.path: message``, most relevant first."""
    lines = []
    for error in exc.errors():
        where = _location(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("compositions["):
            where, _, message = message.partition(": ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a run configuration.

    Parameters
    ----------
    path
        YAML file.
    overrides
        Top-level keys that replace the file's values (e.g. from the command line).

    Raises
    ------
    ConfigError
        One line naming the file and the offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    data.update(overrides or {})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {config_error_message(exc)}") from None

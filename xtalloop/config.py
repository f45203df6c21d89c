"""Run configuration: YAML files validated by pydantic.

A configuration is data. :func:`load_config` reads a YAML file into a
:class:`RunConfig`; any unknown key or bad value becomes one
:class:`~xtalloop.errors.ConfigError` line naming the file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from xtalloop.composition import parse_composition

# the sections of other modules are imported from here too (one place to import config from)
from xtalloop.config_base import _check_model_spec, _Section  # noqa: F401
from xtalloop.config_checks import (  # noqa: F401
    MAX_CANDIDATES, CandidateCount, TorchDevice, config_error_message, device_choice,
)
from xtalloop.config_dft import DFTConfig, MlipSettings, VaspSettings  # noqa: F401
from xtalloop.config_sources import (  # noqa: F401
    DiffusionSource, GeneratorSource, PrototypeSubstitutionSource, RandomSymmetricSource,
    WyckoffSource,
)
from xtalloop.config_store import StoreConfig, SubmitConfig  # noqa: F401
from xtalloop.errors import CompositionError, ConfigError
from xtalloop.uri import (  # noqa: F401
    is_mongodb_uri, password_problem, redact_uri, uri_hosts, uri_netloc,
)
from xtalloop.yamlfile import read_yaml


class GenerateConfig(_Section):
    """Which generators feed the candidate pool, and the seed that reproduces it."""

    seed: int = Field(0, ge=0, lt=2**63,
                      description="0 to 2**63 - 1: stored as a 64-bit integer in MongoDB")
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
    """ML relaxation, deduplication and hull ranking.

    ``model: registry`` uses the newest model the loop trained and promoted
    (see ``learn``), and ``base_model`` until there is one. With an ensemble
    model, ``explore_weight`` trades low energy against high uncertainty: the
    picks are the lowest ``energy - explore_weight * spread`` (both
    eV/atom); 0 is pure exploitation. ``rerank_model`` lets a second, more
    accurate model order the ``rerank_top`` best distinct structures the first
    one found, at a fraction of the cost of relaxing everything with it.
    ``prior_picks`` gives some of the ``top_k`` picks to the generators' own
    ranking: the energy model and the generator err on different compositions
    (:attr:`~xtalloop.rankers.ml_ranker.MLRanker.prior_picks`).
    """

    model: str = Field("chgnet", description="'chgnet', 'sevennet' ('sevennet:7net-0'), 'diep', "
                       "'emt', 'registry', a MACE model file "
                       "or a folder of MACE model files (an ensemble)")
    base_model: str = Field("chgnet", description="used by model: registry until the "
                            "registry has a promoted model")
    device: TorchDevice = "cpu"
    precision: Literal["float64", "float32"] = Field(
        "float64", description="MACE precision: float32 is about twice as fast on CPU")
    fmax: float = Field(0.05, gt=0)
    steps: int = Field(300, ge=1)
    top_k: int = Field(2, ge=1)
    max_e_above_hull: float | None = Field(None, ge=0)
    explore_weight: float = Field(0.0, ge=0, description="0: exploit; larger: explore")
    rerank_model: str | None = Field(None, description="a second model that relaxes the "
                                     "rerank_top best distinct structures again and picks "
                                     "among them (e.g. diep); null: none")
    rerank_top: int = Field(8, ge=1, description="distinct structures rerank_model relaxes")
    prior_picks: int = Field(0, ge=0, description="of the top_k picks, this many in the "
                             "generators' own ranking (prototype substitution, wyckoff) before "
                             "the rest by energy; 0: all by energy")

    @model_validator(mode="after")
    def _prior_picks_within_top_k(self) -> PrefilterConfig:
        if self.prior_picks > self.top_k:
            raise ValueError(f"prior_picks ({self.prior_picks}) is more than top_k "
                             f"({self.top_k}): at most top_k picks are made")
        return self

    @field_validator("rerank_model")
    @classmethod
    def _known_rerank_model(cls, value: str | None) -> str | None:
        return None if value is None else _check_model_spec(value, registry=False)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _check_model_spec(value, registry=True)

    @field_validator("base_model")
    @classmethod
    def _known_base_model(cls, value: str) -> str:
        return _check_model_spec(value, registry=False)


class ChgnetFinetuning(_Section):
    """How ``architecture: chgnet`` fine-tunes pretrained CHGNet
    (:class:`~xtalloop.learn.chgnet_finetune.ChgnetFinetuner`)."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimiser steps at most, whatever "
                                  "epochs says: keeps a growing loop's training time flat")
    forces_weight: float = Field(1.0, ge=0, description="loss weight of forces (energy: 1)")
    trainable: tuple[str, ...] = Field(
        ("mlp", "atom_conv_layers", "bond_conv_layers", "angle_layers"), min_length=1,
        description="parameter-name prefixes trained (the embeddings stay frozen)")
    replay_neighbours: int = Field(4, ge=0, description="parent-labelled AFLOW prototypes "
                                   "per training composition mixed in (xtalloop.learn.replay)")
    replay_library: int = Field(60, ge=0, description="parent-labelled AFLOW library "
                                "structures mixed in")
    replay_weight: float = Field(1.0, ge=0, description="loss weight of a replay structure")
    replay_anchored: bool = Field(True, description="label a replay structure of a training "
                                  "composition by the parent's energy difference from its "
                                  "lowest DFT frame, added to that frame's DFT energy")


class EnergyModelLearning(_Section):
    """Train an energy model on the store's DFT data after each run; promote it if it
    beats its parent.

    ``architecture: chgnet`` (the default) fine-tunes pretrained CHGNet
    (element offsets refit, the interaction blocks and readout retrained;
    settings under ``chgnet``), which knows every element; on held-out GPAW
    data it cut CHGNet's energy error 5-fold where MACE trained here never
    beat it (benchmarks/README.md). ``architecture: mace`` trains a MACE
    ensemble (the other keys): a MACE
    parent that knows every element is fine-tuned; otherwise (CHGNet, new
    elements) the ensemble trains from scratch. The new model is tested
    against the parent on held-out structures (a fixed ``holdout_fraction``
    of them, by a hash of their ids) and promoted only if its energy error is
    lower and its hull F1 no lower; ``prefilter: {model: registry}`` then uses
    it in the next run.
    """

    enabled: bool = False
    architecture: Literal["mace", "chgnet"] = "chgnet"
    chgnet: ChgnetFinetuning = ChgnetFinetuning()
    ensemble_size: int = Field(3, ge=1, description="models, different seeds")
    bootstrap: bool = Field(False, description="members train on bootstrap resamples of the "
                            "structures (worse with few structures: benchmarks/README.md)")
    epochs: int = Field(60, ge=1)
    num_channels: int = Field(32, ge=1)
    max_L: int = Field(0, ge=0, le=2)
    r_max: float = Field(5.0, gt=1)
    lr: float = Field(0.01, gt=0, description="from scratch; fine-tuning uses lr / 10")
    batch_size: int = Field(4, ge=1)
    energy_weight: float = Field(10.0, ge=0, description="loss weight of energies per atom")
    forces_weight: float = Field(1.0, ge=0, description="loss weight of forces")
    stress_weight: float = Field(1.0, ge=0, description="loss weight of stresses")
    holdout_fraction: float = Field(0.2, ge=0, lt=1)
    max_frames_per_relaxation: int = Field(8, ge=1)
    min_structures: int = Field(4, ge=1, description="skip training with fewer DFT structures")
    seed: int = 0
    device: Annotated[str, device_choice("cpu, cuda or mps (MACE's choices)",
                                         r"cpu|cuda|mps")] = "cpu"


class GeneratorLearning(_Section):
    """Fine-tune the diffusion generator on the loop's DFT-validated stable structures.

    After each round of an active-learning loop, the checkpoint of the
    ``diffusion`` source is fine-tuned on every validated structure within
    ``stable_within`` eV/atom of the DFT hull (all rounds, these DFT
    settings); the next round samples from the new checkpoint.
    """

    enabled: bool = False
    epochs: int = Field(20, ge=1)
    lr_factor: float = Field(0.1, gt=0, description="learning rate = parent's lr × this")
    batch_size: int = Field(16, ge=1)
    stable_within: float = Field(0.1, ge=0, description="eV/atom above the DFT hull")
    min_structures: int = Field(2, ge=1, description="skip fine-tuning with fewer structures")
    seed: int = 0
    device: Annotated[str, device_choice("cpu, cuda or auto", r"cpu|cuda|auto")] = "cpu"


class LearnConfig(_Section):
    """What the loop learns from its DFT results."""

    energy_model: EnergyModelLearning = EnergyModelLearning()
    generator: GeneratorLearning = GeneratorLearning()


class ArityStage(_Section):
    """Rounds of an active-learning loop over compositions of some arities."""

    arities: tuple[int, ...] = Field(..., min_length=1,
                                     description="numbers of distinct elements, e.g. [2, 3]")
    rounds: int = Field(1, ge=1)

    @field_validator("arities")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(a < 1 for a in value):
            raise ValueError("arities are numbers of distinct elements: 1 or more")
        return value


class LoopConfig(_Section):
    """An active-learning loop: rounds of generate → prefilter → DFT → learn.

    Each round runs the compositions whose number of distinct elements is in
    the current ``schedule`` stage (all compositions without a schedule),
    with a new generator seed and the models the earlier rounds trained. The
    loop stops after ``rounds`` rounds (default: the schedule's total), when
    ``max_dft_calls`` DFT relaxations of picks are spent, when ``patience``
    rounds in a row found no new structure within ``stable_within`` eV/atom
    of the DFT hull, or when every formula of ``targets`` has one.
    """

    schedule: tuple[ArityStage, ...] = ()
    rounds: int | None = Field(None, ge=1, description="at most; default: the schedule's "
                               "total, or 2 without a schedule")
    dft_budget_per_round: int | None = Field(None, ge=1, description="DFT relaxations of "
                                             "picks per round, at most")
    max_dft_calls: int | None = Field(None, ge=1, description="stop once this many are spent")
    patience: int | None = Field(None, ge=1, description="stop after this many rounds without "
                                 "a new stable structure")
    targets: tuple[str, ...] = Field((), description="stop once each has a stable structure")
    stable_within: float = Field(0.1, ge=0, description="eV/atom above the DFT hull that "
                                 "counts as stable (hit rate, patience, targets)")

    @property
    def total_rounds(self) -> int:
        """Rounds the loop runs at most."""
        if self.rounds is not None:
            return self.rounds
        return sum(stage.rounds for stage in self.schedule) or 2

    def stage(self, round_index: int) -> ArityStage | None:
        """The schedule stage of round ``round_index`` (1-based); the last stage repeats."""
        if not self.schedule:
            return None
        done = 0
        for stage in self.schedule:
            done += stage.rounds
            if round_index <= done:
                return stage
        return self.schedule[-1]


class RunConfig(_Section):
    """One crystal-structure-prediction run over a list of compositions."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    compositions: tuple[str, ...]
    charge_balance: Literal["strict", "off"] = "strict"
    generate: GenerateConfig = GenerateConfig()
    prefilter: PrefilterConfig = PrefilterConfig()
    dft: DFTConfig = DFTConfig()
    learn: LearnConfig = LearnConfig()
    loop: LoopConfig | None = None
    store: StoreConfig = StoreConfig()
    submit: SubmitConfig = SubmitConfig()
    output_dir: str = "runs"

    @field_validator("charge_balance", mode="before")
    @classmethod
    def _yaml_boolean(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted off/no/false as False (and on/yes/true as True)
        if value is False:
            return "off"
        if value is True:
            return "strict"
        return value

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
        if self.loop is not None:
            self._check_loop(self.loop)
        if self.learn.generator.enabled and not any(
                s.kind in ("diffusion", "wyckoff") for s in self.generate.sources):
            raise ValueError("learn: generator fine-tuning needs a diffusion or wyckoff "
                             "source in generate.sources")
        return self

    def _check_loop(self, loop: LoopConfig) -> None:
        from pymatgen.core import Composition

        formulas = {Composition(f).reduced_formula: i for i, f in enumerate(self.compositions)}
        scheduled = {a for stage in loop.schedule for a in stage.arities}
        if loop.schedule:
            for formula, i in formulas.items():
                arity = len(Composition(formula).elements)
                if arity not in scheduled:
                    raise ValueError(f"compositions[{i}]: {formula} has {arity} elements, "
                                     "which no loop.schedule stage includes")
        for j, target in enumerate(loop.targets):
            try:
                reduced = Composition(target).reduced_formula
            except Exception:
                raise ValueError(f"loop: targets[{j}]: not a formula: {target!r}") from None
            if reduced not in formulas:
                raise ValueError(f"loop: targets[{j}]: {target} is not one of the compositions")

    def redacted_dump(self) -> dict[str, Any]:
        """``model_dump(mode="json")`` safe to store, log or print
        (see :meth:`StoreConfig.redacted_dump`)."""
        return {**self.model_dump(mode="json"), "store": self.store.redacted_dump()}

    def parsed_compositions(self):
        """The compositions as reduced pymatgen ``Composition`` objects."""
        return [
            parse_composition(f, max_atoms=self.generate.max_atoms,
                              charge_balance=self.charge_balance)
            for f in self.compositions
        ]


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
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    data.update(overrides or {})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {config_error_message(exc)}") from None

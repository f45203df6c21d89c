"""Generator sources of a run configuration (``generate.sources``), one class per kind.

Each source names a generator and its settings; ``kind`` picks the class.
Files a source points at (a template table, a model checkpoint) are checked
when the configuration is loaded, so a missing, damaged or unsafe file is one
config error naming the key, not a failure inside a job hours later.
:mod:`xtalloop.config` re-exports everything here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from xtalloop.config_base import _Section
from xtalloop.config_checks import CandidateCount, device_choice


class RandomSymmetricSource(_Section):
    """Random symmetric Wyckoff sampling with PyXtal."""

    kind: Literal["random_symmetric"] = "random_symmetric"
    n: CandidateCount = Field(24, ge=1, description="candidates per composition")
    formula_units: tuple[int, ...] = Field((1, 2, 4, 8), min_length=1)
    volume_factor: float = Field(1.1, gt=0)
    min_distance_factor: float = Field(0.6, ge=0)
    space_group_prior: Literal["mp20", "uniform"] = "mp20"
    prior_power: float = Field(1.0, ge=0)

    @field_validator("formula_units")
    @classmethod
    def _positive_units(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(z < 1 for z in value):
            raise ValueError(f"formula units per cell are 1 or more, not {min(value)}")
        return value


class PrototypeSubstitutionSource(_Section):
    """Known structures of the same stoichiometry with the target's elements swapped in."""

    kind: Literal["prototype_substitution"]
    n: CandidateCount = Field(10, ge=1)
    reference_csv: str = Field("../shared/data/mp_20/train_partial.csv.gz", validate_default=True,
                               description="CSV of known structures with a 'cif' column, "
                               "relative to the working directory; 'aflow': the AFLOW "
                               "prototypes shipped with pymatgen; 'aflow+<csv>': both")
    explore: float = Field(0.0, ge=0)

    @field_validator("reference_csv")
    @classmethod
    def _readable_table(cls, value: str) -> str:
        from xtalloop.generators.prototype_library import split_reference
        from xtalloop.preflight import check_structure_table

        csv = split_reference(value)[1]
        if csv is not None:
            check_structure_table(csv)
        return value


class DiffusionSource(_Section):
    """A trained diffusion-model checkpoint."""

    kind: Literal["diffusion"]
    n: CandidateCount = Field(10, ge=1)
    checkpoint: str
    n_steps: int | None = Field(None, ge=1)
    device: Annotated[str, device_choice("cpu, cuda, cuda:N, mps or auto",
                                   r"cpu|mps|auto|cuda(:\d+)?")] = "cpu"

    @field_validator("checkpoint")
    @classmethod
    def _readable_checkpoint(cls, value: str) -> str:
        """A missing, damaged or unsafe checkpoint is found now, not inside a job."""
        from xtalloop.generators.diffusion.checkpoint import CheckpointError, check_checkpoint

        try:
            check_checkpoint(value)
        except CheckpointError as exc:
            raise ValueError(str(exc)) from None
        return value


class WyckoffSource(_Section):
    """The trained symmetry-aware Wyckoff generator (space group, Wyckoff sites, lattice).

    Every candidate has its space group by construction, and the cell size is
    the model's choice up to ``generate.max_atoms``.
    """

    kind: Literal["wyckoff"]
    n: CandidateCount = Field(10, ge=1)
    checkpoint: str | None = Field(None, validate_default=True,
                                   description="Wyckoff checkpoint (xtalloop generator "
                                   "train-wyckoff); null: the one shipped with xtalloop")
    temperature: float = Field(1.0, gt=0, description="< 1 sharpens, > 1 flattens the "
                               "model's choices")
    skeleton_coordinates: bool = Field(True, description="dress sampled skeletons with the "
                                       "free coordinates of training crystals of the same "
                                       "skeleton (the checkpoint's bank); false: the "
                                       "model's own coordinates")
    skeleton_proposals: bool = Field(True, description="also score every bank skeleton "
                                     "that can hold the composition and rank them with the "
                                     "samples (needs skeleton_coordinates)")
    device: Annotated[str, device_choice("cpu, cuda, cuda:N or mps",
                                         r"cpu|mps|cuda(:\d+)?")] = "cpu"

    @field_validator("checkpoint")
    @classmethod
    def _readable_checkpoint(cls, value: str | None) -> str | None:
        """The checkpoint (the shipped one too) is checked now, not inside a job."""
        from xtalloop.generators.diffusion.checkpoint import CheckpointError
        from xtalloop.generators.wyckoff.checkpoint import DEFAULT_CHECKPOINT, check_wyckoff

        try:
            check_wyckoff(value if value is not None else DEFAULT_CHECKPOINT)
        except CheckpointError as exc:
            raise ValueError(str(exc)) from None
        return value


GeneratorSource = Annotated[
    RandomSymmetricSource | PrototypeSubstitutionSource | DiffusionSource | WyckoffSource,
    Field(discriminator="kind"),
]

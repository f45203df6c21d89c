"""Typed outputs of xtalloop's jobs.

Each job that other jobs, the runner or the report read returns one of these
pydantic models. Jobs that never replace themselves also declare it
(jobflow's ``@job(output_schema=...)``), so jobflow validates what they return
and a reference to a field the schema lacks fails when the flow is built, not
hours later inside a worker; jobflow would apply a declared schema to the
reference a replacing flow leaves too, so the others only return the model.
Extra fields are allowed, so a newer job's output still loads where an older
reader runs; missing required fields are errors.

The stored documents (validated structures, reference phases) have their
own schemas in :mod:`xtalloop.store`; these are what jobs hand each other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymatgen.core import Structure


class _Output(BaseModel):
    model_config = ConfigDict(extra="allow")


class ValidatedRow(_Output):
    """One DFT-validated pick of a composition, as the record job summarises it."""

    uuid: str
    outcome: str = Field(description="'new', 'improved' or 'duplicate' (see ResultsDB.add_validated)")
    formula: str
    space_group: str
    space_group_number: int
    energy_per_atom: float
    converged: bool
    generator: str | None = None
    seed: int | None = None
    index: int | None = None
    ml_energy_per_atom: float | None = None
    ml_e_above_hull: float | None = None
    e_above_hull: float | None = None
    structure: dict[str, Any] | None = None

    @field_validator("structure", mode="before")
    @classmethod
    def _structure_dict(cls, value: Any) -> Any:
        """A ``Structure`` (what jobflow decodes a stored output into) as its dict."""
        return value.as_dict() if isinstance(value, Structure) else value


class FailedPick(_Output):
    """A pick whose DFT did not finish, and why."""

    rank: int
    reason: str
    provenance: dict[str, Any] = Field(default_factory=dict)
    replaced_by: int | None = None


class CompositionValidation(_Output):
    """Output of :func:`~xtalloop.workflows.validate.record_validation`: one composition's DFT results."""

    formula: str
    validated: list[ValidatedRow] = Field(default_factory=list)
    failed: list[FailedPick] = Field(default_factory=list)
    funnel: dict[str, int] = Field(default_factory=dict)
    references: dict[str, float] = Field(default_factory=dict)
    ml_e_above_hull: list[float] = Field(default_factory=list)
    settings_key: str | None = None
    energy_model: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class EnergyModelTraining(_Output):
    """Output of the energy-model training job: what was trained and whether it was promoted."""

    model_id: str | None = None
    parent: str | None = None
    promoted: bool = False
    reason: str
    fine_tuned: bool | None = None
    base: str | None = None
    """The weights training started from (``chgnet``: the pretrained model), when not
    ``parent``, the model the new one was judged against."""
    metrics: dict[str, Any] | None = None
    parent_metrics: dict[str, Any] | None = None
    n_frames: dict[str, int] | None = None
    n_structures: dict[str, int] | None = None


class GeneratorTraining(_Output):
    """Output of the generator fine-tuning job."""

    checkpoint: str | None = None
    parent: str | None = None
    reason: str
    n_structures: int = 0
    structure_ids: list[str] = Field(default_factory=list)
    final_loss: float | None = None


class RoundRecord(_Output):
    """The record of one round of an active-learning loop (also stored in ``rounds``)."""

    loop_id: str
    round: int
    run_id: str
    status: str
    funnel: dict[str, int] = Field(default_factory=dict)
    dft_calls: int = 0
    validated: int = 0
    stable: int = 0
    new_stable: int = 0
    hit_rate: float | None = None
    stable_ids: list[str] = Field(default_factory=list)
    compositions_validated: list[str] = Field(default_factory=list)
    energy_model: dict[str, Any] | None = None
    generator: dict[str, Any] | None = None


class LoopEnd(_Output):
    """Output of the loop's last job: why it stopped."""

    loop_id: str
    rounds_completed: int
    stopped_by: str


def plain(value: Any) -> Any:
    """A job output as plain JSON-ready data (models dumped, containers walked)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not str(k).startswith("@")}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

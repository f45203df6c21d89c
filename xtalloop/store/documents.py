"""Schemas of the stored documents, and the merge rule that follows from them.

In the spirit of emmet's and atomate2's task documents: a validated
structure is its identity (formula, chemical system, uuid), its bookkeeping
(which runs found it, the results it replaced, timestamps) and *one DFT
result*: everything else. :class:`DFTResult` declares the result's fields;
:class:`ValidatedStructure` adds identity and bookkeeping. When a better
calculation of the same structure arrives, :func:`merge_result` replaces the
whole result, declared fields and any extra field alike, and keeps the old one
in ``previous_results``: only identity and bookkeeping fields survive a
replacement, so a field added to the documents later can never be left stale
by a merge that forgot to name it. Extra fields are allowed and kept, so
nothing a job writes is lost.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pymatgen.core import Composition

from xtalloop.errors import StoreError

ENERGY_TOLERANCE = 1e-6
"""eV/atom: a new converged result must be this much lower to replace the stored one."""


class _Open(BaseModel):
    """A part of a document: typed where xtalloop reads it, open to any other field."""

    model_config = ConfigDict(extra="allow")


class RunRef(_Open):
    """The run a result came from."""

    id: str
    name: str | None = None


class DFTInfo(_Open):
    """How the DFT result was computed."""

    settings_key: str
    converged: bool
    code: str | None = None
    code_version: str | None = None
    settings: dict[str, Any] | None = None
    scf_remedies: list[Any] | None = None
    n_ionic_steps: int | None = None
    elapsed_time: float | None = None
    job_uuid: str | None = None
    dir_name: str | None = None


class GeneratorProvenance(_Open):
    """Which generator proposed the structure: name, seed and index in its sample."""

    generator: str | None = None
    seed: int | None = None
    index: int | None = None


class PrefilterProvenance(_Open):
    """What the ML prefilter said about the structure before DFT."""

    energy_model: dict[str, Any] | None = None
    """``name`` and ``version`` of the energy model."""
    energy_per_atom: float | None = None
    e_above_hull: float | None = None
    rank: int | None = None
    n_duplicates: int | None = None
    picked_by: str | None = None
    """``energy`` or ``prior`` (the generators' own ranking, ``prefilter.prior_picks``);
    ``None`` in documents written before the choice existed."""


class DFTResult(_Open):
    """One DFT relaxation of a structure and where the structure came from.

    Every field here (and every extra field) is replaced as a whole when a
    better result arrives; the replaced one goes to ``previous_results``.
    """

    structure: dict[str, Any]
    """The relaxed structure (``Structure.as_dict()``)."""
    initial_structure: dict[str, Any] | None = None
    nsites: int | None = None
    space_group: str | None = None
    space_group_number: int | None = None
    energy: float | None = None
    """eV, the whole cell."""
    energy_per_atom: float
    forces: list[list[float]] | None = None
    """eV/Å, one row per site."""
    stress_kbar: list[list[float]] | list[float] | None = None
    trajectory: list[dict[str, Any]] | None = None
    """The ionic steps (structure, energy, forces, stress): the energy model trains on them.

    Inline only in documents stored before the file store; now the steps are
    in the store's files (:func:`~xtalloop.store.files.put_trajectory`)."""
    trajectory_ref: str | None = None
    """``store:sha256:<digest>`` of the steps (read with :func:`~xtalloop.store.files.trajectory_of`)."""
    n_frames: int | None = None
    """How many ionic steps ``trajectory_ref`` holds."""
    e_above_hull: float | None = None
    """Derived from ``energy_per_atom``: recomputed after every store of a chemical system."""
    dft: DFTInfo
    generator: GeneratorProvenance | None = None
    prefilter: PrefilterProvenance | None = None
    run: RunRef
    """The run that computed this result (``found_in_runs`` lists every run that found it)."""
    xtalloop_version: str | None = None


class ValidatedStructure(DFTResult):
    """A DFT-validated structure: identity, bookkeeping and its current :class:`DFTResult`."""

    formula: str
    chemsys: str
    elements: list[str]
    nelements: int
    uuid: str
    found_in_runs: list[str] = Field(default_factory=list)
    previous_results: list[dict[str, Any]] = Field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _identity(cls, data: Any) -> Any:
        """Derive the chemical system, elements, site count and a uuid when not given."""
        if not isinstance(data, dict) or not isinstance(data.get("formula"), str):
            return data
        data = dict(data)
        elements = sorted(el.symbol for el in Composition(data["formula"]).elements)
        data.setdefault("elements", elements)
        data.setdefault("chemsys", "-".join(elements))
        data.setdefault("nelements", len(elements))
        data.setdefault("uuid", str(uuidlib.uuid4()))
        if isinstance(data.get("structure"), dict) and "sites" in data["structure"]:
            data.setdefault("nsites", len(data["structure"]["sites"]))
        return data


class ReferenceResult(_Open):
    """One DFT calculation of an elemental reference phase."""

    structure: dict[str, Any]
    energy_per_atom: float
    converged: bool | None = None
    settings: dict[str, Any] | None = None
    dft_code: str | None = None
    dft_code_version: str | None = None
    trajectory: list[dict[str, Any]] | None = None
    trajectory_ref: str | None = None
    n_frames: int | None = None
    run: dict[str, Any] | None = None
    """The run that computed it (may be empty: a maker used outside a run)."""


class ReferencePhase(ReferenceResult):
    """The lowest-energy reference phase of an element for one DFT settings key."""

    element: str
    settings_key: str
    key: str
    previous_results: list[dict[str, Any]] = Field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "element" in data and "settings_key" in data:
            data = {**data, "key": f"{data['element']}:{data['settings_key']}"}
        return data


def kept_fields(schema: type[BaseModel], result: type[BaseModel]) -> frozenset[str]:
    """The fields of ``schema`` that a new result never replaces: those not in ``result``."""
    return frozenset(schema.model_fields) - frozenset(result.model_fields) | {"_id"}


VALIDATED_KEPT = kept_fields(ValidatedStructure, DFTResult)
REFERENCE_KEPT = kept_fields(ReferencePhase, ReferenceResult)


def validated(schema: type[BaseModel], doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` checked against ``schema``: the fields it gave (plus derived ones), typed.

    Raises
    ------
    StoreError
        One line naming the first bad field.
    """
    try:
        model = schema.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "document"
        raise StoreError(f"not a valid {schema.__name__} document: {where}: {err['msg']}"
                         ) from None
    from monty.json import jsanitize

    return jsanitize(model.model_dump(exclude_unset=True), allow_bson=True)


def result_part(doc: dict[str, Any], kept: frozenset[str]) -> dict[str, Any]:
    """The fields of ``doc`` that belong to its result (everything not in ``kept``)."""
    return {k: v for k, v in doc.items() if k not in kept}


def is_better(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether result ``new`` replaces ``old``: converged, and ``old`` unconverged or higher."""
    if not new["dft"]["converged"]:
        return False
    return (not old["dft"]["converged"]
            or new["energy_per_atom"] < old["energy_per_atom"] - ENERGY_TOLERANCE)


def merge_result(old: dict[str, Any], new: dict[str, Any], kept: frozenset[str],
                 better: bool, now: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge a new result of an already stored structure.

    Returns
    -------
    (merged, update)
        ``merged`` is the document after the merge; ``update`` the same change
        as one MongoDB update (``$set``, ``$unset``, ``$push``,
        ``$addToSet``), applied atomically to the stored document so that a
        concurrent ``$set`` of another field is not undone.
    """
    run_id = new["run"]["id"]
    update: dict[str, Any] = {"$set": {"updated_at": now},
                              "$addToSet": {"found_in_runs": run_id}}
    merged = dict(old, updated_at=now)
    merged["found_in_runs"] = [*old.get("found_in_runs", []),
                               *([] if run_id in old.get("found_in_runs", []) else [run_id])]
    if better:
        old_result, new_result = result_part(old, kept), result_part(new, kept)
        stale = sorted(set(old_result) - set(new_result))
        update["$set"].update(new_result)
        update["$push"] = {"previous_results": old_result}
        if stale:
            update["$unset"] = dict.fromkeys(stale, "")
        merged = {k: v for k, v in merged.items() if k not in stale}
        merged.update(new_result)
        merged["previous_results"] = [*old.get("previous_results", []), old_result]
    return merged, update

"""The validate stage: DFT relaxations of the picks and references, then the record."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Job, Maker, OnMissing, Response, job
from pymatgen.core import Composition, Structure

from xtalloop import __version__
from xtalloop.config import StoreConfig
from xtalloop.dft.gpaw import GpawRelaxMaker
from xtalloop.dft.result import DftMaker, DftParseError
from xtalloop.hull import energies_above_hull
from xtalloop.rankers.ml_ranker import RankedCandidate, Ranking, symmetrized_primitive
from xtalloop.store.files import FileStore, put_trajectory
from xtalloop.store.results import chemsys_of, open_results
from xtalloop.workflows.outputs import CompositionValidation, plain

logger = logging.getLogger(__name__)


@dataclass
class ValidateMaker(Maker):
    """Validate a ranking's picks with DFT and record them in the results store.

    The job replaces itself by a flow of DFT relaxations: one per pick and one
    per element whose reference phase is not yet stored for these DFT
    settings (started from the ML model's best elemental structure), followed
    by :func:`record_validation`, which computes DFT energies above the hull
    and stores the validated structures. A failed DFT job does not stop the
    record: its pick is reported as failed.

    Parameters
    ----------
    name
        Job name.
    relax_maker
        The DFT maker (:class:`~xtalloop.dft.gpaw.GpawRelaxMaker`, or
        :class:`~xtalloop.dft.vasp.VaspValidationMaker` for VASP).
    store
        The results store (a dumped :class:`~xtalloop.config.StoreConfig`).
    run
        ``{"id": ..., "name": ...}`` of the run, recorded with every result.
    replace_failed
        When a pick's DFT fails, validate the next-ranked candidate (the
        ranking's reserves) in its place.
    """

    name: str = "validate"
    relax_maker: DftMaker = field(default_factory=GpawRelaxMaker)
    store: dict[str, Any] = field(default_factory=lambda: StoreConfig().model_dump())
    run: dict[str, Any] = field(default_factory=dict)
    replace_failed: bool = False

    @job
    def make(self, ranking: Ranking) -> Response:
        """Replace this job by the DFT flow for ``ranking``."""
        formula = ranking.formula
        key = self.relax_maker.settings_key()
        pick_jobs = pick_relax_jobs(self.relax_maker, formula, ranking.picks)

        reference_jobs = {}
        if len(Composition(formula).elements) > 1:
            with open_results(StoreConfig(**self.store)) as db:
                for reference in ranking.references:
                    if db.get_reference(reference.element, key) is not None:
                        continue
                    relax = _named(self.relax_maker.make(reference.structure),
                                   f"{reference.element} reference")
                    relax.update_metadata({"element": reference.element, "role": "reference"})
                    reference_jobs[reference.element] = relax

        record = record_validation(
            formula,
            picks=ranking.picks,
            pick_outputs=[j.output for j in pick_jobs],
            pick_job_uuids=[j.uuid for j in pick_jobs],
            reference_outputs={el: j.output for el, j in reference_jobs.items()},
            settings_key=key,
            pick_settings=[self.relax_maker.settings_for(p.structure) for p in ranking.picks],
            reference_settings={
                r.element: self.relax_maker.settings_for(r.structure)
                for r in ranking.references if r.element in reference_jobs
            },
            store=self.store,
            run=self.run,
            funnel=ranking.funnel,
            energy_model=ranking.energy_model,
            ml_e_above_hull=ranking.relaxed_e_above_hull,
            reserves=ranking.reserves if self.replace_failed else [],
            relax_maker=self.relax_maker,
        )
        record.name = f"{formula} record"
        record.config.on_missing_references = OnMissing.NONE
        flow = Flow([*pick_jobs, *reference_jobs.values(), record], output=record.output,
                    name=f"{formula} DFT validation")
        return Response(replace=flow)


def pick_relax_jobs(relax_maker: DftMaker, formula: str,
                    picks: list[RankedCandidate]) -> list:
    """One DFT relaxation job per pick, named and tagged with its rank."""
    jobs = []
    for pick in picks:
        relax = _named(relax_maker.make(pick.structure), f"{formula} pick {pick.rank + 1}")
        relax.update_metadata({"formula": formula, "role": "pick", "rank": pick.rank})
        jobs.append(relax)
    return jobs


@job  # returns a CompositionValidation; no output_schema, as it may replace itself
def record_validation(
    formula: str,
    picks: list[RankedCandidate],
    pick_outputs: list[Any],
    pick_job_uuids: list[str],
    reference_outputs: dict[str, Any],
    settings_key: str,
    pick_settings: list[dict[str, Any]],
    reference_settings: dict[str, dict[str, Any]],
    store: dict[str, Any],
    run: dict[str, Any],
    funnel: dict[str, int],
    energy_model: dict[str, str],
    relax_maker: DftMaker,
    ml_e_above_hull: list[float] | None = None,
    reserves: list[RankedCandidate] | None = None,
    earlier: dict[str, Any] | None = None,
) -> CompositionValidation | Response:
    """Store the DFT results of one composition and compute their energies above hull.

    ``relax_maker`` made the DFT jobs and parses their outputs. With
    ``reserves``, each pick whose DFT failed is replaced by the next reserve:
    the job then replaces itself by the reserves' DFT relaxations and another
    record job, which adds its results to this one's (``earlier``).

    Returns
    -------
    CompositionValidation
        ``formula``, ``validated`` (one summary per stored pick), ``failed``
        (picks whose DFT did not finish, with the reason), ``funnel`` (counts per
        stage), ``references`` (DFT elemental energies per atom) and the ML
        and DFT hull energies for the funnel plot.
    """
    if isinstance(relax_maker, dict):  # its class could not be imported where the job runs
        raise TypeError(f"DFT maker {relax_maker.get('@module')}.{relax_maker.get('@class')} "
                        "cannot be imported here: define it at module level of an installed "
                        "module")
    key = settings_key
    elements = sorted(el.symbol for el in Composition(formula).elements)
    summaries: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with open_results(StoreConfig(**store)) as db, FileStore(db.config) as files:
        for element, task in reference_outputs.items():
            result, reason = _parsed(relax_maker, task)
            if result is None:
                logger.warning("DFT reference of %s failed: %s", element, reason)
                continue
            db.add_reference({
                "element": element,
                "settings_key": key,
                "settings": reference_settings.get(element, {}),
                "structure": result["structure"].as_dict(),
                "energy_per_atom": result["energy_per_atom"],
                "converged": result["converged"],
                "dft_code": relax_maker.code,
                "dft_code_version": result["code_version"],
                **put_trajectory(files, result["trajectory"], {"element": element}),
                "run": run,
            })

        new_uuids = []
        for pick, task, job_uuid, settings in zip(
            picks, pick_outputs, pick_job_uuids, pick_settings, strict=True
        ):
            result, reason = _parsed(relax_maker, task)
            if result is None:
                failed.append({"rank": pick.rank, "provenance": pick.provenance,
                               "reason": reason})
                continue
            structure: Structure = result["structure"]
            _, symbol, number = symmetrized_primitive(structure, 0.1)
            doc = {
                "formula": formula,
                "chemsys": chemsys_of(formula),
                "elements": elements,
                "nelements": len(elements),
                "nsites": len(structure),
                "structure": structure.as_dict(),
                "initial_structure": pick.structure.as_dict(),
                "space_group": symbol,
                "space_group_number": number,
                "energy": result["energy"],
                "energy_per_atom": result["energy_per_atom"],
                "forces": result["forces"],
                "stress_kbar": result["stress_kbar"],
                "e_above_hull": None,
                **put_trajectory(files, result["trajectory"], {"formula": formula}),
                "dft": {
                    "code": settings.get("code", relax_maker.code),
                    "code_version": result["code_version"],
                    "settings": settings,
                    "settings_key": key,
                    "converged": result["converged"],
                    "scf_remedies": result["scf_remedies"],
                    "n_ionic_steps": result["n_ionic_steps"],
                    "elapsed_time": result["elapsed_time"],
                    **{k: result[k] for k in ("energy_uncorrected", "energy_corrections",
                                              "relax_continuations") if k in result},
                    "job_uuid": job_uuid,
                    "dir_name": result["dir_name"],
                },
                "generator": pick.provenance,
                "prefilter": {
                    "energy_model": energy_model,
                    "energy_per_atom": pick.energy_per_atom,
                    "e_above_hull": pick.e_above_hull,
                    "rank": pick.rank,
                    "n_duplicates": pick.n_duplicates,
                    "picked_by": pick.picked_by,
                },
                "run": run,
                "xtalloop_version": __version__,
            }
            uuid, outcome = db.add_validated(doc)
            new_uuids.append(uuid)
            summaries.append({
                "uuid": uuid, "outcome": outcome, "formula": formula,
                "space_group": symbol, "space_group_number": number,
                "energy_per_atom": result["energy_per_atom"],
                "converged": result["converged"],
                "generator": pick.provenance.get("generator"),
                "seed": pick.provenance.get("seed"),
                "index": pick.provenance.get("index"),
                # the Wyckoff model's split: a known skeleton proposed, or one it sampled
                "proposed": pick.provenance.get("proposed"),
                "coordinates": pick.provenance.get("coordinates"),
                "ml_energy_per_atom": pick.energy_per_atom,
                "ml_e_above_hull": pick.e_above_hull,
                "picked_by": pick.picked_by,
                "structure": structure.as_dict(),
            })
            if len(elements) == 1 and result["converged"]:
                db.add_reference({
                    "element": elements[0], "settings_key": key,
                    "settings": doc["dft"]["settings"], "structure": doc["structure"],
                    "energy_per_atom": result["energy_per_atom"], "converged": True,
                    "dft_code": relax_maker.code, "dft_code_version": result["code_version"],
                    "run": run,
                })

        hull = _update_hull(db, elements, key)
        references = {
            el: ref["energy_per_atom"]
            for el in elements if (ref := db.get_reference(el, key)) is not None
        }
    if earlier:  # this record validates replacements: carry the earlier results along
        earlier = plain(earlier)
        summaries = [*earlier["validated"], *summaries]
        failed = [*earlier["failed"], *failed]
    for summary in summaries:
        summary["e_above_hull"] = hull.get(summary["uuid"], summary.get("e_above_hull"))
    result = {
        "formula": formula,
        "validated": summaries,
        "failed": failed,
        "funnel": {**funnel, "dft_validated": len(summaries)},
        "references": references,
        "ml_e_above_hull": list(ml_e_above_hull or []),
        "settings_key": key,
        "energy_model": energy_model,
    }
    new_failures = [f for f in failed if "replaced_by" not in f]
    if not reserves or not new_failures:
        output = CompositionValidation(**result)
        done = None
        if run.get("id"):
            with open_results(StoreConfig(**store)) as db:
                db.save_composition_result(run["id"], output.model_dump(mode="json"))
                done = len(db.composition_results(run["id"]))
        # progress of a long round (a loop's log shows one line per composition)
        logger.info("%s: %d validated, %d failed%s", formula, len(summaries), len(failed),
                    f" ({done} compositions done in {run['id']})" if done else "")
        return output
    replacements = reserves[:len(new_failures)]
    for failure, replacement in zip(new_failures, replacements, strict=False):
        failure["replaced_by"] = replacement.rank + 1
    jobs = pick_relax_jobs(relax_maker, formula, replacements)
    record = record_validation(
        formula, picks=replacements, pick_outputs=[j.output for j in jobs],
        pick_job_uuids=[j.uuid for j in jobs], reference_outputs={}, settings_key=key,
        pick_settings=[relax_maker.settings_for(r.structure) for r in replacements],
        reference_settings={}, store=store, run=run,
        funnel={**funnel, "dft_replacements": funnel.get("dft_replacements", 0)
                + len(replacements)},
        energy_model=energy_model, ml_e_above_hull=ml_e_above_hull,
        reserves=reserves[len(replacements):], relax_maker=relax_maker, earlier=result,
    )
    record.name = f"{formula} record (replacements)"
    record.config.on_missing_references = OnMissing.NONE
    return Response(replace=Flow([*jobs, record], output=record.output,
                                 name=f"{formula} DFT validation of replacements"))


def _named(job_or_flow: Job | Flow, label: str) -> Job | Flow:
    """Name a DFT job ``<label> DFT relax``; in a multi-step flow, label each step too."""
    if isinstance(job_or_flow, Flow):
        job_or_flow.append_name(f" ({label})")
    job_or_flow.name = f"{label} DFT relax"
    return job_or_flow


def _parsed(relax_maker: DftMaker, task: Any) -> tuple[dict[str, Any] | None, str]:
    """The backend's parsed result of a DFT job output, or ``None`` and the reason it failed."""
    try:
        result = relax_maker.parse_output(task)
    except DftParseError as exc:
        return None, str(exc)
    if result is None:
        return None, "DFT relaxation did not finish (see the job log)"
    return result, ""


def _update_hull(db: Any, elements: list[str], key: str) -> dict[str, float]:
    """Recompute the DFT energies above hull of every stored structure in this chemical system."""
    references = []
    for element in elements:
        ref = db.get_reference(element, key)
        if ref is None:
            logger.warning("no DFT reference for %s: energies above hull left empty", element)
            return {}
        references.append((Composition(element), ref["energy_per_atom"]))
    docs = db.find_validated(chemsys="-".join(elements), settings_key=key, within_chemsys=True)
    if not docs:
        return {}
    values = energies_above_hull(
        [(Composition(d["formula"]).fractional_composition, d["energy_per_atom"]) for d in docs],
        references,
    )
    hull = {d["uuid"]: v for d, v in zip(docs, values, strict=True)}
    db.set_e_above_hull(hull)
    return hull

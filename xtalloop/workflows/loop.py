"""The active-learning loop as a dynamic jobflow graph: one round after another.

Each round job plans its round from the store (arity stage, DFT budget,
stopping criteria; :mod:`xtalloop.active_learning`), then replaces itself by
the round's flow — the CSP flow of every composition, the energy-model and
generator training jobs, :func:`record_round` — followed by the next round
job. Everything a round decides or produces is recorded in the store as it
happens, so a killed loop resumes with the round it was in, skipping the
compositions that were already validated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobflow import Flow, Job, Maker, OnMissing, Response, job

from xtalloop.config import RunConfig, StoreConfig
from xtalloop.dft.factory import dft_maker
from xtalloop.dft.result import DftMaker
from xtalloop.errors import StoreError
from xtalloop.store.files import FileStore, is_ref
from xtalloop.store.results import ResultsDB, now, open_results
from xtalloop.workflows.outputs import LoopEnd, RoundRecord, plain
from xtalloop.workflows.csp import (
    csp_flow_maker,
    energy_model_training_maker,
    job_store_settings,
)

logger = logging.getLogger(__name__)


def round_run_id(loop_id: str, round_index: int) -> str:
    """The run id under which round ``round_index`` stores its results."""
    return f"{loop_id}-r{round_index}"


def stable_formulas(db: ResultsDB, settings_key: str, stable_within: float) -> set[str]:
    """Formulas with a converged validated structure within ``stable_within`` of the hull."""
    return {d["formula"] for d in db.find_validated(settings_key=settings_key,
                                                    max_e_above_hull=stable_within)
            if d["dft"]["converged"]}


@dataclass
class LoopRoundMaker(Maker):
    """One round of the active-learning loop; it schedules the next one itself.

    Parameters
    ----------
    name
        Job name (``round <n>`` is appended).
    config
        The loop's :class:`~xtalloop.config.RunConfig`, dumped, with an absolute store path.
    loop_id
        Id of the loop record (run records ``<loop_id>-r<n>`` hold the rounds' results).
    relax_maker
        Replaces the DFT maker the ``dft`` section describes.
    progress
        Show progress bars.
    """

    name: str = "loop"
    config: dict[str, Any] | None = None
    loop_id: str = ""
    relax_maker: DftMaker | None = None
    progress: bool = True

    @job  # no output_schema: jobflow applies it to the replacing flow's reference too
    def make(self, round_index: int = 1, previous: Any = None) -> Response | LoopEnd:
        """Plan round ``round_index`` and replace this job by it (or end the loop).

        ``previous`` (the last round's record) only orders the job after it.

        Returns
        -------
        Response or LoopEnd
            The round's flow followed by the next round job; or, when a
            stopping criterion holds, ``loop_id``, ``rounds_completed`` and
            ``stopped_by``.
        """
        from xtalloop.active_learning import plan_round, round_config

        config = RunConfig.model_validate(self.config)
        loop = config.loop
        assert loop is not None, "LoopRoundMaker needs a config with a loop section"
        run_id = round_run_id(self.loop_id, round_index)
        run = {"id": run_id, "name": config.name, "loop": self.loop_id, "round": round_index}
        settings_key = (self.relax_maker or dft_maker(config.dft, False)).settings_key()
        with open_results(config.store) as db:
            completed = [r for r in db.rounds(self.loop_id) if r.get("status") == "completed"]
            results = db.composition_results(run_id)  # a resumed round's first attempt
            done = {r["formula"] for r in results}
            spent = sum(len(r.get("validated", [])) + len(r.get("failed", [])) for r in results)
            plan = plan_round(config, completed, round_index,
                              stable_formulas(db, settings_key, loop.stable_within), done,
                              spent)
            if plan.stop:
                db.save_run({"id": self.loop_id, "status": "completed", "stopped_by": plan.stop,
                             "finished_at": now(), "rounds_completed": len(completed)})
                logger.info("loop %s stops: %s", self.loop_id, plan.stop)
                return LoopEnd(loop_id=self.loop_id, rounds_completed=len(completed),
                               stopped_by=plan.stop)
            generator = _generator_checkpoint(config, completed, db)
            db.save_round({
                "loop_id": self.loop_id, "round": round_index, "run_id": run_id,
                "name": config.name,
                "status": "running", "started_at": now(), **plan.as_dict(),
                "settings_key": settings_key,
                "energy_model_used": _model_in_use(db, config),
                "generator_used": generator,
            })
            trained_here = _registered_by(db, run_id)
        logger.info("round %d: %d compositions to generate, prefilter and validate%s",
                    round_index, len(plan.compositions),
                    f" ({len(done)} done before a restart)" if done else "")
        cfg = round_config(config, plan, generator)
        maker = csp_flow_maker(cfg, run, self.progress, self.relax_maker)
        _read_checkpoints_from(maker.generate_maker.sources, job_store_settings(config))
        flows: list[Flow | Job] = [maker.make(f, cfg.generate.seed) for f in plan.compositions]
        outputs = [f.output for f in flows]
        learned = None
        if config.learn.energy_model.enabled and trained_here is None:
            learn = energy_model_training_maker(cfg, run, settings_key).make(outputs)
            learn.config.on_missing_references = OnMissing.NONE
            learned = learn.output
            flows.append(learn)
        tuned = None
        if config.learn.generator.enabled and generator:
            gen = _generator_training_maker(cfg, generator, settings_key).make(
                [outputs, learned])
            gen.config.on_missing_references = OnMissing.NONE
            tuned = gen.output
            flows.append(gen)
        record = record_round(job_store_settings(config), self.loop_id, round_index,
                              loop.stable_within, energy_model=learned,
                              generator=tuned, after=outputs)
        record.name = f"record round {round_index}"
        record.config.on_missing_references = OnMissing.NONE
        following = self.make(round_index + 1, record.output)
        # naming a maker's job renames the maker too (jobflow): keep the base name only
        following.name = f"{self.name.split(' round ')[0]} round {round_index + 1}"
        flows += [record, following]
        return Response(replace=Flow(flows, output=following.output,
                                     name=f"{config.name} round {round_index}"))



def loop_flow(config: RunConfig, loop_id: str, first_round: int = 1,
              relax_maker: DftMaker | None = None, progress: bool = False) -> Flow:
    """The loop as a flow of one job, round ``first_round``, that grows round by round.

    The config travels with the job with an absolute store path and output
    folder, so workers anywhere (local, FireWorks, jobflow-remote) read the same store.
    """
    from pathlib import Path


    dumped = config.model_copy(update={
        "store": config.store.model_copy(update={"path": job_store_settings(config)["path"]}),
        "output_dir": str(Path(config.output_dir).resolve()),
    }).redacted_dump()
    maker = LoopRoundMaker(config=dumped, loop_id=loop_id, relax_maker=relax_maker,
                           progress=progress)
    first = maker.make(first_round)
    first.name = f"{maker.name} round {first_round}"
    return Flow([first], output=first.output, name=f"xtalloop loop {config.name}")


@job(output_schema=RoundRecord)
def record_round(store: dict[str, Any], loop_id: str, round_index: int, stable_within: float,
                 energy_model: dict[str, Any] | None = None,
                 generator: dict[str, Any] | None = None, after: Any = None) -> RoundRecord:
    """Complete the record of a round: counts, hit rate, what was learned.

    Reads the composition results the round's validations recorded (so a
    resumed round counts the compositions validated before an interruption
    too), the current energies above hull, and the learning jobs' outputs.

    Returns
    -------
    RoundRecord
        The round record (see :func:`xtalloop.active_learning.summarise_round`).
    """
    from xtalloop.active_learning import summarise_round

    energy_model, generator = plain(energy_model), plain(generator)

    run_id = round_run_id(loop_id, round_index)
    with open_results(StoreConfig(**store)) as db:
        results = db.composition_results(run_id)
        hull = {d["uuid"]: d.get("e_above_hull") for d in db.find_validated(run_id=run_id)}
        summary = summarise_round(results, stable_within, hull)
        if energy_model is None:
            energy_model = _registered_by(db, run_id)
        used = sorted({_model_label(r.get("energy_model")) for r in results
                       if r.get("energy_model")})
        record = {k: v for k, v in (_round_record(db, loop_id, round_index) or {}).items()
                  if k not in ("key", "updated_at")}
        record.update(summary, loop_id=loop_id, round=round_index, run_id=run_id,
                      status="completed", finished_at=now(),
                      compositions_validated=[r["formula"] for r in results],
                      energy_model=energy_model, generator=generator,
                      **({"energy_model_used": ", ".join(used)} if used else {}))
        output = RoundRecord(**record)
        db.save_round(output.model_dump(mode="json"))
        db.save_run({"id": run_id, "name": f"{record.get('name', loop_id)} round",
                     "kind": "round",
                     "loop": loop_id, "round": round_index, "status": "completed",
                     "finished_at": now(),
                     "funnel": {r["formula"]: r.get("funnel", {}) for r in results},
                     "validated": [row["uuid"] for r in results for row in r["validated"]],
                     "energy_model": energy_model})
    hit = summary["hit_rate"]
    logger.info("round %d: %d DFT calls, %d stable (hit rate %s)", round_index,
                summary["dft_calls"], summary["stable"],
                "n/a" if hit is None else f"{hit:.0%}")
    return output


def _model_label(model: dict[str, Any]) -> str:
    """A prefilter model as the round record names it: its registry id, else its name."""
    return str(model.get("registry_id") or model.get("name") or "?")


def _round_record(db: ResultsDB, loop_id: str, round_index: int) -> dict[str, Any] | None:
    return next((r for r in db.rounds(loop_id) if r["round"] == round_index), None)


def _model_in_use(db: ResultsDB, config: RunConfig) -> str:
    """The prefilter's model as the round will load it: a registry id or a spec."""
    from xtalloop.learn.registry import REGISTRY_SPEC, ModelRegistry

    if config.prefilter.model != REGISTRY_SPEC:
        return config.prefilter.model
    promoted = ModelRegistry(db).promoted()
    return promoted["model_id"] if promoted else config.prefilter.base_model


def _registered_by(db: ResultsDB, run_id: str) -> dict[str, Any] | None:
    """What the registry holds from run ``run_id`` (a resumed round does not train twice)."""
    from xtalloop.learn.registry import ModelRegistry

    for doc in ModelRegistry(db).all():
        if doc.get("run", {}).get("id") == run_id:
            return {"model_id": doc["model_id"], "parent": doc.get("parent"),
                    "promoted": doc.get("promoted"), "metrics": doc.get("metrics"),
                    "parent_metrics": doc.get("parent_metrics"),
                    "reason": "registered before the loop was interrupted"}
    return None


def _generator_checkpoint(config: RunConfig, completed: list[dict[str, Any]],
                          db: ResultsDB | None = None) -> str | None:
    """The learned checkpoint this round samples: the last fine-tuned one, or the config's.

    The learned source is the first diffusion or Wyckoff source
    (:func:`~xtalloop.active_learning.learned_source`); a Wyckoff source without
    a checkpoint samples the one shipped with xtalloop, whose path is returned.

    A fine-tuned checkpoint is a reference ``store:sha256:<digest>`` to the
    store's file store (:mod:`xtalloop.store.files`), not a path: the job
    that wrote it ran in its own folder, maybe on another node. The
    reference is handed on as is, and each job that reads it (sampling,
    the next fine-tuning) fetches the file into its own machine's cache;
    with ``db``, it is checked here to be in the store, so a lost file stops
    the round before its jobs start. Rounds recorded before the file store
    hold a path, also handed on as is.

    Raises
    ------
    StoreError
        The fine-tuned checkpoint the round needs is not in the store.
    """
    from xtalloop.active_learning import learned_source
    from xtalloop.learn.wyckoff_finetune import wyckoff_parent

    source = learned_source(config.generate.sources)
    if source is None:
        return None
    configured = wyckoff_parent(source.checkpoint) if source.kind == "wyckoff" \
        else source.checkpoint
    for record in reversed(completed):
        tuned = (record.get("generator") or {}).get("checkpoint")
        if tuned:
            if db is not None and is_ref(tuned):
                with FileStore(db.config, create=db.create) as files:
                    if not files.exists(tuned):
                        raise StoreError(
                            f"round {record.get('round')}'s fine-tuned generator {tuned} is "
                            "not in the store's files: it was removed, or the store is not "
                            "the one the loop wrote")
            return tuned
    return configured


def _read_checkpoints_from(sources: list[dict[str, Any]], store: dict[str, Any]) -> None:
    """Give the learned sources whose checkpoint is a store reference the store to read it from.

    The sampling job builds its generator from these dicts
    (:func:`~xtalloop.generators.factory.build_generator`):
    :class:`~xtalloop.generators.diffusion.DiffusionGenerator` fetches a
    referenced checkpoint from ``store`` (a dumped config, no password) itself,
    and the job fetches a Wyckoff one (:func:`xtalloop.workflows.generate.fetched`).
    """
    from xtalloop.active_learning import LEARNED_KINDS

    for source in sources:
        if source.get("kind") in LEARNED_KINDS and is_ref(source.get("checkpoint")):
            source["store"] = store


def _generator_training_maker(config: RunConfig, checkpoint: str, settings_key: str):
    from xtalloop.workflows.learn import GeneratorTrainingMaker

    settings = config.learn.generator
    return GeneratorTrainingMaker(
        store=job_store_settings(config), checkpoint=checkpoint,
        settings_key=settings_key, stable_within=settings.stable_within,
        epochs=settings.epochs, lr_factor=settings.lr_factor, batch_size=settings.batch_size,
        min_structures=settings.min_structures, seed=settings.seed, device=settings.device)

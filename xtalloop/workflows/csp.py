"""One composition's crystal-structure prediction as a jobflow Flow, and a run's flows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Job, Maker, OnMissing

from xtalloop.config import RunConfig
from xtalloop.dft.factory import dft_maker
from xtalloop.dft.result import DftMaker
from xtalloop.learn.chgnet_finetune import ChgnetFinetuner
from xtalloop.learn.mace_training import MaceTrainer
from xtalloop.workflows.generate import GenerateMaker
from xtalloop.workflows.learn import EnergyModelTrainingMaker
from xtalloop.workflows.prefilter import PrefilterMaker
from xtalloop.workflows.validate import ValidateMaker


@dataclass
class CSPFlowMaker(Maker):
    """Generate → ML prefilter → DFT validate for one composition.

    Parameters
    ----------
    name
        Flow name.
    generate_maker, prefilter_maker, validate_maker
        The three stages.
    """

    name: str = "csp"
    generate_maker: GenerateMaker = field(default_factory=GenerateMaker)
    prefilter_maker: PrefilterMaker = field(default_factory=PrefilterMaker)
    validate_maker: ValidateMaker = field(default_factory=ValidateMaker)

    def make(self, formula: str, seed: int = 0) -> Flow:
        """The flow for ``formula``; its output is the validation summary."""
        generate = self.generate_maker.make(formula, seed)
        generate.name = f"{formula} generate"
        prefilter = self.prefilter_maker.make(formula, generate.output)
        prefilter.name = f"{formula} prefilter"
        validate = self.validate_maker.make(prefilter.output)
        validate.name = f"{formula} validate"
        return Flow([generate, prefilter, validate], output=validate.output,
                    name=f"{self.name} {formula}")


def csp_flow_maker(
    config: RunConfig,
    run: dict[str, Any],
    progress: bool = True,
    relax_maker: DftMaker | None = None,
) -> CSPFlowMaker:
    """The :class:`CSPFlowMaker` a run configuration describes.

    Parameters
    ----------
    config
        The run configuration.
    run
        ``{"id", "name"}`` recorded with every stored result.
    progress
        Show progress bars.
    relax_maker
        Replaces the DFT maker the ``dft`` section describes.
    """
    dft = config.dft
    store = job_store_settings(config)
    return CSPFlowMaker(
        generate_maker=GenerateMaker(
            sources=[s.model_dump() for s in config.generate.sources],
            max_atoms=config.generate.max_atoms,
            progress=progress,
        ),
        prefilter_maker=PrefilterMaker(
            model=config.prefilter.model, base_model=config.prefilter.base_model,
            device=config.prefilter.device, precision=config.prefilter.precision,
            fmax=config.prefilter.fmax, steps=config.prefilter.steps,
            top_k=config.prefilter.top_k, max_e_above_hull=config.prefilter.max_e_above_hull,
            explore_weight=config.prefilter.explore_weight,
            rerank_model=config.prefilter.rerank_model, rerank_top=config.prefilter.rerank_top,
            prior_picks=config.prefilter.prior_picks,
            store=store, progress=progress,
        ),
        validate_maker=ValidateMaker(
            relax_maker=relax_maker or dft_maker(dft, progress, checkpoint_store=store),
            store=store,
            run=run,
            replace_failed=dft.replace_failed,
        ),
    )


def run_flow(
    config: RunConfig,
    run: dict[str, Any],
    progress: bool = True,
    relax_maker: DftMaker | None = None,
) -> Flow:
    """One flow holding the CSP flow of every composition of ``config``.

    With ``learn.energy_model.enabled``, a last job trains the energy model on
    the store's DFT data once every composition is validated (or has failed).
    """
    maker = csp_flow_maker(config, run, progress, relax_maker)
    flows: list[Flow | Job] = [
        maker.make(c.reduced_formula, config.generate.seed)
        for c in config.parsed_compositions()
    ]
    outputs = [f.output for f in flows]
    if config.learn.energy_model.enabled:
        dft = maker.validate_maker.relax_maker
        learn = energy_model_training_maker(config, run, dft.settings_key()).make(outputs)
        learn.config.on_missing_references = OnMissing.NONE  # learn from what did finish
        flows.append(learn)
    return Flow(flows, output=outputs, name=f"xtalloop {config.name}")


def energy_model_training_maker(config: RunConfig, run: dict[str, Any], settings_key: str
                                ) -> EnergyModelTrainingMaker:
    """The learning job a run configuration's ``learn.energy_model`` section describes."""
    learning = config.learn.energy_model
    return EnergyModelTrainingMaker(
        store=job_store_settings(config),
        settings_key=settings_key,
        prefilter_model=config.prefilter.model,
        base_model=config.prefilter.base_model,
        trainer=ChgnetFinetuner(**learning.chgnet.model_dump(), device=learning.device)
        if learning.architecture == "chgnet" else MaceTrainer(
            num_channels=learning.num_channels, max_L=learning.max_L, r_max=learning.r_max,
            epochs=learning.epochs, batch_size=learning.batch_size, lr=learning.lr,
            energy_weight=learning.energy_weight, forces_weight=learning.forces_weight,
            stress_weight=learning.stress_weight, bootstrap=learning.bootstrap,
            device=learning.device),
        ensemble_size=learning.ensemble_size,
        holdout_fraction=learning.holdout_fraction,
        max_frames_per_relaxation=learning.max_frames_per_relaxation,
        min_structures=learning.min_structures,
        seed=learning.seed,
        run=run,
    )


def job_store_settings(config: RunConfig) -> dict[str, Any]:
    """The store settings jobs carry: an absolute path, and no password (only where it is)."""
    return config.store.model_copy(
        update={"path": str(config.store.resolved_path)}).redacted_dump()

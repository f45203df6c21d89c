"""One composition's crystal-structure prediction as a jobflow Flow, and a run's flows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker

from xtalloop.config import RunConfig
from xtalloop.dft.factory import dft_maker
from xtalloop.dft.result import DftMaker
from xtalloop.workflows.generate import GenerateMaker
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
    # jobs run inside their own folders: pin the store to an absolute path;
    # no password travels with the jobs (only where to read it)
    store = config.store.model_copy(
        update={"path": str(config.store.resolved_path)}).redacted_dump()
    return CSPFlowMaker(
        generate_maker=GenerateMaker(
            sources=[s.model_dump() for s in config.generate.sources],
            max_atoms=config.generate.max_atoms,
            progress=progress,
        ),
        prefilter_maker=PrefilterMaker(
            model=config.prefilter.model, device=config.prefilter.device,
            fmax=config.prefilter.fmax, steps=config.prefilter.steps,
            top_k=config.prefilter.top_k, max_e_above_hull=config.prefilter.max_e_above_hull,
            progress=progress,
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
    """One flow holding the CSP flow of every composition of ``config``."""
    maker = csp_flow_maker(config, run, progress, relax_maker)
    flows = [
        maker.make(c.reduced_formula, config.generate.seed)
        for c in config.parsed_compositions()
    ]
    return Flow(flows, output=[f.output for f in flows], name=f"xtalloop {config.name}")

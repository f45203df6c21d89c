"""jobflow Makers for each stage of the loop and the flows that compose them."""

from xtalloop.workflows.csp import CSPFlowMaker, csp_flow_maker, run_flow
from xtalloop.workflows.generate import GenerateMaker
from xtalloop.workflows.prefilter import PrefilterMaker
from xtalloop.workflows.validate import ValidateMaker, record_validation

__all__ = [
    "CSPFlowMaker",
    "GenerateMaker",
    "PrefilterMaker",
    "ValidateMaker",
    "csp_flow_maker",
    "record_validation",
    "run_flow",
]

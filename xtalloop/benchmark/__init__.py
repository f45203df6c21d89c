"""Benchmarks of xtalloop's generators against known crystal structures."""

from xtalloop.benchmark.csp import run_csp_benchmark, write_results

__all__ = ["run_csp_benchmark", "write_results"]

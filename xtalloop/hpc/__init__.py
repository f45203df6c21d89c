"""Running xtalloop on clusters: submission to FireWorks or jobflow-remote, status, requeue."""

from xtalloop.hpc.submit import rerun_failed, run_status, submit

__all__ = ["rerun_failed", "run_status", "submit"]

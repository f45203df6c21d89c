"""Persistence: jobflow's job store and xtalloop's own collections, on swappable backends."""

from xtalloop.store.backends import collection_store, job_store
from xtalloop.store.results import ResultsDB

__all__ = ["ResultsDB", "collection_store", "job_store"]

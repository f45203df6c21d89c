"""maggma stores for each backend named in a :class:`~xtalloop.config.StoreConfig`."""

from __future__ import annotations

from jobflow import JobStore
from maggma.core import Store
from maggma.stores import MontyStore

from xtalloop.config import StoreConfig
from xtalloop.errors import StoreError

DATABASE_NAME = "xtalloop"


def collection_store(config: StoreConfig, collection: str) -> Store:
    """An unconnected maggma store for one collection of the configured database."""
    if config.backend == "embedded":
        path = config.resolved_path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the embedded store at {path}: {exc.strerror}") from None
        return MontyStore(
            collection, database_path=str(path), database_name=DATABASE_NAME, storage="sqlite"
        )
    raise StoreError(f"unsupported store backend {config.backend!r}")


def job_store(config: StoreConfig) -> JobStore:
    """jobflow's store: job outputs in ``jobs``, large data (trajectories) in ``job_data``."""
    return JobStore(
        collection_store(config, "jobs"),
        additional_stores={"data": collection_store(config, "job_data")},
    )

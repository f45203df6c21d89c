"""The ``store`` and ``submit`` sections of a run configuration: where results live, how jobs run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from xtalloop.config_base import _Section
from xtalloop.uri import is_mongodb_uri, password_problem, redact_uri, uri_hosts


class StoreConfig(_Section):
    """Where jobs, validated structures and references live.

    ``backend: embedded`` keeps everything in a local folder (``path``);
    ``backend: mongodb`` uses a MongoDB server (``uri``, ``database``). The
    MongoDB password is never part of the configuration: ``password_env``
    names an environment variable and ``password_file`` a file that hold it,
    and both are read only when a connection is opened.
    """

    backend: Literal["embedded", "mongodb"] = "embedded"
    path: str = Field("xtalloop-data", description="folder of the embedded database")
    uri: str | None = Field(None, description="mongodb:// or mongodb+srv:// connection string")
    database: str = Field("xtalloop", pattern=r"^[^/\\. \"$]+$")
    username: str | None = Field(None, description="MongoDB user (or give it in the uri)")
    auth_source: str | None = Field(None, description="database holding the user")
    tls: bool = False
    tls_ca_file: str | None = None
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                     description="environment variable holding the password")
    password_file: str | None = Field(None, description="file whose first line is the password")
    retry_seconds: float = Field(
        120, ge=0, le=86400,
        description="how long a run waits for an unreachable store before it stops")

    @field_validator("uri")
    @classmethod
    def _mongodb_uri(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not is_mongodb_uri(value):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        if problem := password_problem(value):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _backend_settings(self) -> StoreConfig:
        if self.backend == "mongodb" and not self.uri:
            raise ValueError("uri: required with backend mongodb "
                             "(e.g. mongodb://user@host:27017)")
        if self.password_env and self.password_file:
            raise ValueError("password_file: give either password_env or password_file, not both")
        return self

    @property
    def resolved_path(self) -> Path:
        """The store folder, with ``~`` and environment variables expanded."""
        return Path(os.path.expandvars(self.path)).expanduser().resolve()

    @property
    def location(self) -> str:
        """Where the store is, for messages: a folder, or MongoDB host(s) and database."""
        if self.backend == "mongodb":
            return f"mongodb {uri_hosts(self.uri or '')}/{self.database}"
        return str(self.resolved_path)

    def redacted_dump(self) -> dict[str, Any]:
        """``model_dump(mode="json")`` that is safe to store, log or print.

        No field holds a password, and a password in the ``uri`` is refused at
        validation; the ``uri`` is still masked here in case a config was built
        without validation (``model_construct``).
        """
        data = self.model_dump(mode="json")
        if data.get("uri"):
            data["uri"] = redact_uri(data["uri"])
        return data


class SubmitConfig(_Section):
    """How ``xtalloop submit`` hands a run to a cluster's workflow manager.

    ``engine: fireworks`` adds the run as one FireWorks workflow to a
    LaunchPad: the one described by ``launchpad_file`` (a FireWorks
    ``my_launchpad.yaml``), or else the database ``launchpad_database`` on the
    store's MongoDB server, with the store's user and password settings.
    ``engine: jobflow-remote`` submits the flow to the jobflow-remote
    ``project`` for its ``worker``.
    """

    engine: Literal["fireworks", "jobflow-remote"] = "fireworks"
    launchpad_file: str | None = Field(None, description="a FireWorks my_launchpad.yaml")
    launchpad_database: str = Field("fireworks", pattern=r"^[^/\\. \"$]+$")
    category: str | None = Field(
        None, description="FireWorks _category: only fireworkers of this category run the jobs")
    project: str | None = Field(None, description="jobflow-remote project name")
    worker: str | None = Field(None, description="jobflow-remote worker name")
    exec_config: str | None = Field(None, description="jobflow-remote exec_config name")
    resources: dict[str, Any] | None = Field(
        None, description="jobflow-remote resources of every job (e.g. nodes, time)")

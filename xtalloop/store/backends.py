"""maggma stores for each backend named in a :class:`~xtalloop.config.StoreConfig`.

``embedded``
    montydb (sqlite) in a local folder: nothing to install or run.
``mongodb``
    A MongoDB server: maggma ``MongoStore`` per collection, GridFS for jobflow's
    large data and for xtalloop's own large files (model files, generator
    checkpoints, trajectories: :mod:`xtalloop.store.files`, bucket ``files``). The password is read from ``password_env`` or
    ``password_file`` only inside :meth:`connect`, handed to pymongo and kept
    nowhere else, so serialising a store (``as_dict``) never reveals it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobflow import JobStore
from maggma.core import Store
from maggma.stores import GridFSStore, MongoStore, MontyStore
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from xtalloop.config import StoreConfig, uri_hosts
from xtalloop.errors import StoreError

DATABASE_NAME = "xtalloop"
TIMEOUT_MS = 5000

#: Fields xtalloop's queries filter on, indexed when a MongoDB collection is opened.
INDEXES: dict[str, tuple[str, ...]] = {
    "validated": ("uuid", "formula", "chemsys", "e_above_hull", "dft.settings_key"),
    "references": ("key", "element", "settings_key"),
    "runs": ("id", "status"),
    "checkpoints": ("job_uuid",),
    "models": ("model_id", "promoted", "settings_key"),
    "model_files": ("key", "model_id"),
}


def collection_store(config: StoreConfig, collection: str, create: bool = True) -> Store:
    """An unconnected maggma store for one collection of the configured database.

    Parameters
    ----------
    config
        Backend and its connection settings.
    collection
        Collection name; xtalloop's own collections get their query indexes
        (:data:`INDEXES`) created on connect.
    create
        Embedded: create the store if missing. ``False`` (reading commands)
        raises :class:`StoreError` for a missing store and writes nothing.
    """
    if config.backend == "embedded":
        return _embedded_store(config, collection, create)
    if config.backend == "mongodb":
        return XtalloopMongoStore(
            database=config.database, collection_name=collection, uri=config.uri,
            mongoclient_kwargs=client_options(config), indexes=list(INDEXES.get(collection, ())),
            password_env=config.password_env, password_file=config.password_file,
        )
    raise StoreError(f"unsupported store backend {config.backend!r}")


def job_store(config: StoreConfig) -> JobStore:
    """jobflow's store: job outputs in ``jobs``, large data (trajectories) in ``job_data``.

    With MongoDB the large data goes to GridFS, so a document may exceed 16 MB.
    """
    if config.backend == "mongodb":
        data: Store = XtalloopGridFSStore(
            database=config.database, collection_name="job_data", uri=config.uri,
            mongoclient_kwargs=client_options(config),
            password_env=config.password_env, password_file=config.password_file,
        )
    else:
        data = collection_store(config, "job_data")
    return JobStore(collection_store(config, "jobs"), additional_stores={"data": data})


def _embedded_store(config: StoreConfig, collection: str, create: bool) -> XtalloopMontyStore:
    path = config.resolved_path
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the embedded store at {path}: {exc.strerror}"
                             ) from None
    elif not (path / DATABASE_NAME).is_dir():
        raise StoreError(f"no xtalloop store at {path} (nothing was stored there yet: "
                         "check the store path)")
    return XtalloopMontyStore(collection, database_path=str(path), database_name=DATABASE_NAME,
                              storage="sqlite", create=create)


class XtalloopMontyStore(MontyStore):
    """maggma ``MontyStore`` that checks its file, writes nothing to read, and fails in one line.

    maggma's ``connect`` rewrites montydb's two settings files on every
    connection, which a concurrent reader can catch half-written and which
    fails in a read-only folder; this one writes them only when missing, and
    atomically. The collection file is checked on connect
    (:func:`~xtalloop.store.health.check_collection`), and an SQLite error
    while reading or writing becomes one :class:`StoreError` naming the file.

    Parameters
    ----------
    create
        Create the store folder, settings and collection file if missing
        (writers); ``False`` opens an existing store only, writing nothing.
    collection_name, database_path, database_name, storage, storage_kwargs, client_kwargs
        As for ``MontyStore``.
    **kwargs
        Passed to ``MontyStore``.
    """

    def __init__(self, collection_name: str, database_path: str | None = None,
                 database_name: str = "db", storage: str = "sqlite",
                 storage_kwargs: dict | None = None, client_kwargs: dict | None = None,
                 create: bool = True, **kwargs: Any) -> None:
        self.create = create
        super().__init__(collection_name, database_path=database_path,
                         database_name=database_name, storage=storage,  # type: ignore[arg-type]
                         storage_kwargs=storage_kwargs, client_kwargs=client_kwargs, **kwargs)

    @property
    def collection_file(self) -> Path:
        """``<store>/<database>/<collection>.collection``."""
        return Path(self.database_path) / self.database_name / f"{self.collection_name}.collection"

    def connect(self, force_reset: bool = False) -> None:
        """Open the collection; see the class docstring."""
        from montydb import MontyClient

        from xtalloop.store.health import check_collection, new_collection_file, read_only

        if self._coll is not None and not force_reset:
            return
        root = Path(self.database_path)
        if not (root / ".monty.storage").is_file():
            if not self.create:
                raise StoreError(f"no xtalloop store at {root} (montydb's .monty.storage is "
                                 "missing)")
            self._write_settings(root)
        check_collection(self.collection_file, root, heal=True)
        folder = self.collection_file.parent
        writable = not folder.is_dir() or os.access(folder, os.W_OK)
        if writable and not self.collection_file.exists():
            # made here, whole, not by montydb's first write: two processes' first writes
            # race, and one would see the other's file before its table exists
            new_collection_file(self.collection_file)
        with self._sqlite_errors():
            client = MontyClient(self.database_path, **self.client_kwargs)
            if not writable:
                read_only(client)  # an archived store: still readable
            self._coll = client[self.database_name][self.collection_name]

    def _write_settings(self, root: Path) -> None:
        """montydb's settings files, written beside the store and renamed into place."""
        import tempfile

        from montydb import set_storage

        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root, prefix=".settings-") as tmp:
                set_storage(tmp, storage=self.storage, **self.storage_kwargs)
                # the config first: a reader that sees .monty.storage then reads it
                for name in ("monty.storage.cfg", ".monty.storage"):
                    os.replace(Path(tmp) / name, root / name)
        except OSError as exc:
            raise StoreError(f"cannot create the embedded store at {root}: {exc.strerror}"
                             ) from None

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        import sqlite3

        from xtalloop.store.health import sqlite_error

        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(self.collection_file, exc) from None

    def query(self, *args: Any, **kwargs: Any) -> Iterator[dict]:
        with self._sqlite_errors():
            yield from super().query(*args, **kwargs)

    def count(self, *args: Any, **kwargs: Any) -> int:
        with self._sqlite_errors():
            return super().count(*args, **kwargs)

    def distinct(self, *args: Any, **kwargs: Any) -> list:
        with self._sqlite_errors():
            return super().distinct(*args, **kwargs)

    def update(self, *args: Any, **kwargs: Any) -> None:
        with self._sqlite_errors():
            super().update(*args, **kwargs)

    def remove_docs(self, *args: Any, **kwargs: Any) -> None:
        with self._sqlite_errors():
            super().remove_docs(*args, **kwargs)


# -- MongoDB ------------------------------------------------------------------------


def client_options(config: StoreConfig) -> dict[str, Any]:
    """``MongoClient`` keyword arguments of a config, without the password."""
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": TIMEOUT_MS,
        "connectTimeoutMS": TIMEOUT_MS,
    }
    if config.username:
        options["username"] = config.username
    if config.auth_source:
        options["authSource"] = config.auth_source
    if config.tls:
        options["tls"] = True
    if config.tls_ca_file:
        options["tls"] = True
        options["tlsCAFile"] = str(Path(os.path.expandvars(config.tls_ca_file)).expanduser())
    return options


def read_password(password_env: str | None, password_file: str | None) -> str | None:
    """The MongoDB password from its environment variable or file (``None`` when neither is set).

    Raises
    ------
    StoreError
        The variable is unset or the file unreadable; the message names the
        variable or file, never its content.
    """
    if password_env:
        value = os.environ.get(password_env)
        if not value:
            raise StoreError(f"the MongoDB password variable {password_env} "
                             "(store.password_env) is not set")
        return value
    if password_file:
        path = Path(os.path.expandvars(password_file)).expanduser()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise StoreError(f"cannot read the MongoDB password file {path} "
                             f"(store.password_file): {reason}") from None
        if not lines or not lines[0].strip():
            raise StoreError(f"the MongoDB password file {path} (store.password_file) is empty")
        return lines[0].strip()
    return None


def connection_error(uri: str, database: str, exc: Exception) -> StoreError:
    """One line naming the host and what went wrong, never the password or pymongo's dump."""
    where = f"MongoDB at {uri_hosts(uri)} (database {database!r})"
    if isinstance(exc, OperationFailure) and exc.code in (18, 13):
        reason = ("authentication failed: check the user, store.auth_source and the password"
                  if exc.code == 18 else "not authorised: give a user and password")
    elif isinstance(exc, ConfigurationError) and "password is required" in str(exc):
        reason = "a user is given but no password: set store.password_env or store.password_file"
    elif isinstance(exc, ConfigurationError):
        reason = f"bad connection settings: {str(exc).splitlines()[0]}"
    elif isinstance(exc, OperationFailure):
        reason = f"the server refused: {exc.details.get('errmsg', exc.code) if exc.details else exc.code}"
    else:
        reason = f"no answer within {TIMEOUT_MS // 1000} s (is the server running and reachable?)"
    return StoreError(f"cannot use {where}: {reason}")


class _PasswordAtConnect:
    """Mixin for maggma Mongo stores: add the password to ``mongoclient_kwargs`` only while connecting."""

    uri: str
    database: str
    mongoclient_kwargs: dict[str, Any]
    password_env: str | None
    password_file: str | None

    @contextmanager
    def _with_password(self) -> Iterator[str | None]:
        password = read_password(self.password_env, self.password_file)
        saved = self.mongoclient_kwargs
        if password is not None:
            self.mongoclient_kwargs = {**saved, "password": password}
        try:
            yield password
        except PyMongoError as exc:
            raise connection_error(self.uri, self.database, exc) from None
        finally:
            self.mongoclient_kwargs = saved


class XtalloopMongoStore(_PasswordAtConnect, MongoStore):
    """maggma ``MongoStore`` that reads its password at connect time, checks the
    server answers and creates the collection's query indexes.

    Parameters
    ----------
    indexes
        Fields to index (ascending) on connect.
    password_env, password_file
        Where the password is; see :func:`read_password`.
    database, collection_name, uri, mongoclient_kwargs
        As for ``MongoStore``.
    **kwargs
        Passed to ``MongoStore``.
    """

    def __init__(
        self,
        database: str,
        collection_name: str,
        uri: str,
        mongoclient_kwargs: dict[str, Any] | None = None,
        indexes: list[str] | None = None,
        password_env: str | None = None,
        password_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        # every argument is named in the signature, so that ``as_dict`` (how jobflow
        # ships a store to FireWorks and jobflow-remote workers) round-trips
        self.indexes = list(indexes or [])
        self.password_env = password_env
        self.password_file = password_file
        super().__init__(database=database, collection_name=collection_name, uri=uri,
                         mongoclient_kwargs=mongoclient_kwargs, **kwargs)

    @property
    def name(self) -> str:
        """``mongodb://hosts/database/collection`` without credentials."""
        return f"mongodb://{uri_hosts(self.uri)}/{self.database}/{self.collection_name}"

    def connect(self, force_reset: bool = False) -> None:
        """Connect, ping the server and ensure the indexes; one-line :class:`StoreError` if not."""
        if self._coll is not None and not force_reset:
            return
        with self._with_password():
            super().connect(force_reset=force_reset)
            try:
                self._coll.database.command("ping")
                for field in (self.key, *self.indexes):
                    self._coll.create_index(field)
            except BaseException:
                self._coll.database.client.close()
                self._coll = None
                raise


class XtalloopGridFSStore(_PasswordAtConnect, GridFSStore):
    """maggma ``GridFSStore`` that reads its password at connect time.

    Parameters
    ----------
    password_env, password_file
        Where the password is; see :func:`read_password`.
    database, collection_name, uri, mongoclient_kwargs
        As for ``GridFSStore``.
    **kwargs
        Passed to ``GridFSStore``.
    """

    def __init__(
        self,
        database: str,
        collection_name: str,
        uri: str,
        mongoclient_kwargs: dict[str, Any] | None = None,
        password_env: str | None = None,
        password_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.password_env = password_env
        self.password_file = password_file
        super().__init__(database=database, collection_name=collection_name, uri=uri,
                         mongoclient_kwargs=mongoclient_kwargs, **kwargs)

    @property
    def name(self) -> str:
        """``gridfs://hosts/database/collection`` without credentials."""
        return f"gridfs://{uri_hosts(self.uri)}/{self.database}/{self.collection_name}"

    def connect(self, force_reset: bool = False) -> None:
        """Connect and ping the server; one-line :class:`StoreError` if it does not answer."""
        if self._coll and not force_reset:
            return
        with self._with_password():
            super().connect(force_reset=force_reset)
            self._files_collection.database.command("ping")

"""Large files in the results store: model files, generator checkpoints, content-addressed.

A file is stored once under the sha256 of its bytes (its *digest*) and read
back by that digest, checked against it, so a damaged or replaced blob is
never handed out. Documents hold the digest (or a reference
``store:sha256:<digest>``, :func:`ref`), never a path: a job on another node,
in its own scratch folder, fetches the file from the store.

``mongodb``
    GridFS (maggma's ``GridFSStore``, bucket ``files``: collections
    ``files.files`` and ``files.chunks``), one GridFS file per digest, its
    ``_id`` being the digest; GridFS does the chunking.
``embedded``
    Plain files ``<store path>/files/<aa>/<digest>``, each written to a
    temporary name beside it and renamed into place (``os.replace``), so a
    reader sees a whole file or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from xtalloop.config import StoreConfig
from xtalloop.errors import StoreError

BUCKET = "files"
REF_PREFIX = "store:sha256:"


def ref(digest: str) -> str:
    """The reference a document keeps for a stored file: ``store:sha256:<digest>``."""
    return f"{REF_PREFIX}{digest}"


def is_ref(value: object) -> bool:
    """Whether ``value`` is a store reference (:func:`ref`) rather than a path."""
    return isinstance(value, str) and value.startswith(REF_PREFIX)


def digest_of(reference: str) -> str:
    """The digest of a store reference (checked to be a sha256 in hex)."""
    digest = reference[len(REF_PREFIX):] if is_ref(reference) else reference
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise StoreError(f"{reference!r} is not a stored file reference (store:sha256:<hex>)")
    return digest


def cache_root() -> Path:
    """Where fetched files are kept on this machine (``$XTALLOOP_CACHE`` or ``~/.cache/xtalloop``)."""
    root = os.environ.get("XTALLOOP_CACHE") or Path.home() / ".cache" / "xtalloop"
    return Path(root).expanduser()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to a private temporary name beside ``path``, then rename it into place.

    Parallel jobs may write the same file at once; each rename is whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path


class FileStore:
    """The store's large files, by sha256 (see the module docstring).

    Parameters
    ----------
    config
        The results store's backend and location.
    create
        Embedded: ``False`` (reading commands) never creates the folder.
    """

    def __init__(self, config: StoreConfig, create: bool = True) -> None:
        self.config = config
        self.create = create
        self._gridfs: Any = None

    # -- the backends ------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """Embedded: the folder of the blobs, ``<store path>/files``."""
        return self.config.resolved_path / BUCKET

    def path_of(self, digest: str) -> Path:
        """Embedded: where the blob of ``digest`` lives."""
        digest = digest_of(digest)
        return self.root / digest[:2] / digest

    def _bucket(self) -> Any:
        """MongoDB: the connected ``gridfs.GridFS`` of maggma's store (password at connect)."""
        if self._gridfs is None:
            from xtalloop.store.backends import XtalloopGridFSStore, client_options

            store = XtalloopGridFSStore(
                database=self.config.database, collection_name=BUCKET, uri=self.config.uri,
                mongoclient_kwargs=client_options(self.config),
                password_env=self.config.password_env, password_file=self.config.password_file)
            store.connect()
            self._gridfs = store
        return self._gridfs._collection

    def close(self) -> None:
        """Close the MongoDB connection, if any."""
        if self._gridfs is not None:
            self._gridfs.close()
            self._gridfs = None

    def __enter__(self) -> FileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the surface ----------------------------------------------------------------

    def put(self, source: str | Path | bytes, metadata: dict[str, Any] | None = None) -> str:
        """Store a file (a path or its bytes); returns its digest. Storing it again is a no-op.

        ``metadata`` (e.g. ``{"kind": "generator", "name": ...}``) is kept
        beside the blob for whoever inspects the store; nothing reads it back.
        """
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        digest = _sha256(data)
        meta = {"sha256": digest, "bytes": len(data), **(metadata or {})}
        if self.exists(digest):
            return digest
        if self.config.backend == "mongodb":
            from gridfs.errors import FileExists
            from pymongo.errors import PyMongoError

            try:
                self._bucket().put(data, _id=digest, metadata=meta)
            except FileExists:
                pass  # a concurrent writer stored the same bytes
            except PyMongoError as exc:
                from xtalloop.store.backends import connection_error

                raise connection_error(self.config.uri, self.config.database, exc) from None
            return digest
        if not self.create:
            raise StoreError(f"cannot store a file in {self.root}: the store is opened read-only")
        path = self.path_of(digest)
        try:
            write_atomically(path.with_name(f"{digest}.json"),
                             json.dumps(meta, default=str).encode())
            write_atomically(path, data)
        except OSError as exc:
            raise StoreError(f"cannot store a file in {self.root}: {exc.strerror}") from None
        return digest

    def exists(self, digest: str) -> bool:
        """Whether a blob of ``digest`` is stored (not whether it is intact)."""
        digest = digest_of(digest)
        if self.config.backend == "mongodb":
            return self._bucket().exists(digest)
        return self.path_of(digest).is_file()

    def get(self, digest: str) -> bytes:
        """The bytes of ``digest``, checked against it.

        Raises
        ------
        StoreError
            One line: no such file, or the stored bytes do not have that digest.
        """
        digest = digest_of(digest)
        if self.config.backend == "mongodb":
            from gridfs.errors import CorruptGridFile, NoFile

            try:
                data = self._bucket().get(digest).read()
            except NoFile:
                raise self._missing(digest) from None
            except CorruptGridFile as exc:
                raise self._damaged(digest, str(exc).splitlines()[0]) from None
        else:
            try:
                data = self.path_of(digest).read_bytes()
            except FileNotFoundError:
                raise self._missing(digest) from None
            except OSError as exc:
                raise StoreError(f"cannot read stored file {self.path_of(digest)}: "
                                 f"{exc.strerror}") from None
        if _sha256(data) != digest:
            raise self._damaged(digest, f"its {len(data)} bytes have another sha256")
        return data

    def fetch(self, digest: str, into: str | Path) -> Path:
        """Write the checked bytes of ``digest`` to the file ``into`` (atomically); returns it.

        A file already there with the right digest is kept as is.
        """
        into = Path(into)
        digest = digest_of(digest)
        if into.is_file() and _sha256(into.read_bytes()) == digest:
            return into
        return write_atomically(into, self.get(digest))

    def remove(self, digest: str) -> None:
        """Delete the blob of ``digest`` (nothing if it is not stored)."""
        digest = digest_of(digest)
        if self.config.backend == "mongodb":
            self._bucket().delete(digest)
            return
        path = self.path_of(digest)
        path.unlink(missing_ok=True)
        path.with_name(f"{digest}.json").unlink(missing_ok=True)

    def _where(self) -> str:
        if self.config.backend == "mongodb":
            from xtalloop.config import uri_hosts

            return f"GridFS bucket {BUCKET!r} at {uri_hosts(self.config.uri)}/{self.config.database}"
        return str(self.root)

    def _missing(self, digest: str) -> StoreError:
        return StoreError(f"stored file sha256:{digest[:16]}… is not in {self._where()}")

    def _damaged(self, digest: str, why: str) -> StoreError:
        return StoreError(f"stored file sha256:{digest[:16]}… in {self._where()} is damaged "
                          f"({why}); store it again from its source")


def local_copy(value: str, store: dict[str, Any] | StoreConfig | None, suffix: str = "",
               kind: str = "files") -> str:
    """A local path for ``value``: a path as is, a store reference fetched into the cache.

    The file goes to ``<cache>/<kind>/<digest><suffix>`` (:func:`cache_root`),
    checked against its digest, so jobs in their own scratch folders on any
    node read the same bytes.

    Raises
    ------
    StoreError
        A reference without a store, or a missing or damaged blob.
    """
    if not is_ref(value):
        return value
    digest = digest_of(value)
    if store is None:
        raise StoreError(f"{value} is a file in a results store, but no store was given "
                         "to read it from")
    config = store if isinstance(store, StoreConfig) else StoreConfig(**store)
    target = cache_root() / kind / f"{digest}{suffix}"
    if target.is_file() and _sha256(target.read_bytes()) == digest:
        return str(target)
    with FileStore(config) as files:
        return str(files.fetch(digest, target))


# -- trajectories ---------------------------------------------------------------------


def put_trajectory(files: FileStore, trajectory: list[dict[str, Any]] | None,
                   metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document fields of a relaxation's trajectory, its steps put in the file store.

    The ionic steps (structures, energies, forces, stresses) are what a
    document grows with; they go to the file store as gzipped JSON
    (deterministic bytes: the same steps, the same digest) and the document
    keeps ``trajectory_ref`` and ``n_frames``. ``None`` or no steps stay inline.
    """
    import gzip

    from monty.json import jsanitize

    if not trajectory:
        return {"trajectory": trajectory}
    data = gzip.compress(json.dumps(jsanitize(trajectory), sort_keys=True).encode(), mtime=0)
    digest = files.put(data, {"kind": "trajectory", "n_frames": len(trajectory),
                              **(metadata or {})})
    return {"trajectory_ref": ref(digest), "n_frames": len(trajectory)}


def trajectory_of(doc: dict[str, Any], files: FileStore) -> list[dict[str, Any]] | None:
    """The ionic steps of a stored result: inline (older documents) or from the file store.

    Raises
    ------
    StoreError
        The referenced steps are missing or damaged (one line).
    """
    import gzip

    if doc.get("trajectory") is not None or not doc.get("trajectory_ref"):
        return doc.get("trajectory")
    return json.loads(gzip.decompress(files.get(doc["trajectory_ref"])))

"""Health of an embedded (montydb/sqlite) store: find damaged collection files, never delete one.

Each collection of an embedded store is one SQLite file,
``<store>/xtalloop/<collection>.collection``, holding one ``documents`` table.
A file cut short, overwritten or emptied would otherwise surface as an SQLite
traceback in the middle of a command (after hours of DFT, for ``run``); here
it becomes one line naming the file and what to do, found before any work.

Nothing is ever deleted. The one state fixed in place is a valid SQLite file
with no table at all: montydb leaves one behind when documents are deleted
from a collection that does not exist yet, and it holds nothing, so creating
montydb's table in it loses nothing. Anything else is reported, and
``xtalloop db repair`` moves the file aside (``<name>.corrupt-<time>``), never
removes it.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from xtalloop.errors import StoreError

SQLITE_MAGIC = b"SQLite format 3\x00"
NO_TABLE = "holds no table"
"""The problem montydb's own empty files have: healed in place by :func:`create_table`."""


def repair_hint(store_path: Path) -> str:
    """What to tell the user about a damaged collection file of the store at ``store_path``."""
    return (f"restore it from a backup, or run `xtalloop db repair --store {store_path}` "
            "to move it aside and start that collection empty")


def collection_problem(path: Path, deep: bool = False) -> str | None:
    """What is wrong with one collection file (``None``: nothing).

    Cheap enough for every connection: reads the 100-byte header and SQLite's
    schema table, never the documents. ``deep`` also reads every page
    (SQLite's ``quick_check``): damage inside the file, for ``db check``,
    ``db repair`` and the start of a run.
    """
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): it was truncated or overwritten"
    with open(path, "rb") as handle:
        header = handle.read(100)
    if not header.startswith(SQLITE_MAGIC):
        return "is not an SQLite file: it was overwritten"
    if len(header) < 100:
        return f"is truncated ({size} bytes)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_count_valid = header[24:28] == header[92:96]
    wal = path.with_name(path.name + "-wal")
    if header_count_valid and size < pages * page_size and not wal.exists():
        return f"is truncated ({size} of {pages * page_size} bytes)"
    # read-write (never creating) so that closing cleans up WAL side files as montydb's
    # connections do; in a read-only folder no -shm file can be made: read as immutable
    mode = "rw" if os.access(path.parent, os.W_OK) else "ro&immutable=1"
    try:
        with closing(sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True)) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0] if deep else "ok"
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):  # busy with another writer: not damage
            return None
        return f"is damaged ({exc})"
    except sqlite3.DatabaseError as exc:
        return f"is damaged ({exc})"
    if verdict != "ok":
        return f"is damaged ({' '.join(verdict.replace('*** in database main ***', '').split())})"
    if not tables:
        return NO_TABLE
    if "documents" not in tables:
        return "is an SQLite file but not a montydb collection (no 'documents' table)"
    return None


def create_table(path: Path) -> None:
    """Create montydb's ``documents`` table in ``path`` if it has none (new or tableless file)."""
    from montydb.storage.sqlite import CREATE_TABLE, SQLITE_RECORD_TABLE

    sql = CREATE_TABLE.format(SQLITE_RECORD_TABLE).replace(
        "CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
    try:
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(sql)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot prepare the store file {path}: {exc}") from None


def new_collection_file(path: Path) -> None:
    """Create an empty collection file atomically: others see no file, or a whole one.

    The file is made under a temporary name and hard-linked into place, which
    fails (harmlessly) if another process got there first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        create_table(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the store file {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_collection(path: Path, store_path: Path, heal: bool = True, deep: bool = False) -> None:
    """Raise one line if the collection file ``path`` is damaged; heal a tableless one.

    Parameters
    ----------
    heal
        Create the table in a tableless file when its folder is writable
        (otherwise such a file simply reads as empty).
    """
    if not path.is_file():
        return
    problem = collection_problem(path, deep)
    if problem is None:
        return
    if problem == NO_TABLE:
        if heal and os.access(path.parent, os.W_OK):
            create_table(path)
        return
    raise StoreError(f"the store file {path} {problem}: {repair_hint(store_path)}")


def collection_files(store_path: Path, database: str) -> list[Path]:
    """The collection files of an embedded store, by name."""
    folder = store_path / database
    return sorted(folder.glob("*.collection")) if folder.is_dir() else []


def check_store_files(store_path: Path, database: str, deep: bool = True) -> None:
    """Check every collection file of an embedded store (see :func:`check_collection`)."""
    for path in collection_files(store_path, database):
        check_collection(path, store_path, deep=deep)


def repair_store_files(store_path: Path, database: str) -> list[tuple[Path, Path, str]]:
    """Move every damaged collection file aside; returns ``(file, moved to, problem)``.

    The moved file keeps its bytes (for a backup tool or sqlite's ``.recover``);
    montydb starts that collection afresh. Tableless files are healed in place.
    """
    moved = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for path in collection_files(store_path, database):
        problem = collection_problem(path, deep=True)
        if problem is None:
            continue
        if problem == NO_TABLE:
            create_table(path)
            continue
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        try:
            path.rename(target)
        except OSError as exc:
            raise StoreError(f"cannot move {path} aside: {exc.strerror}") from None
        for suffix in ("-wal", "-shm"):  # sqlite's side files belong to the moved file
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        moved.append((path, target, problem))
    return moved


def sqlite_error(path: Path, exc: Exception) -> StoreError:
    """One line for an SQLite error on the collection file ``path``."""
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return StoreError(f"the store file {path} is read-only: cannot write to it")
    if "locked" in text:
        return StoreError(f"the store file {path} stayed locked by another process: {text}")
    if "unable to open" in text:
        return StoreError(f"cannot open the store file {path} (is its folder readable?)")
    return StoreError(f"the store file {path} is damaged ({text}): "
                      f"{repair_hint(path.parent.parent)}")


def read_only(client: object) -> None:
    """Make a montydb client read its SQLite files without writing anything.

    montydb opens each file read-write and switches it to WAL mode, which
    needs a ``-shm`` file beside it: impossible in a read-only folder. This
    opens the files ``mode=ro&immutable=1`` instead (no side files, no locks;
    the folder is read-only, so nothing here changes them).
    """
    from montydb.storage.sqlite import SQLiteKVEngine

    class ReadOnlyEngine(SQLiteKVEngine):
        def _connect(self, db_file: str, wconcern: object = None) -> closing:
            conn = sqlite3.connect(f"file:{quote(db_file)}?mode=ro&immutable=1", uri=True)
            conn.text_factory = str
            return closing(conn)

    storage = client._storage  # type: ignore[attr-defined]
    storage._conn = ReadOnlyEngine(storage._config)

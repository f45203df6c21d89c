"""Cheap checks of a user's files and output paths, made before any expensive work.

A command that samples for a minute, or a run that generates for an hour,
must not then fail on a file it could have looked at first: an output path
that is a file where a folder is needed (or the reverse), a folder that
cannot be written, a file that would be overwritten, a reference table that
does not exist or has no ``cif`` column. Each check here raises
:class:`~xtalloop.errors.DataError` with one line naming the path and the
option it came from, and leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xtalloop.errors import DataError


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_structure_table(path: str | os.PathLike) -> None:
    """Check that a structure CSV exists, can be read and has a ``cif`` column.

    Reads only the header (pandas ``nrows=0``; a gzipped file is
    decompressed only as far as its first line), so it costs milliseconds
    even for the MP-20 training split. Relative paths are read from the
    working directory, as the generators read them.

    Raises
    ------
    DataError
        One line: not found (naming the working directory for a relative
        path), a folder, unreadable, or no ``cif`` column.
    """
    file = Path(path).expanduser()
    if not file.exists():
        where = "" if file.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise DataError(f"structure table {str(path)!r} not found{where}")
    if not file.is_file():
        raise DataError(f"structure table {str(path)!r} is not a file")
    try:
        import pandas as pd

        columns = [str(c) for c in pd.read_csv(file, nrows=0).columns]
    except Exception as exc:  # gzip, decoding, permission and parser errors
        raise DataError(f"cannot read structure table {path}: {_reason(exc)}") from None
    if "cif" not in columns:
        shown = ", ".join(c for c in columns if not c.startswith("Unnamed:"))[:120]
        raise DataError(f"structure table {path} has no 'cif' column (columns: {shown or 'none'})")


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path, what: str, path: Path) -> None:
    """Create and remove a probe file in ``folder`` (as root, permission bits say nothing)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".xtalloop-probe-", dir=folder)
    except OSError as exc:
        reason = ("files cannot be created there" if isinstance(exc, FileNotFoundError)
                  else _reason(exc))  # e.g. /proc
        raise DataError(f"{what} {path}: cannot write into {folder}: {reason}") from None
    os.close(handle)
    os.unlink(probe)


def check_output_folder(path: Path, what: str) -> None:
    """Check that ``path`` is, or can be made, a folder this process can write files into.

    Parameters
    ----------
    path
        The folder the user asked for.
    what
        How the user gave it, for the message (e.g. ``--out``).

    Raises
    ------
    DataError
        ``path`` (or one of its parents) is a file, or the folder cannot be written.
    """
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder (one file per structure "
                        "is written into it)")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise DataError(f"{what} {path}: {base} is a file, not a folder")
    _check_writable(base, what, path)


def check_output_file(path: Path, what: str, force: bool = False,
                      example: str = "structures.json") -> None:
    """Check that ``path`` can be written as one new file (or replaced, with ``force``).

    ``example`` is the file name the message suggests when ``path`` is a folder.

    Raises
    ------
    DataError
        ``path`` is a folder; it exists and ``force`` is false; a parent is a
        file; or its folder cannot be written.
    """
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give a file name, e.g. {path / example}")
    if path.exists() and not force:
        raise DataError(f"{what} {path} exists; pass --force to overwrite it")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise DataError(f"{what} {path}: {base} is a file, not a folder")
    _check_writable(base, what, path)


@contextmanager
def writing_into(folder: Path, what: str, target: Path | None = None) -> Iterator[Path]:
    """Make ``folder`` (and missing parents) for writing; on failure, remove what was made.

    Any ``OSError`` inside the block becomes one :class:`DataError` line, and
    folders this call created are removed again if they are still empty.
    """
    created = []
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
    except OSError as exc:
        for made in created:  # innermost first
            try:
                made.rmdir()
            except OSError:
                break
        raise DataError(f"{what}: cannot write {target or folder}: {_reason(exc)}") from None


def write_file_atomically(path: Path, what: str, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file beside it, so no half-written file is left.

    ``write`` is called with the temporary path; it is renamed over ``path``
    only once complete. Errors become one :class:`DataError` line.
    """
    with writing_into(path.parent, what, path):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

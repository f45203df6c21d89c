"""Exceptions whose message is meant for the user, one line, no traceback."""

from __future__ import annotations


class XtalloopError(Exception):
    """Base class for errors the command line reports as a single line."""


class CompositionError(XtalloopError, ValueError):
    """A formula that cannot be a crystal we can predict."""


class ConfigError(XtalloopError, ValueError):
    """A configuration file that is missing, unreadable or invalid."""


class StoreError(XtalloopError, RuntimeError):
    """A database that cannot be reached or used."""


class DataError(XtalloopError, ValueError):
    """A data file (reference structures, benchmark set) that is missing or unreadable."""


def one_line(exc: BaseException) -> str:
    """First line of an exception's message, or its type name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""How every ``xtalloop`` command reports a user's mistake: one line, exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from xtalloop.errors import XtalloopError


def user_errors(func: Callable) -> Callable:
    """Report :class:`XtalloopError` as one ``error:`` line and exit 2, no traceback.

    An ``OSError`` that no check foresaw (a disk that filled, a folder made
    read-only meanwhile) is a problem of the user's files too: one line naming
    the file, exit 2.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except XtalloopError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            what = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            reason = (exc.strerror or str(exc).strip() or type(exc).__name__).splitlines()[0]
            typer.echo(f"error: {what}{reason}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: results stored so far are kept", err=True)
            raise typer.Exit(130) from None

    return wrapper

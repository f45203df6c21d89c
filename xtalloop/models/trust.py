"""The local trust list: sha256 digests of model files this user has vouched for.

It guards models fetched from a results store: anyone who can write to a
shared MongoDB store could put a model there, so a registry model is used
only if the digests of its files are on this list. (Model files themselves
never run code when loaded: xtalloop reads MACE and fine-tuned CHGNet models
as JSON descriptions plus weights-only state dicts, and refuses pickled MACE
``.model`` files outright, trusted or not; see
:func:`xtalloop.models.mace_format.pickle_refused`.)

Models trained on this machine are added when their training finishes;
anything else is added by ``xtalloop model trust PATH_OR_ID``, after the user
has reviewed where it came from. The list lives in ``$XTALLOOP_TRUST`` if set,
else ``$XTALLOOP_CACHE/trusted.json`` if that is set, else
``$XDG_CONFIG_HOME/xtalloop/trusted.json`` (``~/.config/xtalloop/trusted.json``),
a file only its owner edits, never in a store.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from xtalloop.errors import XtalloopError

FORMAT = "xtalloop-trust/1"


class UntrustedModelError(XtalloopError, PermissionError):
    """A model file whose digest is not on the local trust list."""


def trust_file() -> Path:
    """Where the trust list is kept (see the module docstring)."""
    if os.environ.get("XTALLOOP_TRUST"):
        return Path(os.environ["XTALLOOP_TRUST"]).expanduser()
    if os.environ.get("XTALLOOP_CACHE"):
        return Path(os.environ["XTALLOOP_CACHE"]).expanduser() / "trusted.json"
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config).expanduser() / "xtalloop" / "trusted.json"


def _read(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise XtalloopError(f"{path}: the trust list is not valid JSON; fix or delete it "
                            "(and trust your models again)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise XtalloopError(f"{path}: not an xtalloop trust list ({FORMAT})")
    return dict(doc.get("sha256") or {})


def trusted() -> dict[str, dict[str, str]]:
    """Every trusted digest with what it was (``source``) and when it was added."""
    return _read(trust_file())


def is_trusted(digest: str) -> bool:
    """Whether a sha256 (hex) is on the list."""
    return digest in trusted()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the list's lock file: parallel trainings must not drop each other's entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add(digests: Iterable[str], source: str) -> int:
    """Put ``digests`` on the list (``source`` says what they are); returns how many were new."""
    path = trust_file()
    digests = list(digests)
    with _locked(path):
        entries = _read(path)
        new = [d for d in digests if d not in entries]
        if not new:
            return 0
        added = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for digest in new:
            entries[digest] = {"source": source, "added": added}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "sha256": entries}, f, indent=1)
        os.replace(tmp, path)
    return len(new)


def add_files(paths: Iterable[str | Path], source: str | None = None) -> int:
    """Trust the current contents of ``paths``; returns how many digests were new."""
    from xtalloop.models.mace_format import sha256

    paths = [Path(p).resolve() for p in paths]
    return sum(add([sha256(p)], source or str(p)) for p in paths)


def how_to_trust(what: str) -> str:
    """The command that puts ``what`` (a path or a registry id) on the list."""
    return f"xtalloop model trust {what}"

"""A per-composition journal, so a long benchmark survives a kill and spans sessions.

Relaxing every candidate of 300 compositions with an ML potential takes hours
on a laptop's CPU. The CSP benchmark therefore appends each finished
composition's record to a JSON-lines file as it goes. Run again with
``resume``, it reads the records back and computes only the rest. The first
line holds the settings that define the run (data, generator, seed, sample
size, relaxation); a journal written under other settings is refused rather
than silently mixed in.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from xtalloop.errors import DataError

logger = logging.getLogger(__name__)

#: Format marker of the journal's first line.
JOURNAL_FORMAT = "xtalloop-csp-journal-1"


class Journal:
    """Records of finished compositions, keyed by table row, appended one line each.

    Parameters
    ----------
    path
        The JSON-lines file.
    key
        Everything that defines the run; a resumed journal must have the same.
    resume
        Read the records of an existing journal with the same ``key`` (and
        append to it); without it an existing journal is started afresh.

    Raises
    ------
    DataError
        In one line, if ``resume`` finds a journal written under other
        settings (naming the first setting that differs) or one it cannot read.
    """

    def __init__(self, path: str | os.PathLike, key: dict[str, Any], resume: bool) -> None:
        self.path = Path(path)
        self.key = json.loads(json.dumps(key))  # what a reread header compares equal to
        self.done: dict[int, dict[str, Any]] = {}
        if resume and self.path.exists():
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = {"format": JOURNAL_FORMAT, "key": self.key}
            self.path.write_text(json.dumps(header) + "\n")
        if self.done:
            logger.info("%s: resuming after %d finished compositions", self.path, len(self.done))

    def _read(self) -> None:
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("format") != JOURNAL_FORMAT:
            raise DataError(f"{self.path} is not a CSP benchmark journal; delete it or "
                            "run without --resume")
        if header.get("key") != self.key:
            differs = next((k for k in sorted(set(self.key) | set(header.get("key", {})))
                            if header.get("key", {}).get(k) != self.key.get(k)), "?")
            raise DataError(f"{self.path} was written with another {differs!r} "
                            f"({header.get('key', {}).get(differs)!r}, now "
                            f"{self.key.get(differs)!r}); delete it or run without --resume")
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                self.done[int(record["row"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                # only the last line can be cut short by a kill; it is computed again
                if number != len(lines):
                    raise DataError(f"{self.path}, line {number}: not a record; delete the "
                                    "journal or run without --resume") from None
                logger.warning("%s: dropping a cut-off last line", self.path)
                self.path.write_text("\n".join(lines[:-1]) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished composition's record (with its ``row``) and flush it to disk."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done[int(record["row"])] = record

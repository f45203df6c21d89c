"""Checks and messages shared by the configuration sections (see :mod:`xtalloop.config`).

Limits whose reason belongs in the message (``n``), device names that the
code behind each setting understands, and the one-line rendering of a
pydantic ``ValidationError`` as ``key.path: message``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError

MAX_CANDIDATES = 10_000
"""Most candidates one generator source may make per composition (``n``).

Every candidate is held in memory until the ML prefilter has relaxed it
(about a second each on a CPU), so 10 000 is already hours per composition;
a larger ``n`` is almost always a typo (``n: 100000000`` used to run with
no output while memory grew). A wider search runs more seeds instead.
"""


def _candidate_cap(value: int) -> int:
    if value > MAX_CANDIDATES:
        raise ValueError(
            f"at most {MAX_CANDIDATES} candidates per source and composition, not {value}: "
            "each is held in memory and relaxed by the ML prefilter (about 1 s on a CPU); "
            "run more seeds for a wider search")
    return value


CandidateCount = Annotated[int, AfterValidator(_candidate_cap)]


def device_choice(choices: str, pattern: str) -> AfterValidator:
    """A check that a device name is one the code behind the setting understands."""
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"unknown device {value!r}: use {choices}")
        return value
    return AfterValidator(check)


TorchDevice = Annotated[str, device_choice("cpu, cuda, cuda:N or mps", r"cpu|mps|cuda(:\d+)?")]
"""An ML-prefilter device (torch device names)."""


def _location(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("random_symmetric", "prototype_substitution", "diffusion", "wyckoff"):
            continue  # discriminator tag pydantic inserts into the path
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


_KEY_PREFIX = re.compile(r"^([a-z_]+): (.+)$")


def config_error_message(exc: ValidationError) -> str:
    """One line per problem, ``key.path: message``, most relevant first."""
    lines = []
    for error in exc.errors():
        where = _location(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("compositions["):
            where, _, message = message.partition(": ")
        elif match := _KEY_PREFIX.match(message):  # a model validator naming one of its keys
            where, message = f"{where}.{match[1]}" if where else match[1], match[2]
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)

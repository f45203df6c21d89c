"""Small formatting helpers shared by the benchmarks' markdown tables."""

from __future__ import annotations


def percent(value: float | None, missing: str = "—") -> str:
    """``0.123`` as ``12.3%`` (``missing`` for None)."""
    return missing if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 4) -> str:
    """A float with ``digits`` decimals (``—`` for None)."""
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines

"""Bar charts of the CSP benchmark's rates per arity (one bar per figure of merit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def rate_bars(series: dict[str, dict[str, float | None]], counts: dict[str, int], title: str,
              path: Path, ylabel: str = "match rate") -> Path:
    """Save grouped bars: one group per key of ``counts`` (``"all"``, ``"2"``...), one bar
    per entry of ``series`` (its rates by group; ``None`` draws nothing).

    Parameters
    ----------
    series
        ``{legend label: {group: rate in [0, 1] or None}}``.
    counts
        ``{group: compositions}``, in the order of the groups on the x axis.
    title, ylabel
        Axis title and y label.
    path
        The PNG to write.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(counts)
    beside = len(series) > 3  # a long legend goes to the right of the bars, not over them
    figure = Figure(figsize=(10 if beside else 7, 4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        heights = [values.get(g) if values.get(g) is not None else 0.0 for g in groups]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, [f"{g}\n(n={counts[g]})" for g in groups])
    ax.set_xlabel("distinct elements")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if beside:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path

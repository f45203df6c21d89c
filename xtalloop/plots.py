"""Figures of a run: the energy funnel from generated candidates to DFT-validated structures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_funnel(compositions: list[dict[str, Any]], path: str | Path) -> Path:
    """Energy funnel: generated → ML-relaxed → prefiltered → DFT-validated.

    Each composition is one colour. Points are energies above the hull
    (eV/atom, symmetric-log axis): of every ML-relaxed candidate (ML hull),
    of the picks (ML hull) and of the same picks after DFT (DFT hull), with
    a line from each pick to its DFT result. Stage labels carry the counts.

    Parameters
    ----------
    compositions
        Per-composition summaries returned by the record job.
    path
        PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    rng = np.random.default_rng(0)
    colours = plt.get_cmap("tab10")
    totals = dict.fromkeys(("generated", "relaxed", "picked", "dft_validated"), 0)
    for i, comp in enumerate(compositions):
        colour = colours(i % 10)
        funnel = comp.get("funnel", {})
        for key in totals:
            totals[key] += int(funnel.get(key, 0))
        ml = np.asarray(comp.get("ml_e_above_hull", []), dtype=float)
        if ml.size:
            ax.scatter(1 + rng.uniform(-0.15, 0.15, ml.size), ml, s=10, alpha=0.45,
                       color=colour, linewidths=0)
        for row in comp.get("validated", []):
            ml_e, dft_e = row.get("ml_e_above_hull"), row.get("e_above_hull")
            if ml_e is not None:
                ax.scatter([2], [ml_e], s=28, color=colour, zorder=3)
            if ml_e is not None and dft_e is not None:
                ax.plot([2, 3], [ml_e, dft_e], color=colour, alpha=0.6, lw=1)
            if dft_e is not None:
                ax.scatter([3], [dft_e], s=40, marker="D", color=colour, zorder=3)
        ax.scatter([], [], color=colour, label=comp.get("formula", "?"))
        ax.text(0, 0.92 - 0.06 * i, f"{comp.get('formula', '?')}: {funnel.get('generated', 0)}",
                transform=ax.get_xaxis_transform(), ha="center", va="top", color=colour,
                fontsize=8)
    ax.set_xticks(
        [0, 1, 2, 3],
        [f"generated\n({totals['generated']})", f"ML-relaxed\n({totals['relaxed']})",
         f"prefiltered\n({totals['picked']})", f"DFT-validated\n({totals['dft_validated']})"],
    )
    ax.set_xlim(-0.5, 3.5)
    ax.set_yscale("symlog", linthresh=0.05)
    ax.set_ylim(bottom=-0.005)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("energy above hull (eV/atom)")
    ax.set_title("Energy funnel (ML hull for ML stages, DFT hull for DFT)")
    ax.text(0, 0.98, "candidates", transform=ax.get_xaxis_transform(), ha="center",
            va="top", fontsize=8, color="grey")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curve(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Energy and force errors, and the hull decision's F1, vs training structures.

    Parameters
    ----------
    rows
        One dict per model: ``n_train_structures``, ``energy_mae`` (meV/atom),
        ``force_mae`` (meV/Å), ``f1``; a row with 0 training structures (a
        pretrained model) is drawn as a horizontal reference line.
    path
        PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = sorted((r for r in rows if r["n_train_structures"]),
                     key=lambda r: r["n_train_structures"])
    baselines = [r for r in rows if not r["n_train_structures"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("energy_mae", "force_mae", "f1"),
                              ("energy MAE (meV/atom)", "force MAE (meV/Å)",
                               "hull decision F1 (stable ≤ 0.1 eV/atom)"), strict=True):
        points = [(r["n_train_structures"], r[key]) for r in trained if r[key] is not None]
        if points:
            ax.plot(*zip(*points), "o-", label=trained[0]["model"])
        for base in baselines:
            if base[key] is not None:
                ax.axhline(base[key], color="grey", ls="--", label=base["model"])
        ax.set_xlabel("DFT structures in training (besides elemental phases)")
        ax.set_ylabel(label)
        if key != "f1":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("Energy model vs held-out DFT data")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

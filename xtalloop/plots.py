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
        ``force_mae`` (meV/Å), ``f1``; rows of one ``model`` label form one
        curve, and a row with 0 training structures (a pretrained model) is
        drawn as a horizontal reference line.
    path
        PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = sorted((r for r in rows if r["n_train_structures"]),
                     key=lambda r: r["n_train_structures"])
    curves = list(dict.fromkeys(r["model"] for r in trained))
    baselines = [r for r in rows if not r["n_train_structures"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("energy_mae", "force_mae", "f1"),
                              ("energy MAE (meV/atom)", "force MAE (meV/Å)",
                               "hull decision F1 (stable ≤ 0.1 eV/atom)"), strict=True):
        for i, name in enumerate(curves):
            points = [(r["n_train_structures"], r[key]) for r in trained
                      if r["model"] == name and r[key] is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=f"C{i}", label=name)
        for i, base in enumerate(baselines):
            if base[key] is not None:
                ax.axhline(base[key], color=f"C{len(curves) + i}", ls="--", label=base["model"])
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rounds(rounds: list[dict[str, Any]], path: str | Path) -> Path:
    """DFT calls and stable structures per round (bars), and the hit rate (line).

    Parameters
    ----------
    rounds
        Round records: ``round``, ``dft_calls``, ``stable``, ``hit_rate``,
        ``arities`` (optional).
    path
        PNG file to write.
    """
    plt = _pyplot()
    x = np.array([r["round"] for r in rounds])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    calls = [r.get("dft_calls", 0) for r in rounds]
    stable = [r.get("stable", 0) for r in rounds]
    left.bar(x - 0.2, calls, 0.4, label="DFT calls (picks)", color="tab:blue")
    left.bar(x + 0.2, stable, 0.4, label="stable (≤ hull + tolerance)", color="tab:green")
    labels = [f"{r['round']}" + (f"\n{'+'.join(map(str, r['arities']))} el."
                                 if r.get("arities") else "") for r in rounds]
    for ax in (left, right):
        ax.set_xticks(x, labels)
        ax.set_xlabel("round (arities)")
    left.set_ylabel("count")
    left.legend(fontsize=8, frameon=False)
    hits = [np.nan if r.get("hit_rate") is None else 100 * r["hit_rate"] for r in rounds]
    right.plot(x, hits, "o-", color="tab:red")
    right.set_ylim(0, 105)
    right.set_ylabel("hit rate (%): stable / DFT calls")
    fig.suptitle("Active-learning rounds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


FUNNEL_STAGES = ("generated", "relaxed", "picked", "dft_validated", "stable")


def plot_round_funnel(rounds: list[dict[str, Any]], path: str | Path) -> Path:
    """Candidates per stage and round: generated → ML-relaxed → picked → DFT → stable."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=120)
    width = 0.8 / max(len(rounds), 1)
    x = np.arange(len(FUNNEL_STAGES))
    for i, record in enumerate(rounds):
        funnel = record.get("funnel", {})
        values = [max(funnel.get(stage, 0), 0) for stage in FUNNEL_STAGES]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=f"round {record['round']}")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, ["generated", "ML-relaxed", "prefiltered", "DFT-validated", "stable"])
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("structures")
    ax.set_title("Energy funnel per round")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_hull(points: list[dict[str, Any]], elements: list[str], path: str | Path,
              edges: list[tuple[int, int]] | None = None) -> Path:
    """Convex hull of a binary or ternary system, the run's new structures marked.

    Parameters
    ----------
    points
        One dict per phase: ``composition`` (fractions by element),
        ``formation_energy`` (eV/atom), ``e_above_hull``, ``label``,
        ``on_hull`` (bool), ``new`` (found by this run) and ``reference``
        (an elemental reference phase).
    elements
        The system's 2 or 3 elements, in plotting order.
    path
        PNG file to write.
    edges
        Ternary only: pairs of indices into ``points`` joined by hull facets.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    on_hull = [p for p in points if p["on_hull"]]
    if len(elements) == 2:
        def xy(p):
            return p["composition"].get(elements[1], 0.0), p["formation_energy"]

        hull = sorted((xy(p) for p in on_hull), key=lambda t: t[0])
        ax.plot(*zip(*hull), "-", color="grey", lw=1, zorder=1)
        ax.set_xlabel(f"fraction of {elements[1]}")
        ax.set_ylabel("formation energy (eV/atom)")
        ax.set_xlim(-0.05, 1.05)
    else:
        corners = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])

        def xy(p):
            fractions = np.array([p["composition"].get(el, 0.0) for el in elements])
            return tuple(fractions @ corners)

        ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", lw=0.8)
        for (cx, cy), el in zip(corners, elements, strict=True):
            ax.annotate(el, (cx, cy), textcoords="offset points", xytext=(0, 6 if cy else -14),
                        ha="center", fontsize=10)
        for i, j in edges or []:
            ax.plot(*np.array([xy(points[i]), xy(points[j])]).T, color="grey", lw=0.6,
                    zorder=1)
        ax.set_aspect("equal")
        ax.axis("off")
    old = [p for p in points if not p["new"] and not p.get("reference")]
    new = [p for p in points if p["new"]]
    references = [p for p in points if p.get("reference")]
    if references:
        ax.scatter(*zip(*(xy(p) for p in references)), s=30, marker="s", color="black",
                   label="elemental reference", zorder=2)
    if old:
        ax.scatter(*zip(*(xy(p) for p in old)), s=18, color="lightgrey", edgecolor="grey",
                   label="known before this run", zorder=2)
    if new:
        colours = [p["e_above_hull"] if p["e_above_hull"] is not None else 0 for p in new]
        art = ax.scatter(*zip(*(xy(p) for p in new)), c=colours, cmap="viridis_r", vmin=0,
                         vmax=max(0.2, max(colours)), marker="*", s=120, edgecolor="black",
                         linewidths=0.5, label="found by this run", zorder=3)
        fig.colorbar(art, ax=ax, label="E above hull (eV/atom)", shrink=0.8)
    for p in on_hull:
        if p.get("reference") and len(elements) == 3:
            continue  # the corner says it
        ax.annotate(p["label"], xy(p), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.set_title(f"{'-'.join(elements)} DFT convex hull")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_model_history(models: list[dict[str, Any]], path: str | Path) -> Path:
    """Held-out energy error of each trained model and of its parent, vs training data.

    Parameters
    ----------
    models
        Registry records: ``model_id``, ``n_train_structures``, ``metrics``
        and ``parent_metrics`` (``energy_mae`` in meV/atom, ``f1``), ``promoted``.
    path
        PNG file to write.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for ax, key, label in ((left, "energy_mae", "held-out energy MAE (meV/atom)"),
                           (right, "f1", "hull decision F1 (held-out)")):
        xs = [m["n_train_structures"] for m in models]
        new = [(m.get("metrics") or {}).get(key) for m in models]
        parent = [(m.get("parent_metrics") or {}).get(key) for m in models]
        ax.plot(xs, [np.nan if v is None else v for v in new], "o-", label="new model")
        ax.plot(xs, [np.nan if v is None else v for v in parent], "s--", mfc="none",
                color="grey", label="its parent, same data")
        for x, v, m in zip(xs, new, models, strict=True):
            if v is not None:
                ax.annotate(m["model_id"] + ("*" if m.get("promoted") else ""), (x, v),
                            textcoords="offset points", xytext=(3, 4), fontsize=7)
        ax.set_xlabel("DFT structures in training (besides elemental references)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts, not 3.25
        ax.set_ylabel(label)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Energy models trained by the loop (* promoted)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

"""Metrics of the prefilter benchmark, on plain numbers (no model, no I/O).

Kept apart from :mod:`xtalloop.benchmark.prefilter` so each can be checked on
hand-made numbers: the stable/unstable call as in Matbench Discovery (stable
means an energy above the hull ≤ 0, the discovery acceleration factor DAF is
precision over prevalence), the energy order of polymorphs, and a convex hull
per chemical system from tabulated formation energies.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

#: Elements whose presence makes an MP formation energy carry an MP2020 correction
#: (anion corrections: O, S, F, Cl, Br, I, N, Se, Si, Sb, Te, H) or a GGA+U one
#: (Co, Cr, Fe, Mn, Mo, Ni, V, W in oxides and fluorides). An approximation: MP
#: applies an anion correction only where the element is the anion.
ANION_CORRECTED = frozenset({"O", "S", "F", "Cl", "Br", "I", "N", "Se", "Si", "Sb", "Te", "H"})
U_ELEMENTS = frozenset({"Co", "Cr", "Fe", "Mn", "Mo", "Ni", "V", "W"})


def mp2020_corrected(composition: Composition) -> bool:
    """Whether MP2020 likely corrects this composition's energy (anion or U element)."""
    symbols = {el.symbol for el in composition.elements}
    return bool(symbols & ANION_CORRECTED) or (
        bool(symbols & U_ELEMENTS) and bool(symbols & {"O", "F"}))


def error_stats(predicted: Sequence[float], true: Sequence[float]) -> dict[str, float | int | None]:
    """MAE, median absolute error, mean signed error (predicted − true) and RMSE, eV/atom."""
    p, t = np.asarray(predicted, dtype=float), np.asarray(true, dtype=float)
    if p.size == 0:
        return {"n": 0, "mae": None, "median_ae": None, "mean_error": None, "rmse": None}
    err = p - t
    return {"n": int(p.size), "mae": float(np.mean(np.abs(err))),
            "median_ae": float(np.median(np.abs(err))), "mean_error": float(np.mean(err)),
            "rmse": float(np.sqrt(np.mean(err ** 2)))}


def classification(predicted_e_hull: Sequence[float], true_e_hull: Sequence[float],
                   threshold: float = 0.0) -> dict[str, float | int | None]:
    """The stable/unstable call: stable means ``e_hull <= threshold`` (eV/atom).

    Returns counts (tp, fp, tn, fn), precision, recall, F1, accuracy, the
    prevalence of stable structures and the DAF (precision / prevalence: how
    many times more stable structures a screen finds than random picks).
    Undefined ratios (no predicted stable, no true stable) are ``None``.
    """
    p = np.asarray(predicted_e_hull, dtype=float) <= threshold
    t = np.asarray(true_e_hull, dtype=float) <= threshold
    tp, fp = int(np.sum(p & t)), int(np.sum(p & ~t))
    fn, tn = int(np.sum(~p & t)), int(np.sum(~p & ~t))
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall else None)
    prevalence = (tp + fn) / n if n else None
    daf = precision / prevalence if precision is not None and prevalence else None
    return {"n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": precision,
            "recall": recall, "f1": f1, "accuracy": (tp + tn) / n if n else None,
            "prevalence": prevalence, "daf": daf}


def polymorph_ordering(groups: Iterable[Sequence[tuple[float, float]]],
                       min_gap: float = 0.0) -> dict[str, float | int | None]:
    """How well a model orders polymorphs of one composition.

    Parameters
    ----------
    groups
        Per composition, ``(true, predicted)`` energies per atom of its
        structures (any common offset: only differences within a group count).
    min_gap
        Pairs whose true energies differ by no more than this (eV/atom) are
        left out of the pair accuracy (a tie has no right order).

    Returns
    -------
    dict
        ``pair_accuracy`` (fraction of pairs ordered as the truth),
        ``top1`` (fraction of groups whose predicted lowest is the true lowest),
        and the counts.
    """
    right = pairs = hits = n_groups = 0
    for group in groups:
        if len(group) < 2:
            continue
        n_groups += 1
        for (t1, p1), (t2, p2) in itertools.combinations(group, 2):
            if abs(t1 - t2) <= min_gap:
                continue
            pairs += 1
            right += (t1 < t2) == (p1 < p2)
        true_best = min(range(len(group)), key=lambda i: group[i][0])
        pred_best = min(range(len(group)), key=lambda i: group[i][1])
        hits += true_best == pred_best
    return {"n_compositions": n_groups, "n_pairs": pairs,
            "pair_accuracy": right / pairs if pairs else None,
            "top1": hits / n_groups if n_groups else None}


class FormationHull:
    """Convex hulls of tabulated formation energies, one per chemical system.

    Parameters
    ----------
    entries
        ``(composition, formation energy per atom)`` of known phases (e.g. MP-20
        train + val). Every element's reference is added at 0 eV/atom.
    """

    def __init__(self, entries: Iterable[tuple[Composition, float]]) -> None:
        self._by_system: dict[frozenset[str], list[PDEntry]] = {}
        for comp, e_form in entries:
            if not math.isfinite(e_form):
                continue
            key = frozenset(el.symbol for el in comp.elements)
            self._by_system.setdefault(key, []).append(
                PDEntry(comp, e_form * comp.num_atoms))
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    def diagram(self, elements: frozenset[str]) -> PhaseDiagram:
        """The phase diagram of one chemical system (cached)."""
        if elements not in self._diagrams:
            entries = [PDEntry(Composition(el), 0.0) for el in sorted(elements)]
            for size in range(2, len(elements) + 1):
                for subset in itertools.combinations(sorted(elements), size):
                    entries += self._by_system.get(frozenset(subset), [])
            self._diagrams[elements] = PhaseDiagram(entries)
        return self._diagrams[elements]

    def e_above_hull(self, composition: Composition, formation_energy_per_atom: float) -> float:
        """Energy (eV/atom) above the known hull; negative below it (a new stable phase)."""
        elements = frozenset(el.symbol for el in composition.elements)
        if len(elements) == 1:
            return float(formation_energy_per_atom)
        diagram = self.diagram(elements)
        decomposition_energy = diagram.get_hull_energy_per_atom(composition)
        return float(formation_energy_per_atom - decomposition_energy)


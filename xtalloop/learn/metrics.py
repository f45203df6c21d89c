"""How well an energy model reproduces DFT: errors, and the stable-or-not decision.

Two models trained on different DFT codes differ by a constant energy per
element (pseudopotentials, reference states); that offset cancels in every
formation energy and hull. :func:`element_offsets` fits it on training frames
and :func:`evaluate` removes it before measuring errors, so a pretrained model
(CHGNet, fitted to VASP) and a model trained on GPAW data are compared on what
matters to the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import Composition

from xtalloop.hull import energies_above_hull
from xtalloop.learn.dataset import FINAL
from xtalloop.models.energy_model import EnergyModel, Prediction

STABLE_WITHIN = 0.1
"""eV/atom above the hull within which a structure counts as stable."""


def _counts(frames: Sequence[Atoms], elements: list[str]) -> np.ndarray:
    index = {el: i for i, el in enumerate(elements)}
    counts = np.zeros((len(frames), len(elements)))
    for row, atoms in enumerate(frames):
        for symbol in atoms.get_chemical_symbols():
            counts[row, index[symbol]] += 1
    return counts


def element_offsets(frames: Sequence[Atoms], predictions: Sequence[Prediction]
                    ) -> dict[str, float]:
    """Per-element energies (eV/atom) that best map the model's energies onto DFT's.

    The least-squares solution of ``E_dft - E_model = Σ n_el μ_el`` over ``frames``.
    """
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    residual = np.array([a.calc.results["energy"] - p.energy
                         for a, p in zip(frames, predictions, strict=True)])
    mu, *_ = np.linalg.lstsq(_counts(frames, elements), residual, rcond=None)
    return dict(zip(elements, mu.tolist(), strict=True))


def _aligned_energy(atoms: Atoms, prediction: Prediction, offsets: dict[str, float]) -> float:
    return prediction.energy + sum(offsets.get(s, 0.0) for s in atoms.get_chemical_symbols())


def evaluate(model: EnergyModel, test: Sequence[Atoms], align_on: Sequence[Atoms] = (),
             stable_within: float = STABLE_WITHIN) -> dict[str, Any]:
    """Errors of ``model`` on the DFT frames ``test``.

    Parameters
    ----------
    model
        The energy model.
    test
        Held-out frames with DFT results (``info["group"]``, ``info["step"]``).
    align_on
        Training frames on which per-element offsets are fitted first
        (:func:`element_offsets`); empty: no alignment.
    stable_within
        The hull decision's threshold (eV/atom).

    Returns
    -------
    dict
        ``n_frames``, ``energy_mae`` (meV/atom), ``force_mae`` (meV/Å),
        ``stress_mae`` (GPa, periodic frames), and :func:`hull_decision`'s
        ``precision``, ``recall``, ``f1`` and ``hull_mae`` over the
        relaxed (final) test frames together with the training ones.
    """
    from ase.units import GPa

    test = list(test)
    if not test:
        return {"n_frames": 0}
    align_on = list(align_on)
    predictions = model.predict(test + align_on)
    pred_test, pred_align = predictions[:len(test)], predictions[len(test):]
    offsets = element_offsets(align_on, pred_align) if align_on else {}
    energy_err = [abs(_aligned_energy(a, p, offsets) - a.calc.results["energy"]) / len(a)
                  for a, p in zip(test, pred_test, strict=True)]
    force_err = np.concatenate([np.abs(p.forces - a.calc.results["forces"]).ravel()
                                for a, p in zip(test, pred_test, strict=True)])
    stress_err = [np.abs(p.stress - a.calc.results["stress"]).mean() / GPa
                  for a, p in zip(test, pred_test, strict=True)
                  if a.calc.results.get("stress") is not None]
    metrics = {
        "n_frames": len(test),
        "n_structures": len({a.info["group"] for a in test}),
        "energy_mae": 1000 * float(np.mean(energy_err)),
        "force_mae": 1000 * float(np.mean(force_err)),
        "stress_mae": float(np.mean(stress_err)) if stress_err else None,
    }
    pool = test + align_on
    finals = [i for i, a in enumerate(pool) if a.info.get("step") == FINAL]
    if finals:
        dft = [pool[i].calc.results["energy"] for i in finals]
        ml = [_aligned_energy(pool[i], predictions[i], offsets) for i in finals]
        scored = [j for j, i in enumerate(finals) if i < len(test)]
        metrics.update(hull_decision([pool[i] for i in finals], dft, ml, scored,
                                     stable_within))
    return metrics


def hull_decision(structures: Sequence[Atoms], dft_energies: Sequence[float],
                  model_energies: Sequence[float], scored: Sequence[int],
                  stable_within: float = STABLE_WITHIN) -> dict[str, Any]:
    """Does the model put the same structures within ``stable_within`` of the hull as DFT?

    Both hulls are built from all ``structures`` (relaxed structures with their
    total energies, elements included); the decision is scored on the indices
    ``scored``. A chemical system whose elements are not all present has no
    hull and is left out.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (stable = positive; ``None`` when
        undefined), ``n_scored``, ``n_stable_dft`` and ``hull_mae``
        (meV/atom, hull energies).
    """
    compositions = [Composition(a.get_chemical_formula()) for a in structures]
    elemental = {c.elements[0].symbol: i for i, c in enumerate(compositions) if len(c) == 1}
    e_dft, e_ml = {}, {}
    for i in scored:
        if not all(el.symbol in elemental for el in compositions[i].elements):
            continue
        system = {el.symbol for el in compositions[i].elements}
        members = [j for j, c in enumerate(compositions)
                   if {el.symbol for el in c.elements} <= system]
        for energies, out in ((dft_energies, e_dft), (model_energies, e_ml)):
            points = [(compositions[j], energies[j]) for j in members]
            out[i] = energies_above_hull([points[members.index(i)]], points)[0]
    truth = [e_dft[i] <= stable_within for i in e_dft]
    guess = [e_ml[i] <= stable_within for i in e_dft]
    tp = sum(t and g for t, g in zip(truth, guess, strict=True))
    precision = tp / sum(guess) if sum(guess) else None
    recall = tp / sum(truth) if sum(truth) else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision and recall else (0.0 if precision == 0 or recall == 0 else None))
    return {
        "n_scored": len(e_dft),
        "n_stable_dft": int(sum(truth)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "hull_mae": 1000 * float(np.mean([abs(e_dft[i] - e_ml[i]) for i in e_dft]))
        if e_dft else None,
    }

"""DFT training data from the store: energies, forces and stresses of every relaxation.

Every validated structure and every elemental reference keeps the ionic steps
of its DFT relaxation. :func:`frames_from_store` turns them into ASE ``Atoms``
with a ``SinglePointCalculator`` (energy in eV, forces in eV/Å, stress in
eV/Å³ with ASE's sign), a few frames per relaxation, each tagged with the
structure it belongs to (``info["group"]``) so that a train/test split never
puts steps of one relaxation on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa
from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from xtalloop.store.results import REFERENCES, VALIDATED, ResultsDB

FINAL = "final"
"""``info["step"]`` of a relaxation's last frame: the relaxed structure."""


def stress_to_ase(stress: Any) -> np.ndarray | None:
    """A stored stress as ASE's Voigt-6 eV/Å³.

    GPAW (through atomate2's ASE trajectory) stores ASE's Voigt-6 eV/Å³; VASP
    stores a 3×3 tensor in kBar with the opposite sign.
    """
    if stress is None:
        return None
    array = np.asarray(stress, dtype=float)
    if array.shape == (6,):
        return array
    if array.shape == (3, 3):
        return full_3x3_to_voigt_6_stress(-array * 0.1 * GPa)
    raise ValueError(f"unexpected stress shape {array.shape}")


def _frame(structure: dict[str, Any], energy: float, forces: Any, stress: Any,
           group: str, step: int | str, molecular: bool) -> Atoms:
    atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(structure))
    atoms.calc = SinglePointCalculator(
        atoms, energy=float(energy), forces=np.asarray(forces, dtype=float),
        stress=None if molecular else stress_to_ase(stress))
    atoms.info.update(group=group, step=step)
    return atoms


def relaxation_frames(doc: dict[str, Any], group: str, max_frames: int,
                      molecular: bool = False) -> list[Atoms]:
    """Up to ``max_frames`` evenly spaced ionic steps of one stored relaxation.

    The first and the last step are always among them; the last is marked
    ``info["step"] = "final"``. A document without a trajectory (stored
    before trajectories were kept) gives only its final structure when its
    forces were stored, and nothing otherwise.
    """
    steps = [s for s in doc.get("trajectory") or []
             if s.get("structure") and s.get("energy") is not None and s.get("forces")]
    if not steps:
        if doc.get("forces") is None or doc.get("energy") is None:
            return []
        return [_frame(doc["structure"], doc["energy"], doc["forces"],
                       doc.get("stress_kbar"), group, FINAL, molecular)]
    keep = np.unique(np.linspace(0, len(steps) - 1, min(max_frames, len(steps))).round())
    frames = []
    for i in keep.astype(int):
        s = steps[i]
        step = FINAL if i == len(steps) - 1 else int(i)
        frames.append(_frame(s["structure"], s["energy"], s["forces"], s.get("stress"),
                             group, step, molecular))
    return frames


def frames_from_store(db: ResultsDB, settings_key: str, max_frames_per_relaxation: int = 8
                      ) -> list[Atoms]:
    """Frames of every validated structure and reference computed with ``settings_key``.

    Only one settings key at a time: energies of different DFT settings (or
    codes) are not on one scale. ``info["group"]`` is the validated
    structure's uuid or ``reference:<element>``.
    """
    from xtalloop.references import is_molecular
    from xtalloop.store.files import FileStore, trajectory_of

    frames = []
    with FileStore(db.config, create=db.create) as files:
        for doc in db.store(VALIDATED).query({"dft.settings_key": settings_key}):
            doc["trajectory"] = trajectory_of(doc, files)  # steps kept in the store's files
            frames += relaxation_frames(doc, doc["uuid"], max_frames_per_relaxation)
        for doc in db.store(REFERENCES).query({"settings_key": settings_key}):
            doc["trajectory"] = trajectory_of(doc, files)
            molecular = is_molecular(Structure.from_dict(doc["structure"]))
            frames += relaxation_frames(doc, f"reference:{doc['element']}",
                                        max_frames_per_relaxation, molecular)
    for atoms in frames:
        atoms.info["formula"] = Composition(atoms.get_chemical_formula()).reduced_formula
    return frames


def _hash_fraction(group: str) -> float:
    """A number in [0, 1] fixed by the group name."""
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def is_holdout(group: str, fraction: float) -> bool:
    """Whether a structure belongs to the held-out test set by its hash alone.

    Decided by a hash of the group name, so a structure stays on the same side
    from one training round to the next: a parent model is never tested on
    data it was trained on. Elemental references always train.
    """
    if group.startswith("reference:") or fraction <= 0:
        return False
    return _hash_fraction(group) < fraction


def split_key(frames: Iterable[Atoms]) -> dict[str, str]:
    """The name each structure's side of the split is decided by: ``{group: key}``.

    A validated structure's group is its store uuid, drawn at random when it
    is first stored, so a split by uuid would differ between two runs of the
    same seeded loop (two runs of the campaign's arm d made different
    promotions from the same round). The key is its reduced formula instead
    (``formula:<formula>``): fixed by content, the same in every run, and
    every polymorph of a composition on the same side, so a held-out
    structure is never judged by a model that trained on a polymorph of it.
    Frames without a formula (and references) keep their group.
    """
    keys: dict[str, str] = {}
    for atoms in frames:
        group = atoms.info["group"]
        formula = atoms.info.get("formula")
        if group not in keys:
            keys[group] = (f"formula:{formula}" if formula and not group.startswith("reference:")
                           else group)
    return keys


def split_frames(frames: Iterable[Atoms], holdout_fraction: float
                 ) -> tuple[list[Atoms], list[Atoms]]:
    """``(train, holdout)`` by structure, decided by :func:`split_key` (see :func:`is_holdout`).

    With few structures the hash may hold out none; then the key of
    smallest hash is held out (given at least two). That keeps the split
    safe across rounds: the store only grows, so a later round's smallest
    hash is this one or a key no earlier model trained on. It may also
    hold out all of them; then only the key of smallest hash stays held out,
    so that something is left to train on.
    """
    frames = list(frames)
    key = split_key(frames)
    candidates = sorted({k for g, k in key.items() if not g.startswith("reference:")})
    held = {k for k in candidates if is_holdout(k, holdout_fraction)}
    if held and held.issuperset(candidates) and len(candidates) >= 2:
        held = {min(candidates, key=_hash_fraction)}
    if not held and holdout_fraction > 0 and len(candidates) >= 2:
        held = {min(candidates, key=_hash_fraction)}
    train = [a for a in frames if key[a.info["group"]] not in held]
    holdout = [a for a in frames if key[a.info["group"]] in held]
    return train, holdout


def groups(frames: Iterable[Atoms]) -> list[str]:
    """The distinct structures the frames come from, in first-seen order."""
    return list(dict.fromkeys(a.info["group"] for a in frames))


def elements_of(frames: Iterable[Atoms]) -> set[str]:
    """Every chemical symbol in the frames."""
    return {s for a in frames for s in a.get_chemical_symbols()}


def covered(frames: Iterable[Atoms], elements: set[str]) -> list[Atoms]:
    """The frames made only of ``elements`` (a model trained on them can evaluate these)."""
    return [a for a in frames if set(a.get_chemical_symbols()) <= elements]

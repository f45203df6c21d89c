"""Wyckoff descriptions as training examples: the decisions the model makes, in its order.

Atoms are placed element by element, lowest electronegativity first (cations
before anions, so the anion sublattice is chosen knowing the cations), and
within an element from the most special position to the general one. Each
example holds, for every decision, what the model sees and the choice made
in the known crystal.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from functools import reduce
from math import gcd

import numpy as np
import torch
from pymatgen.core import Element

from xtalloop.generators.wyckoff.model import MAX_FORMULA_UNITS
from xtalloop.generators.wyckoff.sites import WyckoffCrystal
from xtalloop.generators.wyckoff.tables import MAX_Z, wyckoff_table

#: Elements a composition may have (more are refused by the generator).
MAX_ELEMENTS = 10


def element_order(zs: list[int]) -> list[int]:
    """Atomic numbers in placement order: electronegativity, then atomic number."""
    return sorted(set(zs), key=_order_key)


@functools.lru_cache(maxsize=None)
def _order_key(z: int) -> tuple[float, int]:
    with warnings.catch_warnings():  # "no Pauling electronegativity" for He, Ne, Ar: NaN
        warnings.simplefilter("ignore")
        x = Element.from_Z(z).X
    return (x if x == x else 5.0, z)


@dataclass
class Example:
    """One crystal's decisions as arrays (``S`` sites, ``S + 1`` decoder positions)."""

    elements: np.ndarray   # (E,) atomic numbers, in placement order
    amounts: np.ndarray    # (E,) reduced-formula amounts
    group: int             # 1..230
    units: int             # formula units in the conventional cell
    wp: np.ndarray         # (S,) global Wyckoff ids
    free: np.ndarray       # (S, 3) free coordinates, 0-padded
    n_free: np.ndarray     # (S,) free coordinates per site
    site_z: np.ndarray     # (S,) element of each site
    remaining: np.ndarray  # (S,) atoms of the site's element still to place before it
    lattice: np.ndarray    # (6,) log V/atom, log b/a, log c/a, angles / 90


def to_example(crystal: WyckoffCrystal, max_sites: int = 64) -> Example | None:
    """The training example of a crystal (``None`` if it is out of the model's range)."""
    table = wyckoff_table()
    g = crystal.space_group
    mult = table.multiplicity
    if not crystal.sites or len(crystal.sites) > max_sites:
        return None
    if any(s.z > MAX_Z or s.wp >= table.count[g] for s in crystal.sites):
        return None
    counts: dict[int, int] = {}
    for s in crystal.sites:
        counts[s.z] = counts.get(s.z, 0) + int(mult[table.offset[g] + s.wp])
    units = reduce(gcd, counts.values())
    if units > MAX_FORMULA_UNITS or len(counts) > MAX_ELEMENTS:
        return None
    order = element_order(list(counts))
    rank = {z: i for i, z in enumerate(order)}
    sites = sorted(crystal.sites, key=lambda s: (rank[s.z], -s.wp, tuple(s.free)))
    wp = np.array([table.offset[g] + s.wp for s in sites])
    free = np.zeros((len(sites), 3), np.float32)
    n_free = np.zeros(len(sites), int)
    for i, s in enumerate(sites):
        free[i, :len(s.free)] = np.mod(s.free, 1.0)
        n_free[i] = len(s.free)
    placed: dict[int, int] = {}
    remaining = np.zeros(len(sites), np.float32)
    for i, s in enumerate(sites):
        remaining[i] = counts[s.z] - placed.get(s.z, 0)
        placed[s.z] = placed.get(s.z, 0) + int(mult[wp[i]])
    a, b, c, alpha, beta, gamma = crystal.lattice
    n_atoms = sum(counts.values())
    volume = _volume(a, b, c, alpha, beta, gamma)
    if not (volume > 0 and np.isfinite(volume)):
        return None
    lattice = np.array([np.log(volume / n_atoms), np.log(b / a), np.log(c / a),
                        alpha / 90, beta / 90, gamma / 90], np.float32)
    return Example(np.array(order), np.array([counts[z] // units for z in order], np.float32),
                   g, units, wp, free, n_free, np.array([s.z for s in sites]), remaining,
                   lattice)


def _volume(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> float:
    ca, cb, cg = (np.cos(np.radians(x)) for x in (alpha, beta, gamma))
    return float(a * b * c * np.sqrt(max(1 - ca ** 2 - cb ** 2 - cg ** 2 + 2 * ca * cb * cg,
                                         0.0)))


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Pad a list of examples into one batch of tensors (decoder length S_max + 1)."""
    table = wyckoff_table()
    start = table.size
    b = len(examples)
    e_max = max(len(x.elements) for x in examples)
    t_max = max(len(x.wp) for x in examples) + 1
    batch = {
        "z": torch.zeros(b, e_max, dtype=torch.long),
        "amount": torch.zeros(b, e_max),
        "comp_mask": torch.zeros(b, e_max, dtype=torch.bool),
        "group": torch.tensor([x.group for x in examples]),
        "units": torch.tensor([x.units for x in examples]),
        "prev_wp": torch.full((b, t_max), start, dtype=torch.long),
        "prev_coord": torch.zeros(b, t_max, 3),
        "cur_z": torch.zeros(b, t_max, dtype=torch.long),
        "remaining": torch.zeros(b, t_max),
        "seq_mask": torch.zeros(b, t_max, dtype=torch.bool),
        "target_wp": torch.zeros(b, t_max, dtype=torch.long),  # global ids
        "target_free": torch.zeros(b, t_max, 3),
        "n_free": torch.zeros(b, t_max, dtype=torch.long),
        "site_mask": torch.zeros(b, t_max, dtype=torch.bool),
        "end": torch.zeros(b, dtype=torch.long),
        "lattice": torch.from_numpy(np.stack([x.lattice for x in examples])),
    }
    for i, x in enumerate(examples):
        e, s = len(x.elements), len(x.wp)
        batch["z"][i, :e] = torch.from_numpy(x.elements)
        batch["amount"][i, :e] = torch.from_numpy(x.amounts)
        batch["comp_mask"][i, :e] = True
        batch["prev_wp"][i, 1:s + 1] = torch.from_numpy(x.wp)
        batch["prev_coord"][i, 1:s + 1] = torch.from_numpy(x.free)
        batch["cur_z"][i, :s] = torch.from_numpy(x.site_z)
        batch["remaining"][i, :s] = torch.from_numpy(x.remaining)
        batch["seq_mask"][i, :s + 1] = True
        batch["target_wp"][i, :s] = torch.from_numpy(x.wp)
        batch["target_free"][i, :s] = torch.from_numpy(x.free)
        batch["n_free"][i, :s] = torch.from_numpy(x.n_free)
        batch["site_mask"][i, :s] = True
        batch["end"][i] = s
    batch["allowed"] = site_masks(batch)
    return batch


def allowed_positions(group: int, remaining: float, used: set[int]) -> np.ndarray:
    """Global ids of ``group``'s positions that fit ``remaining`` atoms and are still free.

    A position without free coordinates holds one orbit only, so once ``used`` it
    is closed; any other position can take several orbits.
    """
    table = wyckoff_table()
    ids = np.arange(table.offset[group], table.offset[group] + table.count[group])
    fits = table.multiplicity[ids] <= remaining
    open_ = np.array([table.dof[i] > 0 or int(i) not in used for i in ids])
    return ids[fits & open_]


def site_masks(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T, MAX_POSITIONS) which positions of its group each decision may choose.

    The sampler's rule (:func:`allowed_positions`), vectorised over a batch.
    """
    from xtalloop.generators.wyckoff.model import MAX_POSITIONS

    table = wyckoff_table()
    local = torch.arange(MAX_POSITIONS)
    offset = torch.from_numpy(table.offset)[batch["group"]]            # (B,)
    count = torch.from_numpy(table.count)[batch["group"]]              # (B,)
    ids = (offset[:, None] + local[None]).clamp(max=table.size - 1)    # (B, P)
    mult = torch.from_numpy(table.multiplicity).float()[ids]           # (B, P)
    fixed = torch.from_numpy(table.dof == 0)[ids]                      # (B, P)
    target = (batch["target_wp"] - offset[:, None]).clamp(min=0)       # (B, T)
    onehot = torch.zeros(*target.shape, MAX_POSITIONS, dtype=torch.int32)
    onehot.scatter_(2, target[..., None], batch["site_mask"][..., None].int())
    used = (torch.cumsum(onehot, 1) - onehot) > 0  # chosen at an earlier position
    masks = (local[None, None] < count[:, None, None]) \
        & (mult[:, None] <= batch["remaining"][..., None]) & ~(fixed[:, None] & used)
    return masks & batch["site_mask"][..., None]

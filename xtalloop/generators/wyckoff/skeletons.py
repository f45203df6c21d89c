"""Known free coordinates for a sampled Wyckoff skeleton: the checkpoint's skeleton bank.

The Wyckoff model chooses the space group and the Wyckoff positions well (on
MPTS-52 val the right skeleton is among 20 samples for a third of the
compositions) but its free coordinates are barely better than uniform (3.5-3.7
nats against 3.87 for a uniform bin), so most samples with the right skeleton
still miss the crystal. A crystal of the training data with the same skeleton
(space group and multiset of Wyckoff positions, whatever its elements) mostly
has the right coordinates: with the target's own skeleton and a training
crystal's coordinates and cell shape, 34 of the 58 (of 80) MPTS-52 val crystals
whose skeleton occurs in MPTS-52 ``train_partial`` are matched (StructureMatcher
as in the CSP benchmark). So a checkpoint carries, per skeleton of its training
crystals, up to :data:`PER_SKELETON` of them (site elements, free coordinates and
cell shape; the key has no elements, so a skeleton serves other compositions too,
e.g. an ordered ternary on a binary's positions, the chemically closest entry
first), and the generator dresses the model's skeleton with them before it falls
back to the model's own coordinates.

Sites are matched in a canonical order: Wyckoff position, then the element's
place in electronegativity order within its crystal (cations before anions), so
the bank's cation coordinates go to the sample's cations.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Iterable

from pymatgen.core import Element

from xtalloop.generators.wyckoff.data import element_order
from xtalloop.generators.wyckoff.sites import WyckoffCrystal, WyckoffSite

#: Training crystals kept per skeleton (the first ones met in the training tables).
PER_SKELETON = 8
#: Decimals kept of a free coordinate or lattice parameter in the bank.
DECIMALS = 4


def skeleton_key(crystal: WyckoffCrystal) -> str:
    """``"<space group>:<sorted Wyckoff indices>"``, the elements left out."""
    return f"{crystal.space_group}:" + ",".join(str(w) for w in sorted(s.wp for s in
                                                                       crystal.sites))


def _canonical(crystal: WyckoffCrystal) -> list[WyckoffSite]:
    """The sites in bank order: Wyckoff position, then element rank (electronegativity)."""
    rank = {z: i for i, z in enumerate(element_order([s.z for s in crystal.sites]))}
    return sorted(crystal.sites, key=lambda s: (s.wp, rank[s.z], tuple(s.free)))


def build_bank(crystals: Iterable[WyckoffCrystal], per_skeleton: int = PER_SKELETON,
               start: dict[str, list] | None = None) -> dict[str, list]:
    """Free coordinates and cell shapes per skeleton, up to ``per_skeleton`` crystals each.

    Each entry is ``[elements, lattice, free]``: the atomic number of each site, the
    conventional lattice (Å, degrees) and the free coordinates per site, in bank order.
    ``start`` (a parent checkpoint's bank) is extended: ``crystals`` come first (what a
    fine-tuning round just validated), then the parent's entries, within the cap.
    """
    bank: dict[str, list] = {}
    for crystal in crystals:
        entries = bank.setdefault(skeleton_key(crystal), [])
        if len(entries) >= per_skeleton:
            continue
        sites = _canonical(crystal)
        entries.append([[s.z for s in sites], [round(float(x), DECIMALS)
                                               for x in crystal.lattice],
                        [[round(float(x) % 1.0, DECIMALS) for x in s.free] for s in sites]])
    for key, entries in (start or {}).items():
        merged = bank.setdefault(key, [])
        merged.extend(entries[:max(0, per_skeleton - len(merged))])
    return bank


def dump_bank(bank: dict[str, list]) -> str:
    """The bank as compact JSON text (stored in the checkpoint as a string)."""
    return json.dumps(bank, separators=(",", ":"))


def load_bank(text: object) -> dict[str, list]:
    """The bank of a checkpoint's ``skeletons`` value (empty when absent or unreadable)."""
    if not isinstance(text, str):
        return {}
    try:
        bank = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return bank if isinstance(bank, dict) else {}


def dress(crystal: WyckoffCrystal, bank: dict[str, list], use: int) -> WyckoffCrystal | None:
    """``crystal`` with the free coordinates and cell shape of its skeleton's ``use``-th
    bank entry, the chemically closest first (:func:`chemical_distance`), its own volume
    kept; ``None`` when the bank has no such entry."""
    entries = bank.get(skeleton_key(crystal))
    if not entries:
        return None
    if use >= len(entries):
        return None
    sites = _canonical(crystal)
    ordered = sorted(entries, key=lambda e: chemical_distance([s.z for s in sites], e[0]))
    _, lattice, free = ordered[use]
    if len(free) != len(sites) or any(len(f) != len(s.free) for f, s in zip(free, sites)):
        return None  # a bank from other tables; never raise on it
    return WyckoffCrystal(crystal.space_group, _same_volume(lattice, crystal.lattice),
                          [WyckoffSite(s.z, s.wp, list(f)) for s, f in zip(sites, free)])


def closest_distance(crystal: WyckoffCrystal, bank: dict[str, list]) -> float | None:
    """:func:`chemical_distance` from ``crystal`` to its skeleton's closest bank entry
    (``None`` when the bank has no entry of its skeleton)."""
    entries = bank.get(skeleton_key(crystal))
    if not entries:
        return None
    zs = [s.z for s in _canonical(crystal)]
    return min(chemical_distance(zs, e[0]) for e in entries)


def chemical_distance(zs: list[int], other: list[int]) -> float:
    """How unlike two site lists' elements are: mean over sites of the difference in
    electronegativity plus in atomic radius (Å); 0 for the same elements."""
    if len(zs) != len(other):
        return float("inf")
    return sum(abs(_x(a) - _x(b)) + abs(_r(a) - _r(b)) for a, b in zip(zs, other)) / max(
        len(zs), 1)


@functools.lru_cache(maxsize=128)
def _x(z: int) -> float:
    with warnings.catch_warnings():  # "no Pauling electronegativity" for He, Ne, Ar
        warnings.simplefilter("ignore")
        x = Element.from_Z(z).X
    return x if x == x else 2.0  # noble gases have none


@functools.lru_cache(maxsize=128)
def _r(z: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(Element.from_Z(z).atomic_radius or 1.5)


def _same_volume(shape: list[float], lattice: list[float]) -> list[float]:
    """``shape``'s axis ratios and angles at ``lattice``'s volume (``lattice`` if either
    volume is not positive)."""
    from xtalloop.generators.wyckoff.data import _volume

    return at_volume(shape, _volume(*lattice)) or list(lattice)


def at_volume(shape: list[float], volume: float) -> list[float] | None:
    """``shape``'s axis ratios and angles at ``volume`` (Å³); ``None`` if either volume is
    not positive."""
    from xtalloop.generators.wyckoff.data import _volume

    own = _volume(*shape)
    if not (volume > 0 and own > 0):
        return None
    scale = (volume / own) ** (1 / 3)
    return [shape[0] * scale, shape[1] * scale, shape[2] * scale, *shape[3:]]

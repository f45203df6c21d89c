"""Sampling Wyckoff descriptions of a composition from a trained model.

The model's choices are constrained to what can be built: a (space group,
formula units) pair is drawn only if PyXtal can fill it with the composition
and its primitive cell fits ``max_atoms``; a Wyckoff position is offered only
if its multiplicity fits the atoms still to place, it is not a fixed position
already taken, and what is left can still be filled. So nearly every draw
builds a crystal with exactly the composition asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from xtalloop.generators.wyckoff.data import allowed_positions, element_order
from xtalloop.generators.wyckoff.model import MAX_FORMULA_UNITS, WyckoffModel
from xtalloop.generators.wyckoff.sites import WyckoffCrystal, WyckoffSite
from xtalloop.generators.wyckoff.tables import lattice_type_name, wyckoff_table

#: Most (space group, formula units) pairs checked with PyXtal per composition.
MAX_PAIRS_CHECKED = 400
#: Most feasible pairs kept to draw from.
MAX_PAIRS_KEPT = 64


@dataclass
class Draw:
    """One sample in progress: its choices so far and their log-probability."""

    group: int
    units: int
    remaining: list[float]
    element: int = 0
    used: set[int] = field(default_factory=set)
    wp: list[int] = field(default_factory=list)
    free: list[list[float]] = field(default_factory=list)
    site_z: list[int] = field(default_factory=list)
    site_remaining: list[float] = field(default_factory=list)
    logp: float = 0.0
    failed: bool = False
    coord_probs: list[np.ndarray] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.failed or self.element >= len(self.remaining)


@lru_cache(maxsize=20000)
def compatible(group: int, counts: tuple[int, ...]) -> bool:
    """Whether PyXtal can place ``counts`` atoms per element on ``group``'s positions."""
    from xtalloop.generators.wyckoff.sites import group as pyxtal_group

    try:
        return bool(pyxtal_group(group).check_compatible(list(counts))[0])
    except Exception:
        return False


def feasible_pairs(model: WyckoffModel, comp: torch.Tensor, amounts: list[int],
                   max_atoms: int, temperature: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The (group, units) pairs that fit, and their probabilities under the model."""
    table = wyckoff_table()
    groups = torch.arange(1, 231)
    log_g = torch.log_softmax(model.group_logits(comp)[0], -1)
    log_z = torch.log_softmax(model.units_logits(comp.expand(230, -1), groups), -1)
    joint = (log_g[:, None] + log_z).numpy() / temperature  # (230, MAX_FORMULA_UNITS)
    n_formula = sum(amounts)
    units = np.arange(1, MAX_FORMULA_UNITS + 1)
    primitive = units[None, :] * n_formula / table.centering[1:, None]
    joint = np.where(primitive <= max_atoms, joint, -np.inf)
    pairs, scores = [], []
    for flat in np.argsort(-joint, axis=None)[:MAX_PAIRS_CHECKED]:
        g, z = divmod(int(flat), MAX_FORMULA_UNITS)
        if not np.isfinite(joint[g, z]):
            break
        if compatible(g + 1, tuple(a * (z + 1) for a in amounts)):
            pairs.append((g + 1, z + 1))
            scores.append(joint[g, z])
            if len(pairs) >= MAX_PAIRS_KEPT:
                break
    if not pairs:
        return [], np.zeros(0)
    scores = np.array(scores)
    probs = np.exp(scores - scores.max())
    return pairs, probs / probs.sum()


def _reachable(target: float, group: int, used: set[int]) -> bool:
    """Whether ``target`` atoms fit on ``group``'s positions still open."""
    table = wyckoff_table()
    fixed_used = frozenset(i for i in used if table.dof[i] == 0)
    sums = _reachable_sums(group, fixed_used, max(256, int(target)))
    return bool(sums[int(target)])


@lru_cache(maxsize=50000)
def _reachable_sums(group: int, fixed_used: frozenset, limit: int) -> np.ndarray:
    """Which atom counts 0..limit the open positions of ``group`` can hold (coin-change DP).

    Positions with free coordinates can be used any number of times; fixed
    ones once, and not at all if already ``fixed_used``.
    """
    table = wyckoff_table()
    ids = range(table.offset[group], table.offset[group] + table.count[group])
    ok = np.zeros(limit + 1, bool)
    ok[0] = True
    for i in ids:
        m = int(table.multiplicity[i])
        if table.dof[i] > 0:
            for start in range(m):  # unbounded: a running OR along each residue class
                ok[start::m] = np.logical_or.accumulate(ok[start::m])
    for i in ids:
        if table.dof[i] == 0 and i not in fixed_used:
            m = int(table.multiplicity[i])
            ok[m:] = ok[m:] | ok[:limit + 1 - m]
    return ok


@torch.no_grad()
def sample(model: WyckoffModel, amounts_by_z: dict[int, int], n: int,
           rng: np.random.Generator, max_atoms: int, temperature: float = 1.0
           ) -> list[Sampled]:
    """Up to ``n`` Wyckoff descriptions of a reduced composition (fewer on dead ends)."""
    table = wyckoff_table()
    order = element_order(list(amounts_by_z))
    amounts = [int(amounts_by_z[z]) for z in order]
    z_t = torch.tensor([order])
    a_t = torch.tensor([amounts], dtype=torch.float32)
    comp = model.encode_composition(z_t, a_t, torch.ones_like(z_t, dtype=torch.bool))
    pairs, probs = feasible_pairs(model, comp, amounts, max_atoms, temperature)
    if not pairs:
        return []
    draws = []
    for k in rng.choice(len(pairs), size=n, p=probs):
        g, units = pairs[int(k)]
        draws.append(Draw(g, units, [float(a * units) for a in amounts],
                          logp=float(np.log(probs[int(k)]))))
    start = table.size
    for _step in range(model.config.max_sites):
        active = [d for d in draws if not d.done]
        if not active:
            break
        hidden = _decode(model, comp, active, order, start)[:, -1]
        groups = torch.tensor([d.group for d in active])
        logits = model.site_logits(hidden, groups).numpy() / temperature
        for row, draw in enumerate(active):
            remaining = draw.remaining[draw.element]
            ids = [int(i) for i in allowed_positions(draw.group, remaining, draw.used)
                   if _reachable(remaining - table.multiplicity[i], draw.group,
                                 draw.used | ({int(i)} if table.dof[i] == 0 else set()))]
            if not ids:
                draw.failed = True
                continue
            scores = logits[row, np.array(ids) - int(table.offset[draw.group])]
            p = np.exp(scores - scores.max())
            p /= p.sum()
            j = int(rng.choice(len(ids), p=p))
            wp = ids[j]
            draw.logp += float(np.log(p[j]))
            draw.site_z.append(order[draw.element])
            draw.site_remaining.append(remaining)
            draw.wp.append(wp)
            draw.used.add(wp)
            draw.remaining[draw.element] -= float(table.multiplicity[wp])
            if draw.remaining[draw.element] == 0:
                draw.element += 1
        # free coordinates of the positions just chosen
        chosen = [(row, d) for row, d in enumerate(active) if len(d.wp) > len(d.free)]
        if chosen:
            rows = torch.tensor([r for r, _ in chosen])
            wps = torch.tensor([d.wp[-1] for _, d in chosen])
            coord = torch.softmax(model.coord_logits(hidden[rows], wps) / temperature, -1)
            for (_, draw), p in zip(chosen, coord.numpy(), strict=True):
                dof = int(table.dof[draw.wp[-1]])
                probs = p[:dof] / p[:dof].sum(-1, keepdims=True)
                draw.coord_probs.append(probs)
                draw.free.append(_draw_free(probs, rng) + [0.0] * (3 - dof))
    finished = [d for d in draws if d.done and not d.failed and d.wp]
    if not finished:
        return []
    hidden = _decode(model, comp, finished, order, start, final=True)
    ends = torch.tensor([len(d.wp) for d in finished])
    mean, log_std = model.lattice_params(hidden[torch.arange(len(finished)), ends])
    noise = torch.from_numpy(rng.standard_normal(mean.shape).astype(np.float32))
    lattice = (mean + noise * log_std.exp() * temperature).numpy()
    out = []
    for draw, lat in zip(finished, lattice, strict=True):
        sites = [WyckoffSite(z, wp - int(table.offset[draw.group]), free[:int(table.dof[wp])])
                 for z, wp, free in zip(draw.site_z, draw.wp, draw.free, strict=True)]
        n_atoms = sum(int(table.multiplicity[w]) for w in draw.wp)
        out.append(Sampled(WyckoffCrystal(draw.group, lattice_parameters(draw.group, lat,
                                                                          n_atoms), sites),
                           draw.logp, draw.coord_probs))
    return out


def _draw_free(probs: np.ndarray, rng: np.random.Generator) -> list[float]:
    """Free coordinates: a bin from each row of ``probs``, uniform within the bin."""
    n_bins = probs.shape[-1]
    return [float((rng.choice(n_bins, p=row) + rng.random()) / n_bins) for row in probs]


@dataclass
class Sampled:
    """A drawn crystal, its log-probability, and its coordinates' bin probabilities."""

    crystal: WyckoffCrystal
    logp: float
    coord_probs: list[np.ndarray]

    def redraw(self, rng: np.random.Generator) -> WyckoffCrystal:
        """The same space group, sites and lattice with free coordinates drawn again.

        Used when a draw puts two atoms on top of each other: the discrete
        choices (the expensive, learned part) are kept, each coordinate is drawn
        again from the distribution the model gave it.
        """
        sites = [WyckoffSite(s.z, s.wp, _draw_free(p, rng) if s.free else [])
                 for s, p in zip(self.crystal.sites, self.coord_probs, strict=True)]
        return WyckoffCrystal(self.crystal.space_group, list(self.crystal.lattice), sites)


def _decode(model: WyckoffModel, comp: torch.Tensor, draws: list[Draw], order: list[int],
            start: int, final: bool = False) -> torch.Tensor:
    """Hidden states of the draws' sequences plus the position of their next decision."""
    t = max(len(d.wp) for d in draws) + 1
    b = len(draws)
    prev_wp = torch.full((b, t), start, dtype=torch.long)
    prev_coord = torch.zeros(b, t, 3)
    cur_z = torch.zeros(b, t, dtype=torch.long)
    remaining = torch.zeros(b, t)
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, d in enumerate(draws):
        s = len(d.wp)
        if s:
            prev_wp[i, 1:s + 1] = torch.tensor(d.wp)
            prev_coord[i, 1:s + 1] = torch.tensor(d.free[:s])
            cur_z[i, :s] = torch.tensor(d.site_z)
            remaining[i, :s] = torch.tensor(d.site_remaining)
        if not final:
            cur_z[i, s] = order[d.element]
            remaining[i, s] = d.remaining[d.element]
        mask[i, :s + 1] = True
    group = torch.tensor([d.group for d in draws])
    units = torch.tensor([d.units for d in draws]).clamp(max=MAX_FORMULA_UNITS)
    return model.decode(comp.expand(b, -1), group, units, prev_wp, prev_coord, cur_z,
                        remaining, mask)


def lattice_parameters(group: int, values: np.ndarray, n_atoms: int) -> list[float]:
    """a, b, c (Å), alpha, beta, gamma (degrees) from the model's lattice targets.

    The crystal system's constraints are imposed (cubic: one length, right
    angles...), and the volume is ``n_atoms`` times the sampled volume per atom.
    """
    log_v, log_ba, log_ca = (float(v) for v in values[:3])
    angles = np.clip(np.asarray(values[3:6], float) * 90, 55, 125)
    ba, ca = float(np.exp(np.clip(log_ba, -1.5, 1.5))), float(np.exp(np.clip(log_ca, -1.5, 1.5)))
    system = lattice_type_name(group)
    if system == "cubic":
        ba, ca, angles = 1.0, 1.0, np.array([90.0, 90.0, 90.0])
    elif system == "tetragonal":
        ba, angles = 1.0, np.array([90.0, 90.0, 90.0])
    elif system in ("hexagonal", "trigonal"):
        ba, angles = 1.0, np.array([90.0, 90.0, 120.0])
    elif system == "orthorhombic":
        angles = np.array([90.0, 90.0, 90.0])
    elif system == "monoclinic":
        angles = np.array([90.0, max(angles[1], 90.0), 90.0])
    ca_, cb_, cg_ = np.cos(np.radians(angles))
    shape = np.sqrt(max(1 - ca_ ** 2 - cb_ ** 2 - cg_ ** 2 + 2 * ca_ * cb_ * cg_, 1e-3))
    volume = float(np.exp(np.clip(log_v, np.log(4.0), np.log(80.0)))) * n_atoms
    a = (volume / (ba * ca * shape)) ** (1 / 3)
    return [a, a * ba, a * ca, *map(float, angles)]

"""Skeleton proposals: every known skeleton that can hold a composition, ranked by the model.

Sampling finds the model's favourite skeletons, but with 20 candidates it often
misses the right one even when the model rates it well (on MPTS-52 val the right
skeleton is among 20 samples for about 43 % of the compositions, fewer for
quaternaries and quinaries). The checkpoint's skeleton bank
(:mod:`~xtalloop.generators.wyckoff.skeletons`) lists the skeletons its training
crystals use, a few thousand. So the search can be exhaustive over them instead:

1. keep the skeletons whose atom count is a whole number of formula units of the
   composition and whose primitive cell fits ``max_atoms``; rank them by the
   model's ``log p(space group | composition) + log p(formula units | ...)`` and keep
   the best :data:`MAX_SKELETONS`;
2. enumerate every way to give the composition's elements the skeleton's Wyckoff
   positions with the right number of atoms each (up to :data:`MAX_ASSIGNMENTS`), so
   a skeleton serves compositions its training crystals never had (an ordered
   quaternary on a ternary's positions);
3. dress each with its chemically closest bank entry's coordinates and score it by the
   model's teacher-forced log-probability of the same decisions the sampler makes
   (space group, formula units, each Wyckoff position), its volume from the model's
   lattice head.

Candidates are ranked by that log-probability less :data:`CHEMISTRY_WEIGHT` nats per
unit of chemical distance to the dressing entry (:func:`ranking`; the generator ranks
its samples the same way, so proposals and samples compete on one scale). The
distance matters as much as the model: on 100 MPTS-52 val compositions match@1 / @20
went from 5 / 32 % (weight 0) to 23 / 43 % (25); at 100 (distance alone, the model
only breaking ties) MP-20 fell from 45 / 78 % to 36 / 75 %
(``benchmarks/README.md``, "Skeleton proposals").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from xtalloop.generators.wyckoff.data import collate, element_order, to_example
from xtalloop.generators.wyckoff.model import MAX_FORMULA_UNITS, WyckoffModel
from xtalloop.generators.wyckoff.sites import WyckoffCrystal, WyckoffSite
from xtalloop.generators.wyckoff.skeletons import at_volume, closest_distance, dress
from xtalloop.generators.wyckoff.tables import wyckoff_table

#: Skeletons (best by the model's space group and formula units) whose assignments are scored.
MAX_SKELETONS = 256
#: Element assignments enumerated per skeleton.
MAX_ASSIGNMENTS = 24
#: Log-probability charged per unit of chemical distance to the dressing bank entry
#: (:func:`~xtalloop.generators.wyckoff.skeletons.chemical_distance`: electronegativity
#: plus radius in Å, averaged over sites; 0.1-0.5 for a close analogue).
CHEMISTRY_WEIGHT = 25.0
#: Distance charged to a crystal whose skeleton the bank lacks (model coordinates).
MISSING_DISTANCE = 1.0
#: Sequences scored in one pass of the network.
BATCH = 256


@dataclass(frozen=True)
class Proposal:
    """A dressed crystal from the bank and the model's log-probability of its skeleton."""

    score: float
    crystal: WyckoffCrystal


@dataclass(frozen=True)
class _Skeleton:
    group: int
    local: tuple[int, ...]       # Wyckoff indices within the group, sorted
    n_atoms: int                 # conventional cell


@functools.lru_cache(maxsize=8)
def _parse(keys: tuple[str, ...]) -> tuple[_Skeleton, ...]:
    table = wyckoff_table()
    out = []
    for key in keys:
        group_text, _, sites = key.partition(":")
        try:
            g = int(group_text)
            local = tuple(sorted(int(w) for w in sites.split(",") if w))
        except ValueError:
            continue  # a bank from elsewhere; never raise on it
        if not 1 <= g <= 230 or not local or max(local) >= table.count[g]:
            continue
        n = int(sum(table.multiplicity[table.offset[g] + w] for w in local))
        out.append(_Skeleton(g, local, n))
    return tuple(out)


def assignments(skeleton: tuple[int, ...], multiplicity: dict[int, int],
                counts: list[int], limit: int = MAX_ASSIGNMENTS) -> list[list[list[int]]]:
    """Ways to split the Wyckoff positions ``skeleton`` among elements needing ``counts`` atoms.

    Returns up to ``limit`` assignments, each a list (one per element, in order) of the
    positions it takes; positions of the same index are interchangeable, so each
    multiset split is given once.
    """
    pool: dict[int, int] = {}
    for w in skeleton:
        pool[w] = pool.get(w, 0) + 1
    ids = sorted(pool)
    out: list[list[list[int]]] = []

    def fill(element: int, need: int, start: int, taken: list[int], done: list[list[int]]):
        if len(out) >= limit:
            return
        if need == 0:
            chosen = done + [taken]
            if element + 1 == len(counts):
                if not any(pool.values()):
                    out.append(chosen)
                return
            fill(element + 1, counts[element + 1], 0, [], chosen)
            return
        for i in range(start, len(ids)):
            w = ids[i]
            if pool[w] and multiplicity[w] <= need:
                pool[w] -= 1
                fill(element, need - multiplicity[w], i, taken + [w], done)
                pool[w] += 1

    if sum(multiplicity[w] for w in skeleton) == sum(counts):
        fill(0, counts[0], 0, [], [])
    return out


@torch.no_grad()
def score(model: WyckoffModel, crystals: list[WyckoffCrystal]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probability of each crystal's space group, formula units and Wyckoff positions
    (the sampler's discrete decisions), and the model's volume per atom for it."""
    scores = np.full(len(crystals), -np.inf)
    volumes = np.full(len(crystals), np.nan)
    examples = [(i, to_example(c, model.config.max_sites)) for i, c in enumerate(crystals)]
    examples = [(i, e) for i, e in examples if e is not None]
    for start in range(0, len(examples), BATCH):
        chunk = examples[start:start + BATCH]
        batch = collate([e for _, e in chunk])
        comp = model.encode_composition(batch["z"], batch["amount"], batch["comp_mask"])
        rows = torch.arange(len(chunk))
        group = torch.log_softmax(model.group_logits(comp), -1)[rows, batch["group"] - 1]
        units = torch.log_softmax(model.units_logits(comp, batch["group"]), -1)[
            rows, (batch["units"] - 1).clamp(max=MAX_FORMULA_UNITS - 1)]
        hidden = model.decode(comp, batch["group"], batch["units"], batch["prev_wp"],
                              batch["prev_coord"], batch["cur_z"], batch["remaining"],
                              batch["seq_mask"])
        logits = model.site_logits(hidden, batch["group"]).masked_fill(~batch["allowed"], -1e4)
        local = (batch["target_wp"] - model.wp_offset[batch["group"]][:, None]).clamp(min=0)
        site = torch.log_softmax(logits, -1).gather(2, local[..., None])[..., 0]
        site = (site * batch["site_mask"]).sum(1)
        mean, _ = model.lattice_params(hidden[rows, batch["end"]])
        for (i, _), s, v in zip(chunk, (group + units + site).numpy(),
                                mean[:, 0].exp().numpy(), strict=True):
            scores[i], volumes[i] = float(s), float(v)
    return scores, volumes


def propose(model: WyckoffModel, bank: dict[str, list], amounts_by_z: dict[int, int],
            max_atoms: int) -> list[Proposal]:
    """The bank's skeletons dressed for a reduced composition, best score first."""
    if not bank:
        return []
    table = wyckoff_table()
    order = element_order(list(amounts_by_z))
    amounts = [int(amounts_by_z[z]) for z in order]
    per_formula = sum(amounts)
    fits = []
    for sk in _parse(tuple(bank)):
        units, rest = divmod(sk.n_atoms, per_formula)
        if rest or not 1 <= units <= MAX_FORMULA_UNITS or len(sk.local) < len(order) \
                or sk.n_atoms / table.centering[sk.group] > max_atoms:
            continue
        fits.append((sk, units))
    if not fits:
        return []
    with torch.no_grad():
        z_t = torch.tensor([order])
        comp = model.encode_composition(z_t, torch.tensor([amounts], dtype=torch.float32),
                                        torch.ones_like(z_t, dtype=torch.bool))
        log_g = torch.log_softmax(model.group_logits(comp)[0], -1).numpy()
        groups = torch.tensor(sorted({sk.group for sk, _ in fits}))
        log_z = torch.log_softmax(model.units_logits(comp.expand(len(groups), -1), groups),
                                  -1).numpy()
    row = {int(g): i for i, g in enumerate(groups)}
    prior = np.array([log_g[sk.group - 1] + log_z[row[sk.group], units - 1]
                      for sk, units in fits])
    crystals = []
    for j in np.argsort(-prior, kind="stable")[:MAX_SKELETONS]:
        sk, units = fits[int(j)]
        offset = int(table.offset[sk.group])
        mult = {w: int(table.multiplicity[offset + w]) for w in set(sk.local)}
        for split in assignments(sk.local, mult, [a * units for a in amounts]):
            sites = [WyckoffSite(z, w, [0.0] * int(table.dof[offset + w]))
                     for z, taken in zip(order, split, strict=True) for w in taken]
            placeholder = WyckoffCrystal(sk.group, [1.0, 1.0, 1.0, 90.0, 90.0, 90.0], sites)
            dressed = dress(placeholder, bank, 0)
            if dressed is not None:
                crystals.append(dressed)
    if not crystals:
        return []
    scores, volumes = score(model, crystals)
    out = []
    for crystal, s, v in zip(crystals, scores, volumes, strict=True):
        if np.isfinite(s) and np.isfinite(v):
            crystal.lattice = at_volume(crystal.lattice, v * crystal.n_atoms) \
                or crystal.lattice
            out.append(Proposal(ranking(float(s), crystal, bank), crystal))
    out.sort(key=lambda p: -p.score)
    return out


def ranking(logp: float, crystal: WyckoffCrystal, bank: dict[str, list]) -> float:
    """The score a candidate is ranked by: the model's log-probability, less
    :data:`CHEMISTRY_WEIGHT` per unit of chemical distance to its closest bank entry."""
    if not CHEMISTRY_WEIGHT:
        return logp
    d = closest_distance(crystal, bank)
    return logp - CHEMISTRY_WEIGHT * (MISSING_DISTANCE if d is None else min(d, MISSING_DISTANCE))


__all__ = ["MAX_ASSIGNMENTS", "MAX_SKELETONS", "Proposal", "assignments", "propose",
           "ranking", "score"]

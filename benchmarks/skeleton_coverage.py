"""Where the Wyckoff generator loses a target: skeleton missing, ranked low, or coordinates wrong.

For val crystals of a given number of elements, with the target's own description
(space group, Wyckoff positions, elements) known, this asks in turn:

1. is its skeleton (space group + Wyckoff positions) in the checkpoint's bank?
2. where does the right skeleton with the right elements on its positions rank among the
   generator's proposals (:func:`~xtalloop.generators.wyckoff.proposals.propose`)?
3. does any of the bank's entries for that skeleton (up to 8 training crystals) give
   coordinates that match the target (StructureMatcher as in the CSP benchmark)?

and splits the answers by crystal system (monoclinic and triclinic against the rest):
a skeleton of general positions only (P-1 with ten 2i sites) says little about a structure,
while a high-symmetry one nearly fixes it. ::

    python benchmarks/skeleton_coverage.py --data ../shared/data/mpts_52/val.csv.gz \\
        --checkpoint xtalloop/generators/wyckoff/checkpoints/wyckoff-mpts52.pt \\
        --min-elements 5 --n 25
"""

from __future__ import annotations

import argparse
import gzip
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from xtalloop.benchmark.csp import MATCHER_SETTINGS
from xtalloop.generators.wyckoff.data import element_order
from xtalloop.generators.wyckoff.generator import WyckoffGenerator
from xtalloop.generators.wyckoff.proposals import propose
from xtalloop.generators.wyckoff.sites import build, describe
from xtalloop.generators.wyckoff.skeletons import dress, skeleton_key


def split(crystal, order: list[int]) -> list[list[int]]:
    """Each element's Wyckoff positions, in ``order``: the skeleton with its elements."""
    return [sorted(s.wp for s in crystal.sites if s.z == z) for z in order]


def examine(structure: Structure, generator: WyckoffGenerator, matcher) -> dict | None:
    """The three answers for one target (None where its symmetry cannot be described)."""
    target = describe(structure)
    if target is None:
        return None
    loaded = generator.load()
    reduced = structure.composition.reduced_composition
    amounts = {el.Z: int(round(reduced[el])) for el in reduced.elements}
    order = element_order(list(amounts))
    key, wanted = skeleton_key(target), split(target, order)
    rank = next((i for i, p in enumerate(propose(loaded.model, loaded.skeletons, amounts,
                                                 generator.cell_limit))
                 if skeleton_key(p.crystal) == key and split(p.crystal, order) == wanted), None)
    entries = loaded.skeletons.get(key, [])
    dressed = [dress(target, loaded.skeletons, use) for use in range(len(entries))]
    built = [build(d) for d in dressed if d is not None]
    return {"formula": reduced.formula, "space_group": target.space_group,
            "low_symmetry": target.space_group <= 15, "in_bank": bool(entries),
            "proposal_rank": rank,
            "coordinates_match": any(s is not None and matcher.fit(s, structure) for s in built)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--min-elements", type=int, default=5)
    parser.add_argument("--max-elements", type=int, default=9)
    parser.add_argument("--max-atoms", type=int, default=52)
    parser.add_argument("--n", type=int, default=25, help="targets examined")
    parser.add_argument("--seed", type=int, default=0, help="shuffles the table's rows")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # pymatgen's CIF rounding notes, one per row
    with gzip.open(args.data, "rt") if args.data.suffix == ".gz" else open(args.data) as f:
        table = pd.read_csv(f)
    rows = np.random.default_rng(args.seed).permutation(len(table))
    generator = WyckoffGenerator(checkpoint=str(args.checkpoint), max_atoms=args.max_atoms)
    matcher = StructureMatcher(**MATCHER_SETTINGS)
    found = []
    for i in rows:
        structure = Structure.from_str(table["cif"].iloc[int(i)], fmt="cif")
        n_el = len(structure.composition.elements)
        if not args.min_elements <= n_el <= args.max_elements or len(structure) > args.max_atoms:
            continue
        record = examine(structure, generator, matcher)
        if record is None:
            continue
        found.append(record)
        print(f"{record['formula']:26s} sg {record['space_group']:3d}  in bank "
              f"{'yes' if record['in_bank'] else 'no ':3s}  proposal rank "
              f"{record['proposal_rank'] if record['proposal_rank'] is not None else '-':>4}  "
              f"bank coordinates match {'yes' if record['coordinates_match'] else 'no'}",
              flush=True)
        if len(found) >= args.n:
            break
    print()
    print("| targets | n | skeleton in bank | right skeleton + elements in the first 8 "
          "proposals | in the first 20 | a bank entry's coordinates match |")
    print("|---|---|---|---|---|---|")
    for label, group in (("all", found),
                         ("monoclinic/triclinic", [r for r in found if r["low_symmetry"]]),
                         ("higher symmetry", [r for r in found if not r["low_symmetry"]])):
        ranks = [r["proposal_rank"] for r in group if r["proposal_rank"] is not None]
        print(f"| {label} | {len(group)} | {sum(r['in_bank'] for r in group)} | "
              f"{sum(r < 8 for r in ranks)} | {sum(r < 20 for r in ranks)} | "
              f"{sum(r['coordinates_match'] for r in group)} |")


if __name__ == "__main__":
    main()

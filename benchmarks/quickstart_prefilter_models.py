"""Which structure each prefilter model ranks first on the quickstart's own candidates.

Generates the candidates of ``configs/quickstart.yaml`` (its compositions,
generator sources, seed and ``max_atoms``) once, then ranks them with each
``--models`` entry through :class:`xtalloop.rankers.ml_ranker.MLRanker` with
the quickstart's ``fmax`` and ``steps`` (the ML stage of ``xtalloop run``,
without DFT), and prints per model and composition: the space group of the
first pick, whether it is the known ground-state prototype (rocksalt NaCl and
MgO, diamond Si, zincblende GaAs; pymatgen's ``StructureMatcher``), the
position of the prototype among the distinct relaxed structures, the energy
gap to it (meV/atom), and the prefilter time (model load, relaxations,
elemental references; wall and CPU seconds, as other work on the machine
slows the wall clock). ``--out`` writes the figures as JSON.

    OMP_NUM_THREADS=2 python benchmarks/quickstart_prefilter_models.py \\
        --models chgnet sevennet sevennet:7net-0 diep

A model written ``screen>judge`` (``chgnet>diep``) screens with the first and
re-ranks the config's ``prefilter.rerank_top`` best distinct structures with the
second, as ``prefilter.rerank_model`` does; the positions then count among those.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from xtalloop.config import load_config
from xtalloop.generators import build_generator
from xtalloop.generators.base import derived_seeds
from xtalloop.rankers.ml_ranker import MLRanker

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def _fcc(a: float, species: list[str], shift: float) -> Structure:
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, species, [[0, 0, 0], [shift] * 3])


#: the known ground-state prototypes (lattice constants only start the matcher's scaling)
PROTOTYPES = {
    "NaCl": ("rocksalt", _fcc(5.64, ["Na", "Cl"], 0.5)),
    "MgO": ("rocksalt", _fcc(4.21, ["Mg", "O"], 0.5)),
    "Si": ("diamond", _fcc(5.43, ["Si", "Si"], 0.25)),
    "GaAs": ("zincblende", _fcc(5.65, ["Ga", "As"], 0.25)),
}


def candidates(config) -> dict:
    """The quickstart's candidates per composition, as ``xtalloop run`` generates them."""
    pools = {}
    sources = config.generate.sources
    for composition in config.parsed_compositions():
        pool = []
        for source, seed in zip(sources, derived_seeds(config.generate.seed, len(sources)),
                                strict=True):
            generator = build_generator(source.model_dump(), config.generate.max_atoms)
            pool += generator.generate(composition, source.n, seed)
        pools[composition] = pool
    return pools


def rank_with(model: str, config, pools: dict) -> dict:
    """Rank every composition's candidates with ``model``; first picks, prototype rank, time."""
    start, cpu = time.perf_counter(), time.process_time()
    screen, _, judge = model.partition(">")  # "chgnet>diep": screen, then re-rank
    ranker = MLRanker(model=screen, fmax=config.prefilter.fmax, steps=config.prefilter.steps,
                      top_k=50, rerank_model=judge or None,
                      rerank_top=config.prefilter.rerank_top, progress=False)
    ranker.energy_model  # noqa: B018  (loading counts towards the prefilter's time)
    out = {"load_s": time.perf_counter() - start, "compositions": {}}
    matcher = StructureMatcher()
    for composition, pool in pools.items():
        formula = composition.reduced_formula
        tick = time.perf_counter()
        ranking = ranker.rank(composition, pool)
        picks = ranking.picks + ranking.reserves
        name, prototype = PROTOTYPES[formula]
        position = next((i for i, p in enumerate(picks) if matcher.fit(p.structure, prototype)),
                        None)
        first = picks[0]
        out["compositions"][formula] = {
            "first": f"{first.space_group} ({first.space_group_number})",
            "first_is_ground_state": position == 0,
            "prototype": name,
            "prototype_position": position,
            "gap_to_prototype_meV_per_atom": (
                None if position is None
                else 1000 * (picks[position].energy_per_atom - first.energy_per_atom)),
            "n_distinct": len(picks),
            "rank_s": time.perf_counter() - tick,
        }
    out["total_s"] = time.perf_counter() - start
    out["total_cpu_s"] = time.process_time() - cpu
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet", "sevennet", "diep"])
    parser.add_argument("--config", type=Path, default=QUICKSTART)
    parser.add_argument("--only", nargs="+", default=None,
                        help="rank only these formulas (e.g. Si); the candidates are the same")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = load_config(args.config)
    tick = time.perf_counter()
    pools = {c: pool for c, pool in candidates(config).items()
             if args.only is None or c.reduced_formula in args.only}
    results = {"generate_s": time.perf_counter() - tick, "models": {}}
    for model in args.models:
        results["models"][model] = result = rank_with(model, config, pools)
        print(f"{model}: {result['total_s']:.0f} s wall, {result['total_cpu_s']:.0f} s CPU "
              f"(load {result['load_s']:.1f} s)", flush=True)
        for formula, row in result["compositions"].items():
            mark = "ok " if row["first_is_ground_state"] else "NO "
            gap = row["gap_to_prototype_meV_per_atom"]
            print(f"  {mark}{formula:5s} first {row['first']:14s} {row['prototype']} at "
                  f"{row['prototype_position']}"
                  + ("" if gap is None else f" (+{gap:.1f} meV/atom)")
                  + f", {row['rank_s']:.0f} s")
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

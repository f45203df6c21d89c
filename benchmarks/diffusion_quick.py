"""Quick CSP benchmark of the diffusion generator against random symmetric structures.

Trains the ``small_cpu`` preset on MP-20 train_partial (binaries and ternaries up
to 12 atoms) within a time box, unless ``--checkpoint`` names an existing one,
then samples k structures for val compositions with both generators and
prints the match rates against the val structures (StructureMatcher
stol=0.5, ltol=0.3, angle_tol=10; k=1 uses the first sample).

Example::

    nice -n 10 python benchmarks/diffusion_quick.py --minutes 17 --n-compositions 30 --k 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import pandas as pd
import torch  # noqa: E402
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from xtalloop.generators import RandomSymmetricGenerator
from xtalloop.generators.base import too_close
from xtalloop.generators.diffusion import DiffusionGenerator, load_csv, preset, train

DATA = Path("/work/shared/data/mp_20")


def pick_compositions(
    val_csv: Path, n: int, max_atoms: int, arity: tuple[int, ...], seed: int
) -> list[tuple[str, Structure]]:
    """``n`` val rows of distinct reduced formulas, drawn with ``seed``."""
    frame = pd.read_csv(val_csv)
    if frame.columns[0].startswith("Unnamed"):
        frame = frame.drop(columns=frame.columns[0])
    frame = frame[(frame.nsites <= max_atoms) & frame.n_elements.isin(arity)]
    frame = frame.sample(frac=1.0, random_state=seed).drop_duplicates("reduced_formula")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in frame.head(n).itertuples(index=False):
            out.append((row.material_id, Structure.from_str(row.cif, fmt="cif")))
    return out


def evaluate(generate, targets, k: int, matcher: StructureMatcher) -> dict:
    """Match rates at k=1 and k of ``generate(structure, index) -> list[Structure]``."""
    hit1 = hitk = made = close = 0
    rms: list[float] = []
    t0 = time.monotonic()
    for i, (_, ref) in enumerate(targets):
        structures = generate(ref, i)
        made += len(structures)
        close += sum(too_close(s, 0.5) for s in structures)
        fits = []
        for s in structures:
            try:
                fits.append(matcher.get_rms_dist(s, ref))
            except Exception:  # degenerate cells can break the matcher
                fits.append(None)
        if fits and fits[0] is not None:
            hit1 += 1
        good = [f[0] for f in fits if f is not None]
        if good:
            hitk += 1
            rms.append(min(good))
    n = len(targets)
    return {
        "match_rate_k1": hit1 / n,
        "match_rate_k": hitk / n,
        "mean_rms_matched": float(np.mean(rms)) if rms else None,
        "structures": made,
        "too_close_frac": close / max(made, 1),
        "seconds": round(time.monotonic() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/xtalloop-diffusion"))
    p.add_argument("--checkpoint", type=Path, help="evaluate this checkpoint; skip training")
    p.add_argument("--minutes", type=float, default=17.0, help="training time box")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--max-atoms", type=int, default=12)
    p.add_argument("--arity", type=int, nargs="+", default=[2, 3])
    p.add_argument("--n-compositions", type=int, default=30)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--n-steps", type=int, default=None, help="reverse steps (default: all)")
    p.add_argument("--step-lr", type=float, default=1e-5)
    p.add_argument("--z-modes", nargs="+", default=["train", "oracle"], choices=["train", "oracle"],
                   help="formula units: drawn from the training distribution, or the val cell's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    arity = tuple(args.arity)

    checkpoint = args.checkpoint
    if checkpoint is None:
        data = load_csv(DATA / "train_partial.csv.gz", args.max_atoms, arity,
                        cache_dir=args.out_dir / "cache")
        val = load_csv(DATA / "val.csv.gz", args.max_atoms, arity,
                       cache_dir=args.out_dir / "cache", limit=256)
        overrides: dict = {"max_time_s": args.minutes * 60}
        if args.epochs:
            overrides["epochs"] = args.epochs
        t0 = time.monotonic()
        checkpoint = train(preset("small_cpu", **overrides), data, args.out_dir / "small_cpu.pt",
                           val_dataset=val)
        print(f"trained on {len(data)} crystals in {time.monotonic() - t0:.0f} s -> {checkpoint}")

    targets = pick_compositions(DATA / "val.csv.gz", args.n_compositions, args.max_atoms, arity,
                                args.seed)
    matcher = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    results: dict = {"checkpoint": str(checkpoint), "n_compositions": len(targets), "k": args.k,
                     "formulas": [t[1].composition.reduced_formula for t in targets]}

    def z_of(ref: Structure) -> int:
        comp = ref.composition
        return int(round(comp.num_atoms / comp.reduced_composition.num_atoms))

    for mode in args.z_modes:
        def diffusion(ref: Structure, i: int, mode: str = mode) -> list[Structure]:
            gen = DiffusionGenerator(
                checkpoint=str(checkpoint), n_steps=args.n_steps, step_lr=args.step_lr,
                formula_units=(z_of(ref),) if mode == "oracle" else None,
                max_atoms=args.max_atoms,
            )
            gen._loaded = cache.get("loaded") or gen.load()  # share the loaded model
            gen._schedules = cache.get("schedules") or gen._schedules
            cache["loaded"], cache["schedules"] = gen._loaded, gen._schedules
            return [c.structure for c in gen.generate(ref.composition, args.k, seed=args.seed + i)]

        def baseline(ref: Structure, i: int, mode: str = mode) -> list[Structure]:
            gen = RandomSymmetricGenerator(
                max_atoms=args.max_atoms,
                **({"formula_units": (z_of(ref),)} if mode == "oracle" else {}),
            )
            return [c.structure for c in gen.generate(ref.composition, args.k, seed=args.seed + i)]

        cache: dict = {}
        results[f"diffusion[{mode}]"] = evaluate(diffusion, targets, args.k, matcher)
        print(f"diffusion[{mode}]", json.dumps(results[f"diffusion[{mode}]"]), flush=True)
        if not args.skip_baseline:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[f"random_symmetric[{mode}]"] = evaluate(baseline, targets, args.k, matcher)
            print(f"random_symmetric[{mode}]", json.dumps(results[f"random_symmetric[{mode}]"]),
                  flush=True)

    print(f"\n{len(targets)} val compositions (arity {arity}, <= {args.max_atoms} atoms), "
          f"StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)")
    print(f"{'generator':32s} {'k=1':>7s} {'k=' + str(args.k):>7s} {'rms':>7s} {'close':>6s} {'s':>7s}")
    for key, r in results.items():
        if isinstance(r, dict):
            rms = f"{r['mean_rms_matched']:.3f}" if r["mean_rms_matched"] is not None else "-"
            print(f"{key:32s} {r['match_rate_k1']:7.1%} {r['match_rate_k']:7.1%} {rms:>7s} "
                  f"{r['too_close_frac']:6.1%} {r['seconds']:7.1f}")
    out = args.out_dir / "diffusion_quick.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()

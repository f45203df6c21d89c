"""CHGNet inference: one backward pass (xtalloop) against CHGNet's predict_structure (two).

Prints the largest differences in energy, forces and stress (they should be float32
noise) and the time of both on the same batches, interleaved, with their ratio.

    OMP_NUM_THREADS=1 python benchmarks/chgnet_inference_speed.py --n 16 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "../shared/data/mp_20/val.csv.gz"))
    parser.add_argument("--n", type=int, default=16, help="structures (the first of --data)")
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="structures per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import numpy as np
    import pandas as pd
    import torch
    from pymatgen.core import Structure

    from xtalloop.models.chgnet_inference import predict_efs
    from xtalloop.models.energy_model import load_energy_model

    torch.set_num_threads(1)
    table = pd.read_csv(args.data)
    structures = []
    for cif in table["cif"]:
        structure = Structure.from_str(cif, fmt="cif")
        if len(structure) <= args.max_atoms:
            structure.perturb(0.1)  # forces and stress away from zero
            structures.append(structure)
        if len(structures) == args.n:
            break
    module = load_energy_model("chgnet").module
    theirs = module.predict_structure(structures, task="efs", batch_size=args.batch)
    ours = predict_efs(module, structures, args.batch)
    de = max(abs(float(a["e"]) - float(b["e"])) for a, b in zip(theirs, ours))
    df = max(float(np.abs(a["f"] - b["f"]).max()) for a, b in zip(theirs, ours))
    ds = max(float(np.abs(a["s"] - b["s"]).max()) for a, b in zip(theirs, ours))
    print(f"{len(structures)} structures, {sum(map(len, structures))} atoms; largest "
          f"differences: energy {de:.1e} eV/atom, forces {df:.1e} eV/Å, stress {ds:.1e} GPa")
    t_theirs = t_ours = 0.0
    for _ in range(args.repeats):  # interleaved: a noisy machine slows both alike
        start = time.perf_counter()
        module.predict_structure(structures, task="efs", batch_size=args.batch)
        t_theirs += time.perf_counter() - start
        start = time.perf_counter()
        predict_efs(module, structures, args.batch)
        t_ours += time.perf_counter() - start
    print(f"predict_structure {t_theirs / args.repeats:.3f} s, one backward pass "
          f"{t_ours / args.repeats:.3f} s per call: {t_theirs / t_ours:.2f}x")


if __name__ == "__main__":
    main()

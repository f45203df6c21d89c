"""How much the prefilter benchmark's elemental references cost (issue 18).

Usage: ``python benchmarks/prefilter_reference_check.py MODEL RESULTS_JSON OUT_JSON``, run from the
repository root on a ``xtalloop benchmark prefilter`` result. Compares each element's
prototype reference (the ranker's) with the model's lowest energy of MP-20's own elemental
structures, and recomputes the MAE and the stable call with the lower of the two.
"""
import json
import sys
from pathlib import Path

import numpy as np
from pymatgen.core import Composition

from xtalloop.benchmark.prefilter import (
    _structure,
    hull_for,
    load_mp20,
    predict_per_atom,
)
from xtalloop.benchmark.prefilter_metrics import classification, error_stats
from xtalloop.models.energy_model import load_energy_model

if len(sys.argv) != 4:
    sys.exit("usage: python benchmarks/prefilter_reference_check.py MODEL RESULTS_JSON OUT_JSON")
spec, res_path = sys.argv[1], sys.argv[2]
res = json.loads(Path(res_path).read_text())
m = res["models"][spec]
mu = m["chemical_potentials"]
mp20 = load_mp20("../shared/data/mp_20")
comps = [Composition(f) for f in mp20["reduced_formula"]]
unary = mp20[[len(c.elements) == 1 and c.elements[0].symbol in mu for c in comps]]
structs = [_structure(c) for c in unary["cif"]]
model = load_energy_model(spec)
e, dt = predict_per_atom(model, structs)
gs = {}
for s, ei, ef in zip(structs, e, unary["formation_energy_per_atom"]):
    if ei is None:
        continue
    el = s.composition.elements[0].symbol
    gs[el] = min(gs.get(el, 1e9), ei)
diff = {el: mu[el] - gs[el] for el in gs}
print(f"{len(unary)} MP-20 elemental structures, {len(gs)} of {len(mu)} elements; {dt:.0f} s")
d = np.array(list(diff.values()))
print(f"prototype mu - min model E of MP-20 elemental structures: mean {d.mean():.3f}, "
      f"median {np.median(d):.3f}, max {d.max():.3f} ({max(diff, key=diff.get)}), "
      f"n > 0.05 eV/atom: {(d > 0.05).sum()}")
print("largest:", sorted(((round(v, 3), k) for k, v in diff.items()), reverse=True)[:10])
mu2 = {el: min(mu[el], gs.get(el, mu[el])) for el in mu}
out = {"diff": diff}
for name, t in m["tables"].items():
    hull = hull_for(mp20, [r["id"] for r in t["records"]] if name.startswith("mp_20") else [])
    pred, true, ph, th = [], [], [], []
    for r in t["records"]:
        c = Composition(r["formula"]).fractional_composition
        p = r["pred_e_form"] + sum(x * (mu[el.symbol] - mu2[el.symbol]) for el, x in c.items())
        pred.append(p)
        true.append(r["true_e_form"])
        ph.append(hull.e_above_hull(Composition(r["formula"]), p))
        th.append(r["true_e_hull"])
    fe, st = error_stats(pred, true), classification(ph, th)
    print(f"{name}: with min(prototype, MP-20 elemental) references: MAE {fe['mae']:.3f} "
          f"mean error {fe['mean_error']:.3f}; F1 {st['f1']:.3f} precision {st['precision']:.3f} "
          f"recall {st['recall']:.3f} DAF {st['daf']:.2f}")
    out[name] = {"formation_energy": fe, "stability": st}
Path(sys.argv[3]).write_text(json.dumps(out, indent=1))

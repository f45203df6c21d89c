#!/usr/bin/env bash
# The CSP tables of benchmarks/README.md ("Wyckoff generator"): MP-20 val and MPTS-52 val,
# 300 compositions each (seed 0), k = 1 and 20, templates and Wyckoff checkpoint from the
# train split of the data set evaluated (the defaults of `xtalloop benchmark csp`).
# Each data set takes about an hour on one core of the 2-core machine; run them one at a
# time or, as here, side by side (one core each).
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-benchmarks/results}
N=${N:-300}
GENERATORS=(--generator wyckoff --generator templates+wyckoff --generator prototype_substitution)
export OMP_NUM_THREADS=1
for set in mp_20 mpts_52; do
    xtalloop benchmark csp --data "$DATA/$set/val.csv.gz" --n "$N" --k 1,20 "${GENERATORS[@]}" \
        --seed 0 --no-progress --out "$OUT/${set//_/}_val_n$N" > "$OUT/${set//_/}_val_n$N.log" 2>&1 &
done
wait
tail -n 40 "$OUT"/*_val_n"$N".log

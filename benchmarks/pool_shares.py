"""How should templates and the Wyckoff model share k slots? Replayed from a CSP run.

``benchmark csp`` stores, per composition and generator, which of its ordered
candidates matched the target. This script replays pooling rules on those
records, without generating anything: for shares ``(a, b)`` the pool takes ``a``
template candidates, then ``b`` model candidates, in turn, and a generator with
nothing left gives its slots to the other (what ``PooledGenerator(shares=...)``
does). It prints match@k per rule, and the union of both generators' k
candidates (what no pooling of k slots can beat).

    python benchmarks/pool_shares.py benchmarks/results/mp20_val_n300

The folder must hold ``prototype_substitution/results.json`` and
``wyckoff/results.json`` of one run (same compositions, same seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RULES = [(1, 0), (0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]


def matched(record: dict) -> list[bool]:
    """Which candidates of one composition matched, in generator order."""
    return [rms is not None for rms in record["rms"]]


def pooled(first: list[bool], second: list[bool], shares: tuple[int, int], k: int) -> list[bool]:
    """The first ``k`` of the two lists taken ``shares`` at a time (leftovers fill in)."""
    out: list[bool] = []
    i = j = 0
    while len(out) < k and (i < len(first) or j < len(second)):
        take = first[i:i + shares[0]]
        out += take
        i += len(take)
        take = second[j:j + shares[1]]
        out += take
        j += len(take)
        if shares[0] == 0 and j >= len(second) or shares[1] == 0 and i >= len(first):
            out += first[i:] + second[j:]
            break
    return out[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder of one `benchmark csp` run")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    load = lambda name: {r["material_id"]: r for r in json.loads(  # noqa: E731
        (args.run / name / "results.json").read_text())["per_composition"]}
    templates, model = load("prototype_substitution"), load("wyckoff")
    ids = [m for m in model if m in templates]
    print(f"{len(ids)} compositions in {args.run}")
    for k in sorted({1, args.k}):
        for shares in RULES:
            hits = sum(any(pooled(matched(templates[m]), matched(model[m]), shares, k))
                       for m in ids)
            label = {(1, 0): "templates first", (0, 1): "model first"}.get(
                shares, f"shares {shares[0]}:{shares[1]}")
            print(f"match@{k:<3d} {label:<15s} {100 * hits / len(ids):5.1f} %")
    union = sum(any(matched(templates[m])[:args.k]) or any(matched(model[m])[:args.k])
                for m in ids)
    print(f"either generator's {args.k} (no pool of {args.k} beats it): "
          f"{100 * union / len(ids):.1f} %")


if __name__ == "__main__":
    main()

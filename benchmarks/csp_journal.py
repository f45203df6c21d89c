"""Figures of a CSP benchmark run so far, read from its journal while it runs (or after a kill).

A relaxed ``xtalloop benchmark csp`` run over 300 compositions takes hours on one core
(about 35 s per MP-20 composition with CHGNet, minutes per 52-atom MPTS-52 one) and
is resumed across sessions; its ``results.md`` is written only at the end. This prints
the figures over the compositions finished, per arity, and, given the results of an
unrelaxed run with the same data, seed and ``--n`` (same compositions, same order),
the unrelaxed figures on exactly the same compositions, so "relaxation helped or hurt"
is read on paired rows::

    python benchmarks/csp_journal.py runs/mp20_relax/templates+wyckoff/journal.jsonl \\
        --unrelaxed benchmarks/results/mp20_val_n300_pool_fill/templates+wyckoff/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xtalloop.benchmark.csp import ARITY_LABELS
from xtalloop.benchmark.csp_scoring import summarise
from xtalloop.benchmark.subsets import ON_HULL, hull_energies


def read_journal(path: Path) -> tuple[dict, list[dict]]:
    """The journal's settings (first line) and its records, one per finished composition."""
    if not path.is_file():
        raise SystemExit(f"error: no journal at {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path}: empty journal")
    header = json.loads(lines[0])
    return header.get("key", {}), [json.loads(line) for line in lines[1:]]


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def hull_groups(records: list[dict], data_csv: str) -> list[tuple[str, list[dict]]]:
    """The records of targets on the data's hull (≤ ``ON_HULL`` eV/atom) and above it; none
    where the table has no energy-above-hull column."""
    import pandas as pd

    above = hull_energies(data_csv)
    if above is None:
        return []
    known = [r for r in records if pd.notna(above.get(str(r["material_id"])))]
    on = [r for r in known if above[str(r["material_id"])] <= ON_HULL]
    return [(f"on hull (≤ {1000 * ON_HULL:g} meV)", on),
            ("above hull", [r for r in known if r not in on])]


def table(records: list[dict], unrelaxed: dict[str, dict] | None, k: int,
          extra: list[tuple[str, list[dict]]] = ()) -> str:
    """Markdown: one row per arity, one for all and one per ``extra`` group, relaxed
    figures beside unrelaxed ones."""
    head = ["arity", "n", "match@1", f"match@{k}", "ranked@1", "ranked@1 ±25 meV",
            "first+lowest@2", "match@2"]
    if unrelaxed is not None:
        head += ["unrelaxed match@1", f"unrelaxed match@{k}"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = [(label, [r for r in records if r["arity"] == label]) for label in ARITY_LABELS]
    for label, rows in groups + [("all", records)] + list(extra):
        if not rows:
            continue
        ranked = any(r.get("energy_per_atom") is not None for r in rows)
        s = summarise(rows, [1, 2, k], ranked)
        cells = [label, str(len(rows)), pct(s["match_rate"]["1"]), pct(s["match_rate"][str(k)]),
                 pct(s["ranked_match_rate"]["1"]), pct(s["window_match_rate"]["1"]),
                 pct(s["pair_match_rate"]["2"]), pct(s["match_rate"]["2"])]
        if unrelaxed is not None:
            paired = [unrelaxed[r["material_id"]] for r in rows if r["material_id"] in unrelaxed]
            u = summarise(paired, [1, k], False) if len(paired) == len(rows) else None
            cells += [pct(u["match_rate"]["1"]) if u else "unpaired",
                      pct(u["match_rate"][str(k)]) if u else "unpaired"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("journal", type=Path)
    parser.add_argument("--unrelaxed", type=Path, help="results.json of an unrelaxed run of the "
                        "same data, seed and --n (compositions paired by material_id)")
    parser.add_argument("--plot", type=Path, help="write a PNG of the picks per arity: "
                        "ranked@1, the generator's first, the two of them, its first two")
    args = parser.parse_args()
    key, records = read_journal(args.journal)
    k = int(key.get("k_max", 20))
    unrelaxed = None
    if args.unrelaxed:
        other = json.loads(args.unrelaxed.read_text())
        if other.get("seed") != key.get("seed") or other.get("n_compositions") != key.get(
                "n_compositions"):
            raise SystemExit(f"{args.unrelaxed}: another seed or --n than the journal")
        unrelaxed = {r["material_id"]: r for r in other["per_composition"]}
    wall = sum(r.get("wall_s", 0.0) for r in records)
    print(f"{args.journal}: {len(records)} of {key.get('n_compositions')} compositions finished "
          f"({key.get('generator')}, relax {key.get('relax')}, {key.get('relax_steps')} steps"
          + (f", re-ranked by {key['rerank']} (top {key.get('rerank_top')})" if key.get("rerank")
             else "") + "), "
          f"{wall / max(len(records), 1):.0f} s per composition")
    print()
    if key.get("rerank") and not key.get("rerank_first"):
        print("(first+lowest@2 is not the loop's pair here: the second model ranked only the "
              "first model's lowest, not necessarily the generator's first; see --rerank-first)")
    print(table(records, unrelaxed, k, hull_groups(records, key["data_csv"])))
    if args.plot:
        print(f"\nplot: {plot(records, k, key, args.plot)}")


def plot(records: list[dict], k: int, key: dict, path: Path) -> Path:
    """Bars per arity: the energy pick, the generator's pick, and the pairs of them."""
    from xtalloop.benchmark.csp_plot import rate_bars

    groups = {"all": records} | {label: [r for r in records if r["arity"] == label]
                                 for label in ARITY_LABELS}
    groups = {g: rows for g, rows in groups.items() if rows}
    summaries = {g: summarise(rows, [1, 2, k], True) for g, rows in groups.items()}
    series = {
        "lowest energy (ranked@1)": {g: s["ranked_match_rate"]["1"] for g, s in summaries.items()},
        "generator's first (match@1)": {g: s["match_rate"]["1"] for g, s in summaries.items()},
        "first + lowest (2 picks)": {g: s["pair_match_rate"]["2"] for g, s in summaries.items()},
        "generator's first two (match@2)": {g: s["match_rate"]["2"] for g, s in summaries.items()},
        f"any of {k} (match@{k})": {g: s["match_rate"][str(k)] for g, s in summaries.items()},
    }
    title = (f"{key.get('generator')}, relaxed with {key.get('relax')}"
             + (f", re-ranked by {key['rerank']}" if key.get("rerank") else ""))
    return rate_bars(series, {g: len(rows) for g, rows in groups.items()}, title, path,
                     ylabel="known structure picked")


if __name__ == "__main__":
    main()

"""Could the loop's own hits teach the generator a target's skeleton? Counted per round.

The Wyckoff generator places atoms on skeletons (space group and Wyckoff
positions, :mod:`xtalloop.generators.wyckoff.skeletons`) and carries a bank of
known ones in its checkpoint; a learning arm's fine-tuned checkpoint adds the
skeletons of the loop's hits to that bank. For every completed round of each
arm this prints how many target compositions have their known structure's
skeleton in the base checkpoint's bank already, and how many have it only among
the skeletons of the arm's hits in earlier rounds (what the loop's learning
could add)::

    python benchmarks/campaign_skeletons.py --work runs/campaign3 --arms a,d

Reads the campaign's ``--work`` folder (``targets.json``, the base checkpoint,
each arm's store and ``scores.json``); run ``benchmarks/campaign.py --score-only``
first so every validation has its hit verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout


def skeleton_of(structure) -> str | None:
    """The skeleton key of a structure (``None`` when it cannot be described)."""
    from xtalloop.generators.wyckoff.sites import describe
    from xtalloop.generators.wyckoff.skeletons import skeleton_key

    crystal = describe(structure)
    return skeleton_key(crystal) if crystal else None


def arm_rounds(work: Path, arm: str, targets: list[dict], bank: dict) -> list[dict]:
    """Per completed round: targets, skeleton in the base bank, only in earlier hits."""
    from pymatgen.core import Structure

    from xtalloop.benchmark.campaign_score import known_structure
    from xtalloop.config import StoreConfig
    from xtalloop.store.results import VALIDATED, open_results

    by_formula = {t["formula"]: t for t in targets}
    scores = json.loads((work / arm / "scores.json").read_text())
    rows, learned = [], set()
    with open_results(StoreConfig(path=str(work / arm / "store")), create=False) as db:
        loop = db.latest_run(f"campaign-{arm}")
        for record in [r for r in db.rounds(loop["id"]) if r.get("status") == "completed"]:
            results = [r for r in db.composition_results(record["run_id"])
                       if r["formula"] in by_formula]
            keys = [skeleton_of(known_structure(by_formula[r["formula"]])) for r in results]
            rows.append({"round": record["round"], "targets": len(keys),
                         "in_base_bank": sum(k in bank for k in keys if k),
                         "only_in_earlier_hits": sum(k in learned and k not in bank
                                                     for k in keys if k),
                         "undescribed": sum(k is None for k in keys)})
            for result in results:
                for v in result.get("validated", []):
                    if not scores.get(f"{v['uuid']}:{v.get('energy_per_atom')}", {}).get("hit"):
                        continue
                    doc = next(iter(db.store(VALIDATED).query(
                        {"uuid": v["uuid"]}, properties=["structure"])), None)
                    key = skeleton_of(Structure.from_dict(doc["structure"])) if doc else None
                    if key:
                        learned.add(key)
            rows[-1]["hit_skeletons_so_far"] = len(learned)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the campaign's --work folder")
    parser.add_argument("--arms", default="a,d", help="comma-separated arms (default a,d)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="base Wyckoff checkpoint (default: the one in --work)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from xtalloop.generators.wyckoff.checkpoint import load_wyckoff

    targets = json.loads((args.work / "targets.json").read_text())["targets"]
    checkpoint = args.checkpoint or next(args.work.glob("wyckoff-*.pt"))
    bank = load_wyckoff(checkpoint).skeletons
    print(f"base checkpoint {checkpoint.name}: {len(bank)} skeletons in its bank")
    print("| arm | round | targets | skeleton in base bank | only among earlier hits' "
          "skeletons | hits' skeletons so far |")
    print("|---|---|---|---|---|---|")
    for arm in args.arms.split(","):
        for row in arm_rounds(args.work, arm, targets, bank):
            print(f"| {arm} | {row['round']} | {row['targets']} | {row['in_base_bank']} | "
                  f"{row['only_in_earlier_hits']} | {row['hit_skeletons_so_far']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

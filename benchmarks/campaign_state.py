"""Carry a campaign between machines: pack its ``--work`` folder, or unpack it into a new one.

The full campaign outlasts one working session and its machine; save the
state at the end of a session (arms stopped or paused with ``kill -STOP``),
commit or copy it, restore it on the next machine and run the same
``benchmarks/campaign.py`` command, which resumes every arm::

    python benchmarks/campaign_state.py save --work runs/campaign2 \\
        --state benchmarks/results/campaign_full/state --note "arm a: rounds 1-3"
    python benchmarks/campaign_state.py restore --trust-models --work runs/campaign2 \\
        --state benchmarks/results/campaign_full/state
    python benchmarks/campaign_state.py show --state benchmarks/results/campaign_full/state

Library: :mod:`xtalloop.benchmark.campaign_state`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from xtalloop.benchmark.campaign_state import (  # noqa: E402
    MANIFEST,
    energy_models,
    restore_state,
    save_state,
)
from xtalloop.errors import XtalloopError  # noqa: E402


def _show(manifest: dict) -> None:
    print(f"saved {manifest['saved']}" + (f": {manifest['note']}" if manifest.get("note") else ""))
    for part, info in manifest["parts"].items():
        left = info["left_out"]
        why = sorted({e.get("why", "over the size limit") for e in left})
        print(f"  {part:7s} {info['files']:5d} files, {info['unpacked_bytes'] / 1e6:7.1f} MB "
              f"-> {info['bytes'] / 1e6:6.1f} MB"
              + (f" in {len(info['volumes'])} volumes" if len(info.get("volumes", [])) > 1
                 else "")
              + (f"; left out {len(left)} file(s): {', '.join(why)}" if left else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "restore", "show"))
    parser.add_argument("--work", type=Path, help="the campaign's --work folder")
    parser.add_argument("--state", type=Path, required=True, help="folder of the archives")
    parser.add_argument("--arms", help="arms to save or restore (default: all)")
    parser.add_argument("--note", default="", help="save: a line kept in the manifest")
    parser.add_argument("--replace", action="store_true",
                        help="restore: replace arm folders already in --work")
    parser.add_argument("--trust-models", action="store_true",
                        help="restore: put the restored arms' energy models on this machine's "
                             "trust list (a learning arm's prefilter needs them)")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    if args.action != "show" and args.work is None:
        parser.error(f"{args.action} needs --work")
    try:
        if args.action == "save":
            _show(save_state(args.work, args.state, arms, args.note))
        elif args.action == "restore":
            parts = restore_state(args.state, args.work, arms, replace=args.replace,
                                  trust_models=args.trust_models)
            print(f"restored {', '.join(parts)} into {args.work}; run the campaign command "
                  "again to resume")
            models = {d: m for arm in parts[1:] for d, m in energy_models(args.work, arm).items()}
            if models and args.trust_models:
                print(f"trusted {len(models)} energy-model file(s) of the restored arms")
            elif models:
                print(f"note: the restored arms hold {len(models)} energy-model file(s) this "
                      "machine does not trust yet; restore with --trust-models (or run "
                      "`xtalloop model trust ID` per model) before resuming them")
        else:
            path = args.state / MANIFEST
            if not path.is_file():
                raise XtalloopError(f"{args.state}: no {MANIFEST}")
            _show(json.loads(path.read_text()))
    except XtalloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Carry a campaign between machines: pack its ``--work`` folder, or unpack it into a new one.

The full campaign outlasts one working session and its machine; save the
state at the end of a session (arms stopped or paused with ``kill -STOP``),
commit or copy it, restore it on the next machine and run the same
``benchmarks/campaign.py`` command, which resumes every arm::

    python benchmarks/campaign_state.py save --work runs/campaign2 \\
        --state benchmarks/results/campaign_full/state --note "arm a: rounds 1-3"
    python benchmarks/campaign_state.py restore --work runs/campaign2 \\
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

from xtalloop.benchmark.campaign_state import MANIFEST, restore_state, save_state  # noqa: E402
from xtalloop.errors import XtalloopError  # noqa: E402


def _show(manifest: dict) -> None:
    print(f"saved {manifest['saved']}" + (f": {manifest['note']}" if manifest.get("note") else ""))
    for part, info in manifest["parts"].items():
        left = info["left_out"]
        print(f"  {part:7s} {info['files']:5d} files, {info['unpacked_bytes'] / 1e6:7.1f} MB "
              f"-> {info['bytes'] / 1e6:6.1f} MB"
              + (f"; left out {len(left)} file(s) over the size limit" if left else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("save", "restore", "show"))
    parser.add_argument("--work", type=Path, help="the campaign's --work folder")
    parser.add_argument("--state", type=Path, required=True, help="folder of the archives")
    parser.add_argument("--arms", help="arms to save or restore (default: all)")
    parser.add_argument("--note", default="", help="save: a line kept in the manifest")
    parser.add_argument("--replace", action="store_true",
                        help="restore: replace arm folders already in --work")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    if args.action != "show" and args.work is None:
        parser.error(f"{args.action} needs --work")
    try:
        if args.action == "save":
            _show(save_state(args.work, args.state, arms, args.note))
        elif args.action == "restore":
            parts = restore_state(args.state, args.work, arms, replace=args.replace)
            print(f"restored {', '.join(parts)} into {args.work}; run the campaign command "
                  "again to resume")
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

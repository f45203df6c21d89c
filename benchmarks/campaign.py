"""Does learning pay? A retrospective discovery campaign (issue 20), one command.

Target compositions with known structures are drawn from the MP-20 and
MPTS-52 validation splits (``--per-arity`` per arity group 2, 3, 4, 5+). Each
arm runs the same active-learning loop (``xtalloop run`` in-process) over them
with the arity schedule 2 → 3 → 4 → 5+, the same seeds and the same validation
budget per round; the generator starts from a Wyckoff model trained here on
MP-20 binaries and ternaries only (``--base-checkpoint``, trained if missing).
Arms: (a) nothing learns, (b) the energy model is trained each round on the
validator's labels, (c) the generator is fine-tuned each round on the loop's
stable finds, (d) both. The validator is an ML potential (``dft.code: mlip``,
``--validator``, default DIEP) other than the prefilter (CHGNet).

A validation is a hit when the validated structure matches the known one
(StructureMatcher stol 0.5, ltol 0.3, angle_tol 10) or its energy is at or
below the known structure's, relaxed by the validator.

Resumable: run the same command again after a kill. The targets are kept in
``<work>/targets.json``, each arm's loop resumes from its store, a finished
arm is only scored, and the known structures' energies and the verdicts are
cached. Writes ``results.json``, ``results.md`` and ``hit_rate.png`` to
``--out``; the loops' stores and run folders go to ``--work``.

Example (the small run of benchmarks/README.md, "Learning campaign (issue 20)")::

    OMP_NUM_THREADS=1 python benchmarks/campaign.py --per-arity 5 --arms a,d --budget 5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from xtalloop.benchmark.campaign import (  # noqa: E402  (after the path)
    ARMS,
    DEFAULT_DATA,
    CampaignSettings,
    run_campaign,
    train_base_generator,
)
from xtalloop.benchmark.campaign_report import markdown_table, write_outputs  # noqa: E402
from xtalloop.benchmark.campaign_targets import STAGES, model_elements  # noqa: E402
from xtalloop.errors import XtalloopError  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=[str(REPO / p) for p in DEFAULT_DATA],
                        help="structure tables the targets come from")
    parser.add_argument("--per-arity", type=int, default=100,
                        help="target compositions per arity group")
    parser.add_argument("--arities", default="2,3,4,5+",
                        help=f"arity groups of the schedule, in order ({', '.join(STAGES)})")
    parser.add_argument("--arms", default="a,b,c,d", help="arms to run (a, b, c, d)")
    parser.add_argument("--rounds", type=int, default=1, help="loop rounds per arity group")
    parser.add_argument("--budget", type=int, default=50, help="validations per round")
    parser.add_argument("--candidates", type=int, default=8,
                        help="Wyckoff candidates per composition and round")
    parser.add_argument("--max-atoms", type=int, default=20,
                        help="largest target cell and generated cell (sites)")
    parser.add_argument("--prefilter", default="chgnet", help="prefilter model")
    parser.add_argument("--validator", default="diep", help="validator model (dft.code: mlip)")
    parser.add_argument("--prefilter-steps", type=int, default=150)
    parser.add_argument("--validator-steps", type=int, default=300)
    parser.add_argument("--energy-epochs", type=int, default=30,
                        help="energy-model training epochs per round (arms b, d)")
    parser.add_argument("--energy-frames", type=int, default=8,
                        help="frames per validator relaxation the energy model trains on")
    parser.add_argument("--energy-steps", type=int, default=None,
                        help="CHGNet fine-tuning: optimiser steps at most per round "
                             "(default: the epochs decide)")
    parser.add_argument("--energy-replay", type=int, default=4,
                        help="CHGNet fine-tuning replay: AFLOW prototypes per training "
                             "composition")
    parser.add_argument("--energy-architecture", choices=("chgnet", "mace"), default="chgnet",
                        help="what arms b, d train: chgnet fine-tunes the pretrained "
                             "prefilter (needs --prefilter chgnet), mace trains MACE")
    parser.add_argument("--generator-epochs", type=int, default=5,
                        help="generator fine-tuning epochs per round (arms c, d)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-checkpoint", type=Path,
                        default=REPO / "ckpt" / "campaign" / "wyckoff-binary-ternary.pt",
                        help="Wyckoff generator every arm starts from (trained if missing)")
    parser.add_argument("--base-train", type=Path,
                        default=REPO / "../shared/data/mp_20/train_partial.csv.gz",
                        help="table the base generator is trained on (≤ 3 elements of it)")
    parser.add_argument("--base-minutes", type=float, default=10.0,
                        help="training time of the base generator")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "campaign",
                        help="the arms' stores and run folders (resume from here)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "campaign",
                        help="results.json, results.md, hit_rate.png")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--score-only", action="store_true",
                        help="run no loop: score the rounds each arm completed so far")
    args = parser.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad or not args.arms:
        parser.error(f"--arms: {bad[0] if bad else '(none)'!r} is not one of a, b, c, d")
    if min(args.per_arity, args.rounds, args.budget, args.candidates, args.max_atoms) < 1:
        parser.error("--per-arity, --rounds, --budget, --candidates and --max-atoms are ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the campaign, write its outputs and print the table."""
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # progress lines: one per arm, round and validated composition
    for name in ("xtalloop.benchmark", "xtalloop.workflows.loop", "xtalloop.workflows.validate"):
        logging.getLogger(name).setLevel(logging.INFO)
    started = time.monotonic()
    try:
        base = train_base_generator(args.base_train, args.base_checkpoint, args.base_minutes,
                                    args.max_atoms, args.seed)
        settings = CampaignSettings(
            data=tuple(args.data), per_arity=args.per_arity,
            arities=tuple(a.strip() for a in args.arities.split(",") if a.strip()),
            rounds_per_stage=args.rounds, budget=args.budget, seed=args.seed,
            checkpoint=str(base.resolve()), candidates=args.candidates,
            max_atoms=args.max_atoms, prefilter=args.prefilter, validator=args.validator,
            prefilter_steps=args.prefilter_steps, validator_steps=args.validator_steps,
            energy_epochs=args.energy_epochs, generator_epochs=args.generator_epochs,
            energy_architecture=args.energy_architecture, energy_frames=args.energy_frames,
            energy_replay_neighbours=args.energy_replay, energy_steps=args.energy_steps)

        def usable(elements: set[str]) -> set[str]:  # both models must know every element
            return model_elements(args.validator)(model_elements(args.prefilter)(elements))

        result = run_campaign(settings, args.arms, args.work, usable=usable,
                              score_only=args.score_only)
    except XtalloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["settings"]["command"] = " ".join(["python", *sys.argv])
    result["wall_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_outputs(result, args.out)
    print(markdown_table(result))
    print(f"wall time {result['wall_s'] / 60:.1f} min; wrote "
          + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Arity extension: fine-tune the binary+ternary diffusion model on a few quaternaries/quinaries.

Question: does the diffusion generator trained on binaries and ternaries predict
quaternary and quinary structures better after fine-tuning on a little data of
that kind? The base checkpoint (trained here with the ``small_cpu`` preset if
``--base-checkpoint`` does not exist) is fine-tuned on nested, seeded fractions of
the training quaternaries and quinaries that fit its largest cell; the base and
every fine-tuned model are then scored with the project's CSP benchmark (top-k
match rate, StructureMatcher stol=0.5, ltol=0.3, angle_tol=10, no relaxation) on
the same held-out quaternary and quinary compositions with the same seeds.
Only higher orders are evaluated: fine-tuning on them may well make binaries and
ternaries worse, which this benchmark does not measure.

With ``--generator wyckoff`` the same is asked of the Wyckoff generator: the
base is a Wyckoff checkpoint (``--checkpoint``; trained here with the ``small``
preset on binaries and ternaries if missing), each fine-tuning crystal is first
described by its Wyckoff positions (those PyXtal cannot describe are skipped and
counted), and fine-tuning keeps the parent's weights unless its held-out loss
improves (:mod:`xtalloop.benchmark.arity_wyckoff`).

Writes ``results.json``, ``results.md`` and ``match_rate.png`` to ``--out``.

Example (the default run; with ``--prefilter chgnet`` it took 32 minutes on one thread)::

    OMP_NUM_THREADS=1 python benchmarks/arity_extension.py
    OMP_NUM_THREADS=1 python benchmarks/arity_extension.py --generator wyckoff \
        --checkpoint ckpt/wyckoff_binary_ternary.pt
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

from xtalloop.benchmark.arity import FinetuneSettings, run_arity_benchmark  # noqa: E402
from xtalloop.benchmark.arity_report import markdown_table, write_outputs  # noqa: E402
from xtalloop.benchmark.arity_wyckoff import run_wyckoff_arity_benchmark  # noqa: E402


def floats(text: str) -> list[float]:
    """Comma-separated floats, e.g. ``0.01,0.05,0.1``."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None


def ints(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``1,20``."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (relative default paths are taken from the repository root)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = REPO.parent / "shared" / "data" / "mp_20"
    parser.add_argument("--train", type=Path, default=data / "train_partial.csv.gz",
                        help="training CSV (cif column): fine-tuning crystals, and the base "
                             "model's data if it must be trained")
    parser.add_argument("--val", type=Path, default=data / "val.csv.gz",
                        help="held-out CSV (cif column, optional material_id)")
    parser.add_argument("--generator", choices=("diffusion", "wyckoff"), default="diffusion",
                        help="the generator fine-tuned and scored")
    parser.add_argument("--base-checkpoint", "--checkpoint", dest="base_checkpoint", type=Path,
                        default=None,
                        help="checkpoint of --generator's kind trained on binaries+ternaries "
                             "(trained here if missing; default ckpt/small_cpu.pt, for "
                             "wyckoff ckpt/wyckoff_binary_ternary.pt)")
    parser.add_argument("--base-minutes", type=float, default=42.0,
                        help="time box of the base training, only if the checkpoint is missing")
    parser.add_argument("--base-max-atoms", type=int, default=12,
                        help="largest cell of the base training, only if the checkpoint is missing")
    parser.add_argument("--fractions", type=floats, default=[0.01, 0.05, 0.1],
                        help="shares of the train quaternaries+quinaries to fine-tune on (nested)")
    budget = parser.add_argument_group("fine-tuning budget (epochs, minutes or both)")
    budget.add_argument("--finetune-epochs", type=int, default=None,
                        help="fixed epochs per fine-tuning run (default 150 unless "
                             "--finetune-minutes is given)")
    budget.add_argument("--finetune-minutes", type=float, default=None,
                        help="wall-time box per fine-tuning run")
    parser.add_argument("--finetune-batch-size", type=int, default=16,
                        help="crystals per fine-tuning step (small sets: small batches)")
    parser.add_argument("--finetune-lr-factor", type=float, default=None,
                        help="fine-tuning lr = base lr x this (default: the checkpoint's, 0.1)")
    parser.add_argument("--n-per-arity", type=int, default=30,
                        help="held-out compositions per arity (4 and 5 elements)")
    parser.add_argument("--k", type=ints, default=[1, 20], help="top-k match rates to report")
    parser.add_argument("--n-steps", type=int, default=100,
                        help="reverse diffusion steps (respaced sampler; diffusion only)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of the Wyckoff generator (wyckoff only)")
    parser.add_argument("--device", default="cpu",
                        help="torch device of Wyckoff fine-tuning and sampling (wyckoff only)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of subsets, held-out draw, sampling and fine-tuning")
    parser.add_argument("--prefilter", default=None,
                        help="energy model (chgnet, emt, MACE path) that re-ranks each "
                             "composition's candidates by energy per atom: 'ranked match@1'")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results/arity_extension, "
                             "for wyckoff arity_extension_wyckoff)")
    parser.add_argument("--ckpt-dir", type=Path, default=None,
                        help="folder of the fine-tuned checkpoints (default: "
                             "ckpt/arity_extension/<name of --out>)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.finetune_epochs is None and args.finetune_minutes is None:
        args.finetune_epochs = 150
    if args.n_per_arity < 1:
        parser.error("--n-per-arity must be positive")
    if args.temperature <= 0:
        parser.error("--temperature must be positive")
    wyckoff = args.generator == "wyckoff"
    if args.base_checkpoint is None:
        args.base_checkpoint = REPO / "ckpt" / ("wyckoff_binary_ternary.pt" if wyckoff
                                                else "small_cpu.pt")
    if args.out is None:
        args.out = REPO / "benchmarks" / "results" / ("arity_extension_wyckoff" if wyckoff
                                                       else "arity_extension")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, write its outputs and print the table."""
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ckpt_dir = args.ckpt_dir or REPO / "ckpt" / "arity_extension" / args.out.name
    settings = FinetuneSettings(epochs=args.finetune_epochs, minutes=args.finetune_minutes,
                                batch_size=args.finetune_batch_size,
                                lr_factor=args.finetune_lr_factor, seed=args.seed)
    print(f"fine-tuning budget: {settings.describe()}", flush=True)
    common = dict(
        train_csv=args.train, val_csv=args.val, base_checkpoint=args.base_checkpoint,
        ckpt_dir=ckpt_dir, fractions=args.fractions, n_per_arity=args.n_per_arity, ks=args.k,
        finetune_settings=settings, seed=args.seed, base_minutes=args.base_minutes,
        base_max_atoms=args.base_max_atoms, prefilter=args.prefilter,
        progress=not args.no_progress,
    )
    if args.generator == "wyckoff":
        result = run_wyckoff_arity_benchmark(**common, temperature=args.temperature,
                                             device=args.device)
    else:
        result = run_arity_benchmark(**common, n_steps=args.n_steps)
    result["settings"]["command"] = " ".join(["python", *sys.argv])
    result["settings"]["threads"] = args.threads
    paths = write_outputs(result, args.out)
    print(f"\nfine-tuning: {result['settings']['finetune']['budget']}; data "
          f"{result['data']['finetune_sizes']} of {result['data']['finetune_pool']} crystals")
    print(markdown_table(result))
    print(f"\nwall time {result['timings']['total_s'] / 60:.1f} min; wrote "
          + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

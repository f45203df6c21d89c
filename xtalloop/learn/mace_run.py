"""The MACE training process: mace's trainer, then the model in xtalloop's native format.

Run by :class:`~xtalloop.learn.mace_training.MaceTrainer` as::

    python -m xtalloop.learn.mace_run --native OUT.mace.json \\
        [--parent-native P.mace.json] -- <mace_run_train arguments>

Every pickle this process reads, it wrote itself. mace's trainer only takes
a pickled ``.model`` as ``--foundation_model`` and only writes one, and
unpickling is the one step that can run code from a file; so the parent is
built here from its native description (no pickle involved) and written to
``foundation.model`` for mace to read, and the ``.model`` mace writes is read
back here, in the process that wrote it, and saved as the native pair
(:mod:`xtalloop.models.mace_format`) that everything else loads.
A separate process keeps mace's global settings (default dtype, torch's
loading default, logging) out of the caller.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _option(mace_args: list[str], name: str, default: str) -> str:
    prefix = f"--{name}="
    return next((a[len(prefix):] for a in mace_args if a.startswith(prefix)), default)


def main(argv: list[str] | None = None) -> None:
    """Train with mace's CLI and write ``--native``; exit non-zero on any failure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="xtalloop.learn.mace_run")
    parser.add_argument("--native", required=True)
    parser.add_argument("--parent-native")
    args = parser.parse_args(argv[:split])
    mace_args = argv[split + 1:]

    import mace  # noqa: F401  (sets torch's loading default before e3nn is imported)
    import torch

    work_dir = Path(_option(mace_args, "work_dir", "."))
    if args.parent_native:
        from xtalloop.models.mace_format import load_native

        foundation = work_dir / "foundation.model"
        torch.save(load_native(args.parent_native), foundation)
        mace_args.append(f"--foundation_model={foundation}")

    from mace.cli import run_train

    sys.argv = ["mace_run_train", *mace_args]
    run_train.main()

    from xtalloop.models.mace_format import save_native

    name = _option(mace_args, "name", "MACE_model")
    model_dir = Path(_option(mace_args, "model_dir", str(work_dir)))
    written = model_dir / f"{name}.model"  # torch.save by run_train.main() just above
    # this process wrote it (run_train.main(), above): the one pickle it reads
    model = torch.load(written, map_location="cpu", weights_only=False)
    save_native(model, args.native)


if __name__ == "__main__":
    main()

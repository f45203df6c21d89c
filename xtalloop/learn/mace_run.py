"""The MACE training process: mace's trainer, then the model in xtalloop's native format.

Run by :class:`~xtalloop.learn.mace_training.MaceTrainer` as::

    python -m xtalloop.learn.mace_run --native OUT.mace.json \\
        [--parent-native P.mace.json] -- <mace_run_train arguments>

Every pickle this process reads, it wrote itself. mace's trainer only takes
a pickled ``.model`` as ``--foundation_model`` and only writes one, and
unpickling is the one step that can run code from a file; so the parent is
built here from its native description (no pickle involved) and written to
``foundation.model`` for mace to read, and the trained module is taken from
mace's own ``torch.save`` call as it writes ``<name>.model`` (the object in
memory, not the file) and saved as the native pair
(:mod:`xtalloop.models.mace_format`) that everything else loads. No file is
unpickled by xtalloop's code here.
A separate process keeps mace's global settings (default dtype, torch's
loading default, logging) out of the caller.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


def _option(mace_args: list[str], name: str, default: str) -> str:
    prefix = f"--{name}="
    return next((a[len(prefix):] for a in mace_args if a.startswith(prefix)), default)


@contextlib.contextmanager
def _modules_saved_to(path: Path) -> Iterator[list]:
    """Collect every ``nn.Module`` that ``torch.save`` writes to ``path`` while open.

    mace's trainer keeps its final module in a local variable and only hands it
    to ``torch.save``; taking it there avoids reading the pickle back.
    """
    import torch

    wanted = path.resolve()
    caught: list = []
    original = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, torch.nn.Module) and isinstance(f, (str, os.PathLike)) \
                and Path(f).resolve() == wanted:
            caught.append(obj)
        return original(obj, f, *args, **kwargs)

    torch.save = save
    try:
        yield caught
    finally:
        torch.save = original


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

    name = _option(mace_args, "name", "MACE_model")
    model_dir = Path(_option(mace_args, "model_dir", str(work_dir)))
    sys.argv = ["mace_run_train", *mace_args]
    with _modules_saved_to(model_dir / f"{name}.model") as caught:
        run_train.main()
    if not caught:
        raise SystemExit(f"mace_run_train finished without saving {model_dir / (name + '.model')}")

    from xtalloop.models.mace_format import save_native

    save_native(caught[-1].to("cpu"), args.native)


if __name__ == "__main__":
    main()

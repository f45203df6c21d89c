"""A tiny Wyckoff checkpoint for tests: a few seconds of training on MP-20 crystals.

Its samples are not good crystals (the model has seen 40 crystals for a few
epochs), but every part of the pipeline runs: describing, training, checking,
loading, sampling and building. Twenty short epochs rather than one, so that
the lattice head has learned a volume per atom: with an untrained one every
cell is squeezed to the smallest volume and nothing builds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

#: The shared data's MP-20 validation split (read, never copied into the repository).
MP20_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_20" / "val.csv.gz"
#: Rows of MP-20 val the tiny model trains on.
N_CRYSTALS = 40


def mp20_rows(n: int = N_CRYSTALS, skip: int = 0) -> pd.DataFrame:
    """Rows ``skip .. skip + n`` of MP-20 val (``material_id``, ``cif``...)."""
    return pd.read_csv(MP20_VAL, nrows=skip + n).iloc[skip:].reset_index(drop=True)


def build_tiny_checkpoint(out: Path) -> Path:
    """Describe :data:`N_CRYSTALS` MP-20 crystals and train a tiny model on them (~10 s)."""
    import torch
    from pymatgen.core import Structure

    from xtalloop.generators.wyckoff import (
        WyckoffModelConfig,
        WyckoffTrainConfig,
        describe,
        train_wyckoff,
    )

    crystals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in mp20_rows().itertuples():
            crystal = describe(Structure.from_str(row.cif, fmt="cif"), row.material_id)
            if crystal is not None:
                crystals.append(crystal)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_wyckoff(crystals, out, WyckoffModelConfig(d_model=32, n_layers=1, n_heads=2),
                      WyckoffTrainConfig(epochs=20, batch_size=16, lr=5e-3), progress=False)
    finally:
        torch.set_num_threads(threads)
    return out

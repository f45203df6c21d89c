"""The symmetry-aware Wyckoff generator: describe, train, check, load and sample."""

from xtalloop.generators.wyckoff.checkpoint import (
    DEFAULT_CHECKPOINT,
    SHIPPED,
    LoadedWyckoff,
    check_wyckoff,
    load_wyckoff,
    save_wyckoff,
)
from xtalloop.generators.wyckoff.generator import WyckoffGenerator
from xtalloop.generators.wyckoff.model import WyckoffModel, WyckoffModelConfig
from xtalloop.generators.wyckoff.sites import WyckoffCrystal, WyckoffSite, build, describe
from xtalloop.generators.wyckoff.train import WyckoffTrainConfig, train_wyckoff

__all__ = [
    "DEFAULT_CHECKPOINT",
    "SHIPPED",
    "LoadedWyckoff",
    "WyckoffCrystal",
    "WyckoffGenerator",
    "WyckoffModel",
    "WyckoffModelConfig",
    "WyckoffSite",
    "WyckoffTrainConfig",
    "build",
    "check_wyckoff",
    "describe",
    "load_wyckoff",
    "save_wyckoff",
    "train_wyckoff",
]

"""A trainable DiffCSP-style diffusion generator: data, model, diffusion, training, sampling."""

from xtalloop.generators.diffusion.checkpoint import load_model, read_checkpoint
from xtalloop.generators.diffusion.config import (
    PRESETS,
    DiffusionConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    preset,
)
from xtalloop.generators.diffusion.data import CrystalDataset, load_csv, structures_to_dataset
from xtalloop.generators.diffusion.generator import DiffusionGenerator
from xtalloop.generators.diffusion.model import CrystalDenoiser
from xtalloop.generators.diffusion.train import train

__all__ = [
    "PRESETS",
    "CrystalDataset",
    "CrystalDenoiser",
    "DiffusionConfig",
    "DiffusionGenerator",
    "ModelConfig",
    "NoiseConfig",
    "TrainConfig",
    "load_csv",
    "load_model",
    "preset",
    "read_checkpoint",
    "structures_to_dataset",
    "train",
]

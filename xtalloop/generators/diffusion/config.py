"""Hyperparameters of the diffusion generator: model, noise schedules, training."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Size of the periodic E(3)-invariant denoiser (a CSPNet-style graph network).

    Parameters
    ----------
    hidden_dim
        Width of node embeddings and of every MLP.
    n_layers
        Message-passing layers over the fully connected graph of each crystal.
    n_frequencies
        Fourier frequencies (k = 0 .. n-1) of the fractional coordinate differences.
    time_dim
        Size of the sinusoidal time embedding.
    max_z
        Largest atomic number the atom-type embedding knows.
    """

    hidden_dim: int = Field(128, ge=4)
    n_layers: int = Field(4, ge=1)
    n_frequencies: int = Field(10, ge=1)
    time_dim: int = Field(64, ge=2)
    max_z: int = Field(100, ge=1)


class NoiseConfig(_Strict):
    """Noise schedules of the joint lattice / fractional-coordinate diffusion.

    Parameters
    ----------
    timesteps
        Number of discrete diffusion steps T (shared by both schedules).
    cosine_s
        Offset ``s`` of the cosine beta schedule of the lattice DDPM.
    sigma_min, sigma_max
        Ends of the exponential sigma schedule of the wrapped normal on coordinates.
    lattice_weight, coord_weight
        Weights of the lattice noise loss and the coordinate score loss.
    """

    timesteps: int = Field(1000, ge=2)
    cosine_s: float = Field(0.008, gt=0)
    sigma_min: float = Field(0.005, gt=0)
    sigma_max: float = Field(0.5, gt=0)
    lattice_weight: float = Field(1.0, ge=0)
    coord_weight: float = Field(1.0, ge=0)


class TrainConfig(_Strict):
    """Optimisation settings.

    Parameters
    ----------
    epochs
        Train until this epoch count (a resumed run continues up to it).
    batch_size
        Crystals per optimisation step.
    lr
        Adam learning rate for training from scratch.
    finetune_lr_factor
        Multiplies ``lr`` when fine-tuning from a checkpoint.
    weight_decay
        AdamW weight decay.
    grad_clip
        Gradient norm clip (0: none).
    max_time_s
        Wall-time box: stop after the step that passes it and save (``None``: no box).
    save_every
        Also write the checkpoint every this many epochs (0: only at the end).
    seed
        Seed of initialisation, shuffling and noise draws.
    device
        ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    """

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    finetune_lr_factor: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    max_time_s: float | None = Field(None, gt=0)
    save_every: int = Field(10, ge=0)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"


class DiffusionConfig(_Strict):
    """Everything that defines a diffusion-generator training run.

    Parameters
    ----------
    model
        Denoiser architecture.
    noise
        Diffusion schedules and loss weights.
    train
        Optimisation settings.
    """

    model: ModelConfig = ModelConfig()
    noise: NoiseConfig = NoiseConfig()
    train: TrainConfig = TrainConfig()


PRESETS: dict[str, DiffusionConfig] = {
    # For a 2-core CPU: MP-20 train_partial binaries and ternaries up to 12 atoms
    # (9.2k crystals) run at roughly 15-45 s per epoch; the 40-minute time box
    # keeps a run well under an hour whatever the machine's load.
    "small_cpu": DiffusionConfig(
        model=ModelConfig(hidden_dim=128, n_layers=4, n_frequencies=10, time_dim=64),
        noise=NoiseConfig(timesteps=1000),
        train=TrainConfig(
            epochs=150, batch_size=64, lr=1e-3, max_time_s=40 * 60, save_every=5, device="cpu"
        ),
    ),
    # DiffCSP-sized network for all of MP-20 on one GPU.
    "full_gpu": DiffusionConfig(
        model=ModelConfig(hidden_dim=512, n_layers=6, n_frequencies=10, time_dim=256),
        noise=NoiseConfig(timesteps=1000),
        train=TrainConfig(epochs=1000, batch_size=256, lr=1e-3, save_every=20, device="auto"),
    ),
}


def preset(name: str, **train_overrides: object) -> DiffusionConfig:
    """A named configuration (``small_cpu`` or ``full_gpu``), with training overrides.

    Parameters
    ----------
    name
        Key of :data:`PRESETS`.
    **train_overrides
        Fields of :class:`TrainConfig` to replace (``epochs=5``, ``device="cuda"``...).
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[name]
    if train_overrides:
        train = TrainConfig(**{**config.train.model_dump(), **train_overrides})
        config = config.model_copy(update={"train": train})
    return config

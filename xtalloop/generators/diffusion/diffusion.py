"""Joint diffusion of lattices (DDPM) and fractional coordinates (wrapped normal on the torus).

Atom types are given (crystal structure prediction); only the lattice matrix
``L`` and the fractional coordinates ``x`` are noised:

- ``L_t = sqrt(abar_t) L_0 + sqrt(1 - abar_t) eps`` with a cosine beta schedule;
  the network predicts ``eps``.
- ``x_t = (x_0 + sigma_t z) mod 1`` with ``sigma_t`` exponential between
  ``sigma_min`` and ``sigma_max``; the network predicts the score of the
  wrapped normal ``grad log p(x_t | x_0)`` divided by its root mean square.

Sampling runs DiffCSP's predictor-corrector: a Langevin corrector step on the
coordinates, then an ancestral step on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xtalloop.generators.diffusion.config import NoiseConfig
from xtalloop.generators.diffusion.data import CrystalBatch
from xtalloop.generators.diffusion.model import CrystalDenoiser, scatter_mean

_WRAPS = 10  # periodic images summed each side for the wrapped normal


def cosine_alpha_bars(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Cumulative ``abar_t`` for t = 0 .. T of the cosine schedule (``abar_0 = 1``)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bars = f / f[0]
    betas = (1 - alpha_bars[1:] / alpha_bars[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def wrapped_normal_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``d/dx log p(x)`` of a normal of width ``sigma`` wrapped onto [0, 1)."""
    k = torch.arange(-_WRAPS, _WRAPS + 1, dtype=x.dtype, device=x.device)
    d = x[..., None] + k
    s2 = (sigma**2)[..., None]
    logw = -(d**2) / (2 * s2)
    w = torch.softmax(logw, dim=-1)
    return (-(d / s2) * w).sum(-1)


def wrapped_normal_score_norm(
    sigma: torch.Tensor, grid: int = 4000, chunk: int = 32
) -> torch.Tensor:
    """``E[score^2]`` under the wrapped normal for each ``sigma`` (by quadrature).

    Computed ``chunk`` sigmas at a time: the full table for 1000 timesteps
    would hold tens of millions of float64 intermediates at once.
    """
    if len(sigma) > chunk:
        return torch.cat([
            wrapped_normal_score_norm(sigma[i:i + chunk], grid, chunk)
            for i in range(0, len(sigma), chunk)
        ])
    x = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid - 0.5
    k = torch.arange(-_WRAPS, _WRAPS + 1, dtype=torch.float64)
    sig = sigma.to(torch.float64)[:, None, None]
    d = x[None, :, None] + k
    dens = torch.exp(-(d**2) / (2 * sig**2)).sum(-1) / (sig[..., 0] * math.sqrt(2 * math.pi))
    score = wrapped_normal_score(x[None, :].expand(len(sigma), -1), sig[..., 0].expand(-1, grid))
    norm = (dens * score**2).sum(-1) / (dens.sum(-1))
    return norm


@dataclass
class Schedules:
    """Per-step tables of both noise schedules, index t = 0 .. T.

    Parameters
    ----------
    alpha_bars
        Lattice DDPM cumulative products, ``alpha_bars[0] = 1``.
    sigmas
        Coordinate noise widths, ``sigmas[0] = 0``.
    score_norms
        ``E[score^2]`` of the wrapped normal at each sigma (``score_norms[0] = 1``).
    """

    alpha_bars: torch.Tensor
    sigmas: torch.Tensor
    score_norms: torch.Tensor

    @classmethod
    def from_config(cls, noise: NoiseConfig) -> Schedules:
        """Tables for ``noise.timesteps`` steps."""
        T = noise.timesteps
        alpha_bars = cosine_alpha_bars(T, noise.cosine_s)
        frac = torch.arange(T, dtype=torch.float64) / (T - 1)  # sigma_1 = min, sigma_T = max
        sig = noise.sigma_min ** (1 - frac) * noise.sigma_max**frac
        norms = wrapped_normal_score_norm(sig)
        return cls(
            alpha_bars=alpha_bars.float(),
            sigmas=torch.cat([torch.zeros(1, dtype=torch.float64), sig]).float(),
            score_norms=torch.cat([torch.ones(1, dtype=torch.float64), norms]).float(),
        )

    @property
    def timesteps(self) -> int:
        """Number of diffusion steps T."""
        return len(self.sigmas) - 1

    def to(self, device: torch.device | str) -> Schedules:
        """The same tables on ``device``."""
        return Schedules(
            self.alpha_bars.to(device), self.sigmas.to(device), self.score_norms.to(device)
        )


def diffusion_loss(
    model: CrystalDenoiser,
    batch: CrystalBatch,
    schedules: Schedules,
    noise: NoiseConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Denoising loss of one batch at random times.

    Returns
    -------
    loss, parts
        Weighted total (differentiable) and its ``lattice`` / ``coord`` parts.
    """
    device = batch.lattices.device
    B = len(batch.num_atoms)
    T = schedules.timesteps

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device)

    t = torch.randint(1, T + 1, (B,), generator=generator, device=device)
    atom_crystal = torch.repeat_interleave(torch.arange(B, device=device), batch.num_atoms)

    abar = schedules.alpha_bars[t].view(B, 1, 1)
    eps_l = randn(B, 3, 3)
    noisy_l = abar.sqrt() * batch.lattices + (1 - abar).sqrt() * eps_l

    sigma = schedules.sigmas[t][atom_crystal].view(-1, 1)
    norm = schedules.score_norms[t][atom_crystal].view(-1, 1)
    z = randn(len(atom_crystal), 3)
    noisy_x = torch.remainder(batch.frac_coords + sigma * z, 1.0)
    target_x = wrapped_normal_score(sigma * z, sigma.expand_as(z)) / norm.sqrt()

    pred_l, pred_x = model(t.float() / T, batch.atom_types, noisy_x, noisy_l, batch.num_atoms)
    loss_l = ((pred_l - eps_l) ** 2).mean()
    # average over atoms within a crystal first, so every crystal weighs the same
    loss_x = scatter_mean(((pred_x - target_x) ** 2).mean(-1), atom_crystal, B).mean()
    loss = noise.lattice_weight * loss_l + noise.coord_weight * loss_x
    return loss, {"lattice": float(loss_l.detach()), "coord": float(loss_x.detach())}


def sampling_times(timesteps: int, n_steps: int) -> list[int]:
    """Descending subset of 1 .. T with ``n_steps`` entries (all of them when equal)."""
    n_steps = max(1, min(n_steps, timesteps))
    times = torch.linspace(timesteps, 1, n_steps).round().long().unique(sorted=True)
    return times.flip(0).tolist()


@torch.no_grad()
def sample(
    model: CrystalDenoiser,
    schedules: Schedules,
    atom_types: torch.Tensor,
    num_atoms: torch.Tensor,
    generator: torch.Generator,
    n_steps: int | None = None,
    step_lr: float = 1e-5,
    lattice_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw lattices and fractional coordinates for given atoms by predictor-corrector.

    Parameters
    ----------
    model
        Trained denoiser (in eval mode).
    schedules
        The schedules it was trained with.
    atom_types, num_atoms
        Atoms of each crystal, concatenated, and the count per crystal.
    generator
        Source of every random draw (seeded: same output for the same seed).
    n_steps
        Reverse steps (a respaced subset of the T training steps; default T).
    step_lr
        Langevin step scale of the coordinate corrector,
        ``step = step_lr * (sigma_t / sigma_min)^2``.
    lattice_clip
        Clamp the entries of each step's clean-lattice estimate to
        ``[-lattice_clip, lattice_clip]`` Å (``None``: no clamp). Near t = T the
        estimate divides by ``sqrt(abar_t) ~ 0``, so without it errors of the noise
        prediction can blow the lattice up, most of all with few (respaced) steps.

    Returns
    -------
    lattices, frac_coords
        ``(B, 3, 3)`` and ``(N, 3)`` in [0, 1).
    """
    device = atom_types.device
    T = schedules.timesteps
    B = len(num_atoms)
    N = len(atom_types)
    times = sampling_times(T, n_steps or T)
    sigma_min = schedules.sigmas[1]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device)

    lat = randn(B, 3, 3)
    x = torch.rand(N, 3, generator=generator, device=device)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else 0
        tt = torch.full((B,), t / T, device=device)
        sigma, sigma_prev = schedules.sigmas[t], schedules.sigmas[t_prev]
        norm_sqrt = schedules.score_norms[t].sqrt()

        # corrector: Langevin on the coordinates at fixed noise level
        _, score = model(tt, atom_types, x, lat, num_atoms)
        step = step_lr * (sigma / sigma_min) ** 2
        x = torch.remainder(x + step * score * norm_sqrt + (2 * step).sqrt() * randn(N, 3), 1.0)

        # predictor: ancestral step of both variables from t to t_prev
        eps, score = model(tt, atom_types, x, lat, num_atoms)
        abar, abar_prev = schedules.alpha_bars[t], schedules.alpha_bars[t_prev]
        alpha = abar / abar_prev
        beta = 1 - alpha
        # posterior mean of q(L_prev | L_t, L_0) at the estimated clean lattice
        lat0 = (lat - (1 - abar).sqrt() * eps) / abar.sqrt()
        if lattice_clip is not None:
            lat0 = lat0.clamp(-lattice_clip, lattice_clip)
        lat = (abar_prev.sqrt() * beta * lat0 + alpha.sqrt() * (1 - abar_prev) * lat) / (1 - abar)
        if t_prev > 0:
            var = beta * (1 - abar_prev) / (1 - abar)
            lat = lat + var.sqrt() * randn(B, 3, 3)
        dvar = sigma**2 - sigma_prev**2
        x = x + dvar * score * norm_sqrt
        if t_prev > 0:
            x = x + (dvar * sigma_prev**2 / sigma**2).sqrt() * randn(N, 3)
        x = torch.remainder(x, 1.0)
    return lat, x

"""A periodic, E(3)-invariant denoiser for crystals (the CSPNet idea of DiffCSP).

Each crystal is a fully connected graph of its atoms. Edges see the lattice only
through its Gram matrix ``L Lᵀ`` (unchanged by rotations and reflections of the
Cartesian frame) and the fractional coordinate differences only through Fourier
features (periodic in 1, unchanged by a common translation). Hence the per-atom
fractional-coordinate score is invariant, and the lattice output ``M L``, with
``M`` built from invariants, rotates with the lattice.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xtalloop.generators.diffusion.config import ModelConfig


def scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of the rows of ``values`` grouped by ``index`` (``size`` groups)."""
    out = values.new_zeros((size, *values.shape[1:]))
    out.index_add_(0, index, values)
    count = torch.bincount(index, minlength=size).clamp(min=1).to(values.dtype)
    return out / count.view(-1, *([1] * (values.dim() - 1)))


def fully_connected_edges(num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered atom pairs (self pairs included) within each crystal.

    Returns
    -------
    src, dst, crystal
        Atom indices of the pair and the crystal index of each edge.
    """
    device = num_atoms.device
    n_edges = num_atoms * num_atoms
    crystal = torch.repeat_interleave(torch.arange(len(num_atoms), device=device), n_edges)
    atom_offset = torch.cumsum(num_atoms, 0) - num_atoms
    edge_offset = torch.cumsum(n_edges, 0) - n_edges
    local = torch.arange(int(n_edges.sum()), device=device) - edge_offset[crystal]
    n = num_atoms[crystal]
    src = local // n + atom_offset[crystal]
    dst = local % n + atom_offset[crystal]
    return src, dst, crystal


class SinusoidalTime(nn.Module):
    """Sinusoidal embedding of a diffusion time in [0, 1]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 1000.0 * t[:, None] * self.freqs[None]
        emb = torch.cat([arg.sin(), arg.cos()], dim=-1)
        if emb.shape[-1] < self.dim:
            emb = torch.cat([emb, emb.new_zeros(len(t), 1)], dim=-1)
        return emb


class FourierFeatures(nn.Module):
    """sin/cos of ``2 pi k x`` for k = 0 .. n-1, periodic in 1 per component."""

    def __init__(self, n_frequencies: int) -> None:
        super().__init__()
        self.register_buffer(
            "k", 2 * math.pi * torch.arange(n_frequencies, dtype=torch.float32), persistent=False
        )
        self.out_dim = 6 * n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arg = x[..., None] * self.k  # (E, 3, n)
        return torch.cat([arg.sin(), arg.cos()], dim=-1).flatten(1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out), nn.SiLU())


class CrystalLayer(nn.Module):
    """One message-passing layer: edge MLP, mean over neighbours, residual node MLP."""

    def __init__(self, hidden: int, fourier_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        # The edge MLP's first layer acts on [h_src, h_dst, gram, fourier]; it is
        # split into per-part linear maps so the node parts are computed once per
        # atom rather than once per edge (same function, far fewer operations).
        self.edge_src = nn.Linear(hidden, hidden)
        self.edge_dst = nn.Linear(hidden, hidden, bias=False)
        self.edge_geo = nn.Linear(9 + fourier_dim, hidden, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = _mlp(2 * hidden, hidden, hidden)

    def forward(
        self,
        h: torch.Tensor,
        gram: torch.Tensor,
        frac_features: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        edge_crystal: torch.Tensor,
    ) -> torch.Tensor:
        x = self.norm(h)
        geo = torch.cat([gram[edge_crystal], frac_features], dim=-1)
        pre = self.edge_src(x)[src] + self.edge_dst(x)[dst] + self.edge_geo(geo)
        messages = scatter_mean(self.edge_out(pre), src, len(h))
        return h + self.node_mlp(torch.cat([x, messages], dim=-1))


class CrystalDenoiser(nn.Module):
    """Predicts the lattice noise and the fractional-coordinate score of noisy crystals.

    Parameters
    ----------
    config
        Sizes of the network.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_dim
        self.atom_embedding = nn.Embedding(config.max_z + 1, h)
        self.time_embedding = SinusoidalTime(config.time_dim)
        self.node_in = nn.Linear(h + config.time_dim, h)
        self.fourier = FourierFeatures(config.n_frequencies)
        self.layers = nn.ModuleList(
            CrystalLayer(h, self.fourier.out_dim) for _ in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(h)
        self.coord_out = nn.Linear(h, 3, bias=False)
        self.lattice_out = nn.Linear(h, 9, bias=False)

    def forward(
        self,
        t: torch.Tensor,
        atom_types: torch.Tensor,
        frac_coords: torch.Tensor,
        lattices: torch.Tensor,
        num_atoms: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise a batch.

        Parameters
        ----------
        t
            Diffusion time in [0, 1] per crystal, shape ``(B,)``.
        atom_types
            Atomic numbers, shape ``(N,)``.
        frac_coords
            Noisy fractional coordinates, shape ``(N, 3)``.
        lattices
            Noisy lattices (rows are vectors), shape ``(B, 3, 3)``.
        num_atoms
            Atoms per crystal, shape ``(B,)``.

        Returns
        -------
        lattice_out, coord_out
            Lattice noise estimate ``(B, 3, 3)`` (equivariant: rotates with the
            lattice) and normalised coordinate score ``(N, 3)`` (invariant).
        """
        batch = torch.repeat_interleave(torch.arange(len(num_atoms), device=t.device), num_atoms)
        src, dst, edge_crystal = fully_connected_edges(num_atoms)
        gram = (lattices @ lattices.transpose(1, 2)).flatten(1)
        frac_features = self.fourier(frac_coords[dst] - frac_coords[src])
        h = torch.cat(
            [self.atom_embedding(atom_types), self.time_embedding(t)[batch]], dim=-1
        )
        h = self.node_in(h)
        for layer in self.layers:
            h = layer(h, gram, frac_features, src, dst, edge_crystal)
        h = self.final_norm(h)
        coord_out = self.coord_out(h)
        pooled = scatter_mean(h, batch, len(num_atoms))
        mixing = self.lattice_out(pooled).view(-1, 3, 3)
        lattice_out = mixing @ lattices
        return lattice_out, coord_out

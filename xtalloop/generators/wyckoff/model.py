"""The Wyckoff network: space group, formula units, Wyckoff sites, coordinates and lattice.

A crystal of composition ``c`` is generated one decision at a time:

1. the space group ``g`` from ``p(g | c)``;
2. the formula units ``Z`` in the conventional cell from ``p(Z | c, g)``;
3. its symmetry-distinct atoms, element by element in a fixed order (lowest
   electronegativity first), each a Wyckoff position of ``g`` chosen by a causal
   transformer that sees the composition, the group, the atoms placed so far and
   how many atoms of the current element are still to place; with each position
   the bins of its free coordinates;
4. the lattice (volume per atom, axis ratios, angles) as Gaussians read off the
   finished sequence.

Every choice is a small classification, so the model trains in minutes on a
CPU; symmetry is exact because the decoded sites are Wyckoff orbits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from xtalloop.generators.wyckoff.tables import MAX_Z, element_features, wyckoff_table

#: Formula units per conventional cell the model can choose (1..MAX_FORMULA_UNITS).
MAX_FORMULA_UNITS = 64
#: Most Wyckoff positions of any space group (47, Pmmm, has 27).
MAX_POSITIONS = 27
#: Lattice targets: log(V/atom), log(b/a), log(c/a), alpha/90, beta/90, gamma/90.
N_LATTICE = 6


@dataclass(frozen=True)
class WyckoffModelConfig:
    """Network sizes (the JSON half of a checkpoint)."""

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 3
    n_bins: int = 48
    max_sites: int = 64
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class WyckoffModel(nn.Module):
    """Scores every decision of the generative process described in the module docstring."""

    def __init__(self, config: WyckoffModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        table = wyckoff_table()
        self.register_buffer("element_table", torch.from_numpy(element_features()),
                             persistent=False)
        self.register_buffer("wp_table", torch.from_numpy(table.features()), persistent=False)
        self.register_buffer("wp_offset", torch.from_numpy(table.offset), persistent=False)
        self.element_embedding = nn.Embedding(MAX_Z + 1, d)
        self.element_project = nn.Linear(self.element_table.shape[1], d)
        self.wp_embedding = nn.Embedding(table.size + 1, d)  # last id: start token
        self.wp_project = nn.Linear(self.wp_table.shape[1], d)
        self.group_embedding = nn.Embedding(231, d)
        self.units_embedding = nn.Embedding(MAX_FORMULA_UNITS + 1, d)
        self.amount_project = nn.Linear(3, d)
        self.coord_project = nn.Linear(6, d)
        self.remaining_project = nn.Linear(3, d)
        self.position_embedding = nn.Embedding(config.max_sites + 2, d)
        layer = nn.TransformerEncoderLayer(d, config.n_heads, 4 * d, config.dropout,
                                           batch_first=True, norm_first=True)
        self.composition_encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        dec_layer = nn.TransformerEncoderLayer(d, config.n_heads, 4 * d, config.dropout,
                                               batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(dec_layer, config.n_layers,
                                             enable_nested_tensor=False)
        self.group_head = _mlp(d, 230)
        self.units_head = _mlp(d, MAX_FORMULA_UNITS)
        self.site_query = _mlp(d, d)
        self.coord_head = _mlp(d, 3 * config.n_bins)
        self.lattice_head = _mlp(d, 2 * N_LATTICE)
        self.norm = nn.LayerNorm(d)

    # -- embeddings ---------------------------------------------------------------------
    def element(self, z: torch.Tensor) -> torch.Tensor:
        return self.element_embedding(z) + self.element_project(self.element_table[z])

    def wyckoff(self, wp: torch.Tensor) -> torch.Tensor:
        """Embeddings of global Wyckoff ids (``table.size`` is the start token)."""
        feats = self.wp_table[wp.clamp(max=self.wp_table.shape[0] - 1)]
        return self.wp_embedding(wp) + self.wp_project(feats)

    def encode_composition(self, z: torch.Tensor, amount: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
        """(B, E) elements, reduced amounts and padding mask -> (B, d) composition vector."""
        fraction = amount / amount.sum(1, keepdim=True).clamp(min=1)
        feats = torch.stack([fraction, amount / 8, torch.log1p(amount)], -1)
        h = self.element(z) + self.amount_project(feats)
        h = self.composition_encoder(h, src_key_padding_mask=~mask)
        h = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.norm(h)

    # -- the first two decisions --------------------------------------------------------
    def group_logits(self, comp: torch.Tensor) -> torch.Tensor:
        """(B, 230) logits of space groups 1..230."""
        return self.group_head(comp)

    def units_logits(self, comp: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """(B, MAX_FORMULA_UNITS) logits of Z = 1..MAX_FORMULA_UNITS."""
        return self.units_head(comp + self.group_embedding(group))

    # -- the site sequence --------------------------------------------------------------
    def decode(self, comp: torch.Tensor, group: torch.Tensor, units: torch.Tensor,
               prev_wp: torch.Tensor, prev_coord: torch.Tensor, cur_z: torch.Tensor,
               remaining: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, d) of a causal pass over the site sequence.

        Position ``t`` sees the previous site (``prev_wp``, ``prev_coord``; the start
        token at t = 0), the element to place now (``cur_z``) and its atoms still to
        place (``remaining``); the extra last position (``cur_z`` = 0) reads the lattice.
        """
        t = prev_wp.shape[1]
        pos = torch.arange(t, device=prev_wp.device).clamp(max=self.config.max_sites + 1)
        angle = 2 * np.pi * prev_coord
        coord_feats = torch.cat([torch.sin(angle), torch.cos(angle)], -1)
        rem = torch.stack([remaining / 8, torch.log1p(remaining), (remaining == 0).float()], -1)
        context = comp + self.group_embedding(group) + self.units_embedding(units)
        h = (self.wyckoff(prev_wp) + self.coord_project(coord_feats) + self.element(cur_z)
             + self.remaining_project(rem) + self.position_embedding(pos)[None]
             + context[:, None, :])
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=h.device), 1)
        return self.decoder(h, mask=causal, src_key_padding_mask=~mask)

    def site_logits(self, hidden: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """(B, [T,] MAX_POSITIONS) logits over each group's positions (index within the group).

        Columns past a group's number of positions are meaningless: mask them.
        """
        ids = (self.wp_offset[group][:, None]
               + torch.arange(MAX_POSITIONS, device=hidden.device)[None]).clamp(
                   max=self.wp_table.shape[0] - 1)
        keys = self.wyckoff(ids)  # (B, P, d)
        query = self.site_query(hidden)
        equation = "bd,bpd->bp" if query.dim() == 2 else "btd,bpd->btp"
        return torch.einsum(equation, query, keys) / keys.shape[-1] ** 0.5

    def coord_logits(self, hidden: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, n_bins) logits of each free coordinate's bin, given the chosen position."""
        out = self.coord_head(hidden + self.wyckoff(wp))
        return out.view(*out.shape[:-1], 3, self.config.n_bins)

    def lattice_params(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std (B, N_LATTICE) of the lattice targets."""
        out = self.lattice_head(hidden)
        return out[..., :N_LATTICE], out[..., N_LATTICE:].clamp(-5, 2)


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_in), nn.SiLU(), nn.Linear(d_in, d_out))

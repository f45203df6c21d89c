"""Crystal structures sampled from a trained diffusion model (DiffCSP-style CSP)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pymatgen.core import Composition, Lattice, Structure

from xtalloop.generators.base import Candidate
from xtalloop.generators.diffusion.checkpoint import LoadedModel, load_model
from xtalloop.generators.diffusion.diffusion import Schedules, sample

logger = logging.getLogger(__name__)

SAMPLE_ATTEMPTS = 4
"""Times a diverged sample (flat or non-finite cell) is drawn again before it is given up."""


def formula_unit_options(
    atoms_per_fu: int,
    counts: dict[int, dict[int, int]],
    max_atoms: int,
    formula_units: tuple[int, ...] | None = None,
) -> tuple[list[int], list[float]]:
    """Numbers of formula units to draw from and their probabilities.

    Parameters
    ----------
    atoms_per_fu
        Atoms in the reduced formula.
    counts
        Training counts of formula units per cell, by atoms per formula unit.
    max_atoms
        Cells larger than this are excluded.
    formula_units
        Explicit choices (uniform); ``None``: the training distribution for this
        ``atoms_per_fu``, else for all formulas, else one formula unit.
    """
    if formula_units:
        zs = [z for z in formula_units if z * atoms_per_fu <= max_atoms]
        return zs, [1.0 / len(zs)] * len(zs) if zs else []
    per = counts.get(atoms_per_fu)
    if not per or not any(z * atoms_per_fu <= max_atoms for z in per):
        per = {}
        for v in counts.values():
            for z, c in v.items():
                per[z] = per.get(z, 0) + c
    options = {z: c for z, c in per.items() if z * atoms_per_fu <= max_atoms}
    if not options:
        return ([1], [1.0]) if atoms_per_fu <= max_atoms else ([], [])
    zs = sorted(options)
    total = sum(options[z] for z in zs)
    return zs, [options[z] / total for z in zs]


@dataclass
class DiffusionGenerator:
    """Structures of a given composition sampled from a trained diffusion checkpoint.

    The atom types are fixed by the composition; the model denoises the lattice
    and the fractional coordinates from noise by predictor-corrector sampling.
    Each candidate first draws a number of formula units, so every cell holds a
    whole multiple of the reduced formula. All randomness comes from one
    ``torch.Generator`` seeded with ``seed``: on CPU the same
    ``(composition, n, seed)`` gives bit-identical structures.

    Parameters
    ----------
    checkpoint
        Path of a checkpoint written by :func:`xtalloop.generators.diffusion.train`,
        or a reference ``store:sha256:<digest>`` to one in the results store
        ``store`` (what a loop's fine-tuning job leaves for the next round),
        fetched into the local cache on first use.
    name
        Generator name recorded in the candidates.
    n_steps
        Reverse diffusion steps (``None``: all the training timesteps; fewer is a
        respaced, faster and coarser sampler).
    step_lr
        Langevin corrector step scale (DiffCSP uses 1e-5 on MP-20).
    device
        ``cpu``, ``cuda`` or ``auto``.
    batch_size
        Crystals denoised together.
    formula_units
        Numbers of formula units to draw from uniformly (``None``: the training
        distribution for formulas with this many atoms).
    max_atoms
        Largest cell to make (``None``: the largest training cell).
    lattice_clip_factor
        Clamp each step's clean-lattice estimate to this times the largest
        training lattice entry (0: no clamp); keeps coarse samplers stable.
    store
        A dumped :class:`~xtalloop.config.StoreConfig` to read a ``store:``
        checkpoint from (unused for a path).
    """

    checkpoint: str
    name: str = "diffusion"
    n_steps: int | None = None
    step_lr: float = 1e-5
    device: str = "cpu"
    batch_size: int = 64
    formula_units: tuple[int, ...] | None = None
    max_atoms: int | None = None
    lattice_clip_factor: float = 1.5
    store: dict[str, Any] | None = None
    _loaded: LoadedModel | None = field(default=None, init=False, repr=False, compare=False)
    _schedules: Schedules | None = field(default=None, init=False, repr=False, compare=False)

    def _torch_device(self) -> torch.device:
        from xtalloop.generators.diffusion.train import resolve_device

        return resolve_device(self.device)

    def load(self) -> LoadedModel:
        """The checkpoint's model, read once and kept on the instance."""
        if self._loaded is None:
            device = self._torch_device()
            from xtalloop.store.files import local_copy

            path = local_copy(self.checkpoint, self.store, suffix=".pt", kind="generators")
            self._loaded = load_model(path, device)
            self._schedules = Schedules.from_config(self._loaded.config.noise).to(device)
        return self._loaded

    def generate(self, composition: Composition, n: int, seed: int) -> list[Candidate]:
        """Return ``n`` candidates of ``composition`` (none if no cell fits ``max_atoms``).

        A sample that diverges (a flat or non-finite cell, which an undertrained
        model makes and which would crash the prefilter's relaxation) is drawn
        again, up to :data:`SAMPLE_ATTEMPTS` times; fewer than ``n`` come back
        only if it keeps diverging.
        """
        loaded = self.load()
        assert self._schedules is not None
        device = self._torch_device()
        reduced = Composition(composition).reduced_composition
        species = [el for el in reduced.elements]
        per_fu = [int(round(reduced[el])) for el in species]
        atoms_per_fu = sum(per_fu)
        max_atoms = self.max_atoms or loaded.max_atoms
        zs, probs = formula_unit_options(
            atoms_per_fu, loaded.formula_unit_counts, max_atoms, self.formula_units
        )
        if not zs or n <= 0:
            if not zs:
                logger.warning("no cell of %s fits within %d atoms", reduced, max_atoms)
            return []
        if any(el.Z > loaded.config.model.max_z for el in species):
            raise ValueError(f"{reduced} has elements beyond Z={loaded.config.model.max_z}")

        gen = torch.Generator(device=device).manual_seed(int(seed) % (2**63))
        pick = torch.multinomial(
            torch.tensor(probs, dtype=torch.float64), n, replacement=True,
            generator=torch.Generator().manual_seed(int(seed) % (2**63)),
        )
        z_draws = [zs[int(i)] for i in pick]
        n_steps = self.n_steps or self._schedules.timesteps
        clip = None
        if self.lattice_clip_factor > 0 and loaded.lattice_abs_max:
            clip = self.lattice_clip_factor * loaded.lattice_abs_max
        candidates: list[Candidate] = []
        pending = z_draws
        for _ in range(SAMPLE_ATTEMPTS):  # a diverged sample is drawn again
            diverged: list[int] = []
            for begin in range(0, len(pending), self.batch_size):
                chunk = pending[begin : begin + self.batch_size]
                structures = self._sample_chunk(loaded, species, per_fu, chunk, gen,
                                                n_steps, clip, device)
                for z, structure in zip(chunk, structures, strict=True):
                    if structure is None:
                        diverged.append(z)
                        continue
                    candidates.append(Candidate(
                        structure=structure, generator=self.name, seed=seed,
                        index=len(candidates),
                        metadata={"formula_units": z, "n_steps": n_steps,
                                  "step_lr": self.step_lr,
                                  "checkpoint_hash": loaded.checkpoint_hash[:16]},
                    ))
            if not diverged:
                break
            logger.warning("%d %s sample(s) diverged (a flat or non-finite cell): drawn again",
                           len(diverged), reduced.reduced_formula)
            pending = diverged
        return candidates

    def _sample_chunk(self, loaded: LoadedModel, species: list, per_fu: list[int],
                      chunk: list[int], gen: torch.Generator, n_steps: int,
                      clip: float | None, device: torch.device) -> list[Structure | None]:
        """One batch of reverse diffusion: a structure per formula-unit count, ``None`` if
        it diverged (a flat or non-finite cell, which would crash the prefilter)."""
        atoms_per_fu = sum(per_fu)
        types: list[int] = []
        for z in chunk:
            for el, c in zip(species, per_fu, strict=True):
                types.extend([el.Z] * (c * z))
        num_atoms = torch.tensor([atoms_per_fu * z for z in chunk], device=device)
        atom_types = torch.tensor(types, dtype=torch.long, device=device)
        lattices, frac = sample(
            loaded.model, self._schedules, atom_types, num_atoms, gen,
            n_steps=n_steps, step_lr=self.step_lr, lattice_clip=clip,
        )
        lattices = lattices.double().cpu().numpy()
        frac = frac.double().cpu().numpy()
        structures: list[Structure | None] = []
        offset = 0
        for k, z in enumerate(chunk):
            count = atoms_per_fu * z
            f = np.mod(frac[offset : offset + count], 1.0)
            f[f >= 1.0] = 0.0
            z_atoms = types[offset : offset + count]
            offset += count
            finite = np.isfinite(f).all() and np.isfinite(lattices[k]).all()
            if not finite or abs(np.linalg.det(lattices[k])) < 1e-8:
                structures.append(None)
                continue
            structures.append(Structure(Lattice(lattices[k]), z_atoms, f))
        return structures

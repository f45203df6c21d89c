"""CHGNet energies, forces and stresses with one backward pass instead of two.

Why: ``CHGNet.predict_structure`` (chgnet 0.3) takes the forces and the stress
with two separate ``torch.autograd.grad`` calls, each with
``create_graph=True`` (it shares the code path with training, where the forces
enter the loss). At inference neither is needed: one gradient of the energy
with respect to the positions and the strains together gives both, with no
graph kept for a second derivative. In a py-spy profile of the campaign's
prefilter the two backward passes were 71 % of the time and the forward 24 %.
The numbers are CHGNet's own (the same module, the same graphs, the same
units: eV/atom, eV/Å, GPa); ``tests/test_chgnet_inference.py`` compares them
with ``predict_structure``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: eV/Å³ in GPa, as CHGNet converts its stress.
EV_A3_TO_GPA = 160.21766208


def predict_efs(module: Any, structures: Sequence[Any], batch_size: int = 64
                ) -> list[dict[str, np.ndarray]]:
    """Energy per atom (``e``), forces (``f``) and stress in GPa (``s``, 3×3) per structure.

    Parameters
    ----------
    module
        A CHGNet torch module (pretrained or fine-tuned), in eval mode.
    structures
        pymatgen Structures.
    batch_size
        Structures per forward pass.
    """
    import torch
    from chgnet.model.model import BatchedGraph

    if module.training:  # its mode is its owner's: switching it here would be a side effect
        raise ValueError("predict_efs needs a CHGNet module in eval mode (call .eval() first)")
    device = next(module.parameters()).device
    out: list[dict[str, np.ndarray]] = []
    for start in range(0, len(structures), batch_size):
        graphs = [module.graph_converter(s).to(device)
                  for s in structures[start:start + batch_size]]
        with torch.enable_grad():
            batched = BatchedGraph.from_graphs(
                graphs, bond_basis_expansion=module.bond_basis_expansion,
                angle_basis_expansion=module.angle_basis_expansion, compute_stress=True)
            prediction = module._compute(batched, compute_force=False, compute_stress=False)
            energy = prediction["e"]  # per atom for the intensive pretrained model
            atoms = prediction["atoms_per_graph"]
            total = (energy * atoms).sum() if module.is_intensive else energy.sum()
            grads = torch.autograd.grad(total, [*batched.atom_positions, *batched.strains])
        if module.composition_model is not None:  # position-independent: no force
            energy = energy + module.composition_model(graphs)
        n = len(graphs)
        for i in range(n):
            out.append({
                "e": energy[i].detach().cpu().numpy(),
                "f": (-grads[i]).detach().cpu().numpy(),
                "s": (grads[n + i] / batched.volumes[i] * EV_A3_TO_GPA).detach().cpu().numpy(),
            })
    return out

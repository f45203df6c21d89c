"""Validated structures to files: CIF, extended XYZ or JSON, each with its provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pymatgen.core import Structure

ExportFormat = Literal["cif", "extxyz", "json"]


def file_stem(doc: dict[str, Any]) -> str:
    """``<formula>_<space group>_<uuid prefix>``: unique and readable."""
    return f"{doc['formula']}_{doc['space_group'].replace('/', '_')}_{doc['uuid'][:8]}"


def provenance(doc: dict[str, Any]) -> dict[str, Any]:
    """The flat provenance of a validated structure: what made it and how it was computed."""
    generator = doc.get("generator") or {}
    dft = doc.get("dft") or {}
    model = (doc.get("prefilter") or {}).get("energy_model") or {}
    return {
        "uuid": doc["uuid"],
        "formula": doc["formula"],
        "space_group": doc["space_group"],
        "space_group_number": doc["space_group_number"],
        "energy_per_atom": doc["energy_per_atom"],
        "e_above_hull": doc.get("e_above_hull"),
        "generator": generator.get("generator"),
        "generator_seed": generator.get("seed"),
        "generator_index": generator.get("index"),
        "energy_model": model.get("name"),
        "energy_model_version": model.get("version"),
        "dft_code": dft.get("code"),
        "dft_code_version": dft.get("code_version"),
        "dft_settings_key": dft.get("settings_key"),
        "dft_converged": dft.get("converged"),
        "run": (doc.get("run") or {}).get("id"),
        "found_in_runs": doc.get("found_in_runs", []),
        "created_at": doc.get("created_at"),
    }


def cif_text(doc: dict[str, Any]) -> str:
    """A symmetrised CIF whose comment lines carry the provenance."""
    from pymatgen.io.cif import CifWriter

    structure = Structure.from_dict(doc["structure"])
    header = "".join(f"# {key}: {value}\n" for key, value in provenance(doc).items())
    return header + str(CifWriter(structure, symprec=0.1))


def export_structures(
    docs: list[dict[str, Any]], fmt: ExportFormat, out: Path, with_trajectory: bool = False
) -> list[Path]:
    """Write ``docs`` (validated-structure documents) to ``out``.

    Parameters
    ----------
    docs
        Documents as :meth:`~xtalloop.store.results.ResultsDB.find_validated` returns them.
    fmt
        ``cif``: one file per structure in the folder ``out``; ``extxyz``: one
        multi-frame file ``out`` (energy, forces and stress per frame, provenance
        in each frame's info); ``json``: one file ``out`` holding the documents.
    with_trajectory
        JSON only: keep the relaxation trajectories (large).

    Returns
    -------
    list of Path
        The files written.
    """
    if fmt == "cif":
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for doc in docs:
            path = out / f"{file_stem(doc)}.cif"
            path.write_text(cif_text(doc))
            paths.append(path)
        return paths
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        keep = [
            {k: v for k, v in doc.items() if with_trajectory or k != "trajectory"}
            for doc in docs
        ]
        out.write_text(json.dumps(keep, indent=2, default=str))
        return [out]
    from ase.io import write

    write(out, [_atoms(doc) for doc in docs], format="extxyz")
    return [out]


def _atoms(doc: dict[str, Any]):
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress
    from ase.units import GPa
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(doc["structure"]))
    results: dict[str, Any] = {"energy": doc["energy"]}
    if doc.get("forces") is not None:
        results["forces"] = np.asarray(doc["forces"], dtype=float)
    if doc.get("stress_kbar") is not None:
        # stored as atomate2 does (3×3, kBar, VASP's sign); ASE wants Voigt eV/Å³, its sign
        stress = -np.asarray(doc["stress_kbar"], dtype=float) / 10 * GPa
        results["stress"] = full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress
    atoms.info = {k: v for k, v in provenance(doc).items()
                  if v is not None and not isinstance(v, (list, dict))}
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms

"""Validated structures to files: CIF, extended XYZ or JSON, each with its provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pymatgen.core import Structure

from xtalloop.errors import DataError
from xtalloop.preflight import (
    check_output_file, check_output_folder, write_file_atomically, writing_into,
)

if TYPE_CHECKING:
    from xtalloop.store.files import FileStore

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


def check_export_target(fmt: ExportFormat, out: Path, force: bool = False,
                        what: str = "OUT") -> None:
    """Refuse an output path that cannot take ``fmt``, before the store is even opened.

    ``cif`` needs a folder (existing or to be made), ``extxyz`` and ``json``
    a file; an existing file is replaced only with ``force``.

    Raises
    ------
    DataError
        One line naming ``what`` (the option or argument) and the path.
    """
    if fmt == "cif":
        check_output_folder(out, what)
    else:
        check_output_file(out, what, force, example=f"structures.{fmt}")


def write_cifs(docs: list[dict[str, Any]], folder: Path, force: bool = False,
               what: str = "OUT") -> list[Path]:
    """One CIF per document in ``folder`` (made if missing).

    Existing files of the same names are refused unless ``force``, all before
    the first file is written.
    """
    paths = [folder / f"{file_stem(doc)}.cif" for doc in docs]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise DataError(f"{what}: {existing[0]}{more} exist; pass --force to overwrite them")
    texts = [cif_text(doc) for doc in docs]  # before anything is written
    with writing_into(folder, what):
        for path, text in zip(paths, texts, strict=True):
            path.write_text(text)
    return paths


def export_structures(
    docs: list[dict[str, Any]], fmt: ExportFormat, out: Path, with_trajectory: bool = False,
    force: bool = False, files: FileStore | None = None,
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
    force
        Replace existing files (otherwise refused, before anything is written).
    files
        The store's file store, where ``with_trajectory`` reads the steps of
        documents that keep a ``trajectory_ref`` (required for those).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    DataError
        The target is of the wrong kind, exists (without ``force``) or cannot
        be written; a file is written whole or not at all.
    """
    check_export_target(fmt, out, force)
    if fmt == "cif":
        return write_cifs(docs, out, force)
    if fmt == "json":
        keep = [
            {k: v for k, v in doc.items() if with_trajectory or k != "trajectory"}
            for doc in docs
        ]
        if with_trajectory:
            from xtalloop.store.files import trajectory_of

            for doc in keep:
                if doc.get("trajectory_ref") and doc.get("trajectory") is None:
                    if files is None:
                        raise DataError("the trajectories are in the store's files: "
                                        "give the store to read them from")
                    doc["trajectory"] = trajectory_of(doc, files)
        text = json.dumps(keep, indent=2, default=str)
        write_file_atomically(out, "OUT", lambda tmp: tmp.write_text(text))
        return [out]
    from ase.io import write

    frames = [_atoms(doc) for doc in docs]
    write_file_atomically(out, "OUT", lambda tmp: write(tmp, frames, format="extxyz"))
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

"""Fake VASP for tests: writes VASP-format output files for the inputs in a job directory.

The project has no VASP (and no POTCARs) where its tests run. :func:`write_fake_vasp_outputs`
plays VASP 6.4.2: it reads the ``INCAR``, ``POSCAR``, ``KPOINTS`` (absent with ``KSPACING``)
and ``POTCAR.spec`` that atomate2 wrote, and writes ``vasprun.xml``, ``OUTCAR``, ``CONTCAR``,
``OSZICAR``, ``CHGCAR`` and an empty ``WAVECAR`` in VASP's formats, so that pymatgen's parsers,
emmet's ``TaskDoc.from_directory`` and atomate2's output copying treat the directory like a
finished VASP run. The energy comes from a function of the structure; everything else
(eigenvalues, DOS, charges, valences, timings) is made up, and the structure never moves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from pymatgen.core import Element, Structure
from pymatgen.io.vasp import Chgcar, Incar, Kpoints, Poscar
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

VASP_VERSION = "6.4.2"
POTCAR_DATE = "05Jan2001"  # date field of every fake TITEL ("PAW_PBE Na_pv 05Jan2001")
VBM, CBM = 2.0, 3.5  # band edges (eV) of the fake eigenvalues: an insulator with a 1.5 eV gap
EFERMI = VBM + 0.1  # VASP puts an insulator's Fermi level just above the VBM
LINE = "-" * 104
Step = tuple[float, np.ndarray, np.ndarray]  # energy (eV), forces (eV/Å), stress (kB)


def _zval(symbol: str) -> float:
    """Approximate POTCAR valence of ``symbol``: outer-shell electrons, plus semicore for _pv/_sv."""
    name, _, suffix = symbol.partition("_")
    element = Element(name)
    outer = element.electronic_structure.split("]")[-1]
    semicore = {"pv": 6, "sv": 8 if element.Z > 10 else 2}.get(suffix.split("_")[0], 0)
    return float(sum(int(n) for n in re.findall(r"\d[spdf](\d+)", outer)) + semicore)


def _vec(values: Iterable[float], fmt: str = "16.8f") -> str:
    """Numbers in VASP's fixed-width columns."""
    return "".join(f"{v:{fmt}}" for v in values)


def _items(params: dict[str, Any]) -> list[str]:
    """``<i>``/``<v>`` lines of vasprun.xml for INCAR-like parameters, typed as VASP types them."""
    lines = []
    for name, value in params.items():
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, bool) for v in values):
            typ, text = ' type="logical"', " ".join(" T" if v else " F" for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            typ, text = ' type="int"', _vec(values, "6d")
        elif all(isinstance(v, (int, float)) for v in values):
            typ, text = "", _vec(values)
        else:
            typ, text = ' type="string"', escape(" ".join(str(v) for v in values))
        tag = "v" if isinstance(value, (list, tuple)) else "i"
        lines.append(f'  <{tag}{typ} name="{name}">{text}</{tag}>')
    return lines


def _varray(name: str, rows: Any, indent: str = "   ") -> list[str]:
    """A ``<varray>`` of numeric rows."""
    body = [f"{indent} <v>{_vec(row, '17.8f')} </v>" for row in rows]
    return [f'{indent}<varray name="{name}" >', *body, f"{indent}</varray>"]


def _structure(structure: Structure, name: str | None = None, indent: str = " ") -> list[str]:
    """A vasprun.xml ``<structure>`` block (lattice, volume, reciprocal basis, positions)."""
    lat, sub = structure.lattice, indent + "  "
    return [f'{indent}<structure name="{name}" >' if name else f"{indent}<structure>",
            f"{indent} <crystal>", *_varray("basis", lat.matrix, sub),
            f'{sub}<i name="volume">{lat.volume:17.8f} </i>',
            *_varray("rec_basis", lat.reciprocal_lattice_crystallographic.matrix, sub), f"{indent} </crystal>",
            *_varray("positions", structure.frac_coords, indent + " "), f"{indent}</structure>"]


def _kpoints(directory: Path, incar: Incar, structure: Structure) -> tuple[list[str], np.ndarray]:
    """vasprun.xml ``<kpoints>`` lines and the weights of the irreducible k-points of the mesh."""
    if (path := directory / "KPOINTS").exists():  # Gamma or Monkhorst-Pack meshes only
        kpoints = Kpoints.from_file(path)
        if (style := kpoints.style.name) not in ("Gamma", "Monkhorst"):
            raise NotImplementedError(f"fake VASP does not do {style} KPOINTS")
        mesh, gamma = [int(n) for n in kpoints.kpts[0]], style == "Gamma"
    else:  # KSPACING as VASP does it: N_i = max(1, ceil(|b_i| / KSPACING)), b_i including 2 pi
        spacing = float(incar.get("KSPACING", 0.5))
        mesh = [max(1, math.ceil(b / spacing)) for b in structure.lattice.reciprocal_lattice.abc]
        gamma = bool(incar.get("KGAMMA", True))
    shift = [0 if gamma or n % 2 else 1 for n in mesh]  # Monkhorst-Pack: even meshes are off Gamma
    ir_mesh = SpacegroupAnalyzer(structure).get_ir_reciprocal_mesh(mesh, is_shift=shift)
    weights = np.array([m for _, m in ir_mesh], float) / np.prod(mesh)
    return [f'  <generation param="{"Gamma" if gamma else "Monkhorst-Pack"}">',
            f'   <v type="int" name="divisions">{_vec(mesh, "8d")} </v>',
            f'   <v name="usershift">{_vec([0, 0, 0])} </v>',
            *(f'   <v name="genvec{i + 1}">{_vec(np.eye(3)[i] / n)} </v>' for i, n in enumerate(mesh)),
            f'   <v name="shift">{_vec(np.array(shift) / 2)} </v>', "  </generation>",
            *_varray("kpointlist", [k for k, _ in ir_mesh], "  "),
            *_varray("weights", weights[:, None], "  ")], weights


def _electronic(nkpts: int, nbands: int, n_occ: int, nspin: int) -> list[str]:
    """``<eigenvalues>`` (n_occ flat bands up to VBM occupied, the rest from CBM) and a total ``<dos>``."""
    bands = [VBM - 8.0 * (n_occ - 1 - j) / max(n_occ - 1, 1) for j in range(n_occ)]
    bands += [CBM + 1.0 * j for j in range(nbands - n_occ)]
    kpoint = [f"     <r>{e:10.4f}{float(j < n_occ):10.4f} </r>" for j, e in enumerate(bands)]
    lines = ["<eigenvalues>", " <array>", *(f'  <dimension dim="{i + 1}">{d}</dimension>' for i, d in
                                            enumerate(("band", "kpoint", "spin"))), "  <field>eigene</field>",
             "  <field>occ</field>", "  <set>"]
    for spin in range(nspin):
        lines.append(f'   <set comment="spin {spin + 1}">')
        for k in range(nkpts):
            lines += [f'    <set comment="kpoint {k + 1}">', *kpoint, "    </set>"]
        lines.append("   </set>")
    energies = np.linspace(bands[0] - 2.0, bands[-1] + 2.0, 101)
    total = sum(np.exp(-(((energies - e) / 0.2) ** 2)) for e in bands) * 2 / (nspin * 0.2 * math.sqrt(math.pi))
    dos = [f"     <r>{_vec(row, '12.4f')} </r>" for row in zip(energies, total, np.cumsum(total) * 0.01 *
                                                                  (energies[-1] - energies[0]))]
    lines += ["  </set>", " </array>", "</eigenvalues>", "<dos>", f' <i name="efermi">{EFERMI:17.8f} </i>',
              " <total>", "  <array>", '   <dimension dim="1">gridpoints</dimension>',
              '   <dimension dim="2">spin</dimension>', "   <field>energy</field>",
              "   <field>total</field>", "   <field>integrated</field>", "   <set>"]
    for spin in range(nspin):
        lines += [f'    <set comment="spin {spin + 1}">', *dos, "    </set>"]
    return [f"  {line}" for line in [*lines, "   </set>", "  </array>", " </total>", "</dos>"]]


def _energies(energy: float, indent: str) -> list[str]:
    """An ``<energy>`` block (no smearing entropy: free energy = energy = energy(sigma->0))."""
    names = ("e_fr_energy", "e_wo_entrp", "e_0_energy")
    return [f"{indent}<energy>", *(f'{indent} <i name="{k}">{energy:17.8f} </i>' for k in names),
            f"{indent}</energy>"]


def write_fake_vasp_outputs(directory: Path, energy_per_atom: Callable[[Structure], float]) -> None:
    """Write the outputs a converged VASP run would leave in ``directory``.

    A relaxation (NSW > 0 and IBRION 1, 2 or 3) gets two ionic steps of the POSCAR structure:
    the first 0.01 eV/atom above the final energy, with forces of ±0.05 eV/Å (summing to zero)
    and a 1 kB stress, the second at the final energy with no forces or stress. Anything else
    gets one ionic step like the second. Each ionic step has up to four SCF steps converging to it.

    Parameters
    ----------
    directory
        Job directory holding ``INCAR``, ``POSCAR``, ``POTCAR.spec`` (one POTCAR symbol a line,
        in POSCAR species order; the element symbols are used if it is absent) and ``KPOINTS``
        (a Gamma or Monkhorst-Pack mesh; optional with ``KSPACING``). The inputs are left as
        they are.
    energy_per_atom
        Final energy (eV/atom) of a structure.
    """
    directory = Path(directory)
    incar, poscar = Incar.from_file(directory / "INCAR"), Poscar.from_file(directory / "POSCAR")
    structure, n_atoms, natoms = poscar.structure, len(poscar.structure), poscar.natoms
    spec = directory / "POTCAR.spec"
    symbols = spec.read_text().split() if spec.exists() else list(poscar.site_symbols)
    if len(symbols) != len(natoms):
        raise ValueError(f"POTCAR.spec has {symbols}, the POSCAR has species {poscar.site_symbols}")
    titels = [f"PAW_PBE {symbol} {POTCAR_DATE}" for symbol in symbols]
    zvals = [_zval(symbol) for symbol in symbols]
    nsw, nspin, nelm = int(incar.get("NSW", 0)), int(incar.get("ISPIN", 1)), int(incar.get("NELM", 60))
    ibrion, ediff = int(incar.get("IBRION", -1 if nsw in (-1, 0) else 0)), float(incar.get("EDIFF", 1e-4))
    nelect = float(incar.get("NELECT", sum(z * n for z, n in zip(zvals, natoms))))
    n_occ = max(1, math.ceil(nelect / 2))
    nbands = max(int(incar.get("NBANDS", 0)), n_occ + 4)
    energy = n_atoms * float(energy_per_atom(structure))
    kpoint_lines, weights = _kpoints(directory, incar, structure)

    params = {"SYSTEM": "unknown system", "PREC": "normal", "EDIFF": ediff, "ISMEAR": 1, "SIGMA": 0.2,
              "KSPACING": 0.5, "KGAMMA": True, "LREAL": False, "ISPIN": 1, "LNONCOLLINEAR": False,
              "MAGMOM": [1.0] * n_atoms, "NUPDOWN": -1.0, "LSORBIT": False, "LASPH": False,
              "LMETAGGA": False, "NELM": nelm, "NELMDL": -5, "NELMIN": 2, "NSW": nsw,
              "ISIF": 0 if ibrion == 0 else 2, "EDIFFG": 10 * ediff, "POTIM": 0.5, "ISYM": 2, "LORBIT": 0,
              "NEDOS": 301, "LWAVE": True, "LCHARG": True, "LDAU": False, "GGA": "--", "LHFCALC": False,
              "AEXX": 0.0, "HFSCREEN": 0.0, "ALDAX": 1.0, "AGGAX": 1.0, "ALDAC": 1.0, "AGGAC": 1.0,
              "LUSE_VDW": False, "LEPSILON": False, "LCHIMAG": False}
    params |= {k: v for k, v in incar.items() if k != "ENCUT"}
    params |= {"ENMAX": float(incar.get("ENCUT", 400.0)), "NBANDS": nbands, "NELECT": nelect, "IBRION": ibrion}

    zero, forces = np.zeros((n_atoms, 3)), np.zeros((n_atoms, 3))
    forces[:, 0] = (fx := 0.05 * (-1.0) ** np.arange(n_atoms)) - fx.mean()  # sums to zero
    relax = nsw > 0 and ibrion in (1, 2, 3)
    steps: list[Step] = [(energy + 0.01 * n_atoms, forces, np.eye(3))] * relax
    steps.append((energy, zero, np.zeros((3, 3))))
    scf = [2.0, 0.1, 0.002, 0.0][-max(1, min(4, nelm - 1)):]  # SCF energies, relative to the step's

    now = datetime.now()
    generator = {"program": "vasp", "version": VASP_VERSION, "platform": "LinuxIFC",
                 "subversion": "20Jul23 (build Jan 01 2024 00:00:00) complex  parallel",
                 "date": f"{now:%Y %m %d}", "time": f"{now:%H:%M:%S}"}
    xml = ['<?xml version="1.0" encoding="ISO-8859-1"?>', "<modeling>", " <generator>",
           *(f'  <i name="{k}" type="string">{v} </i>' for k, v in generator.items()), " </generator>",
           " <incar>", *_items(dict(incar)), " </incar>", " <kpoints>", *kpoint_lines, " </kpoints>",
           " <parameters>", *_items(params), " </parameters>", " <atominfo>",
           f"  <atoms>{n_atoms:8d} </atoms>", f"  <types>{len(symbols):8d} </types>",
           '  <array name="atoms" >', '   <dimension dim="1">ion</dimension>',
           '   <field type="string">element</field>', '   <field type="int">atomtype</field>', "   <set>",
           *(f"    <rc><c>{el:2s}</c><c>{t + 1:4d}</c></rc>"
             for t, (el, n) in enumerate(zip(poscar.site_symbols, natoms)) for _ in range(n)),
           "   </set>", "  </array>", '  <array name="atomtypes" >', '   <dimension dim="1">type</dimension>',
           '   <field type="int">atomspertype</field>', '   <field type="string">element</field>',
           "   <field>mass</field>", "   <field>valence</field>",
           '   <field type="string">pseudopotential</field>', "   <set>",
           *(f"    <rc><c>{n:4d}</c><c>{el:2s}</c><c>{float(Element(el).atomic_mass):16.8f}</c>"
             f"<c>{z:16.8f}</c><c>  {titel:38s}</c></rc>"
             for n, el, z, titel in zip(natoms, poscar.site_symbols, zvals, titels)),
           "   </set>", "  </array>", " </atominfo>", *_structure(structure, "initialpos")]
    for i, (e, f, stress) in enumerate(steps):
        xml.append(" <calculation>")
        for de in scf:
            xml += ["  <scstep>", '   <time name="dav">    0.01    0.01</time>',
                    '   <time name="total">    0.01    0.01</time>', *_energies(e + de, "   "), "  </scstep>"]
        xml += [*_structure(structure, indent="  "), *_varray("forces", f, "  "),
                *_varray("stress", stress, "  "), *_energies(e, "  "),
                '  <time name="totalsc">    0.04    0.04</time>']
        if i == len(steps) - 1:  # VASP writes eigenvalues and DOS at the end of the run only
            xml += _electronic(len(weights), nbands, n_occ, nspin)
        xml.append(" </calculation>")
    xml += [*_structure(structure, "finalpos"), "</modeling>"]
    (directory / "vasprun.xml").write_text("\n".join(xml) + "\n", encoding="iso-8859-1")

    _write_outcar(directory / "OUTCAR", structure, params, titels, zvals, natoms, steps, scf, len(weights), now)
    oszicar = ["       N       E                     dE             d eps       ncg     rms          rms(c)"]
    for i, (e, _, _) in enumerate(steps):
        oszicar += [f"DAV:{n + 1:4d}    {e + de: .12E}   {de - scf[n - 1] if n else e + de: .5E}   "
                    f"{-abs(de) - 1e-3: .5E}   {16 * nbands:4d}   {0.1 * abs(de) + 1e-3:.3E}"
                    for n, de in enumerate(scf)]
        mag = "  mag=     0.0000" if nspin == 2 else ""
        d_e = e - (steps[i - 1][0] if i else 0.0)
        oszicar.append(f"{i + 1:4d} F= {e: .8E} E0= {e: .8E}  d E ={d_e: .6E}{mag}")
    (directory / "OSZICAR").write_text("\n".join(oszicar) + "\n")
    Poscar(structure, comment=poscar.comment).write_file(directory / "CONTCAR")
    (directory / "WAVECAR").write_bytes(b"")  # what VASP leaves with LWAVE = .FALSE.
    if params["LCHARG"]:  # a uniform density of NELECT electrons (and no magnetization)
        density = {"total": np.full((4, 4, 4), nelect)} | ({"diff": np.zeros((4, 4, 4))} if nspin == 2 else {})
        Chgcar(Poscar(structure), density).write_file(directory / "CHGCAR")


def _write_outcar(path: Path, structure: Structure, params: dict[str, Any], titels: list[str],
                  zvals: list[float], natoms: list[int], steps: list[Step], scf: list[float], nkpts: int,
                  now: datetime) -> None:
    """An OUTCAR: header, POTCARs, dimensions, energies, stress and forces per step, charges, timing."""
    nspin, nelect, n_atoms = int(params["ISPIN"]), float(params["NELECT"]), len(structure)
    out = [f" vasp.{VASP_VERSION} 20Jul23 (build Jan 01 2024 00:00:00) complex", "",
           f" executed on             LinuxIFC date {now:%Y.%m.%d  %H:%M:%S}",
           " running    1 mpi-ranks, with    1 threads/rank, on    1 nodes",
           " distrk:  each k-point on    1 cores,    1 groups", "", LINE, "", " INCAR:",
           *(f" POTCAR:    {t}" for t in titels + titels), "", " Dimension of arrays:",
           f"   k-points           NKPTS = {nkpts:6d}   k-points in BZ     NKDIM = {nkpts:6d}"
           f"   number of bands    NBANDS= {int(params['NBANDS']):6d}",
           f"   number of dos      NEDOS = {int(params['NEDOS']):6d}   number of ions     NIONS = {n_atoms:6d}",
           "   total plane-waves  NPLWV =   13824", "", " Electronic Relaxation 1",
           f"   ENCUT  =  {float(params['ENMAX']):6.1f} eV",
           f"   ISPIN  = {nspin:6d}    spin polarized calculation?",
           f"   LNONCOLLINEAR = {'T' if params['LNONCOLLINEAR'] else 'F':>6s} non collinear calculations",
           f"   NELECT = {nelect:12.4f}    total number of electrons", "", " Ionic relaxation",
           f"   NSW    = {int(params['NSW']):6d}    number of steps for IOM",
           f"   IBRION = {int(params['IBRION']):6d}    ionic relax: 0-MD 1-quasi-New 2-CG",
           f"   ISIF   = {int(params['ISIF']):6d}    stress and relaxation", ""]
    mag = f"{0.0:16.7f}" if nspin == 2 else ""
    for i, (e, forces, stress) in enumerate(steps):
        for n, de in enumerate(scf):
            out += [f"{'-' * 39} Iteration {i + 1:6d}({n + 1:4d})  {'-' * 39}", "",
                    f" number of electron {nelect:15.7f} magnetization{mag}", "",
                    f"  free energy    TOTEN  = {e + de:20.8f} eV", "",
                    f"  energy without entropy = {e + de:17.8f}  energy(sigma->0) = {e + de:17.8f}",
                    "", LINE, ""]
        kb = [stress[0, 0], stress[1, 1], stress[2, 2], stress[0, 1], stress[1, 2], stress[2, 0]]
        out += [f" E-fermi : {EFERMI:8.4f}     XC(G=0):  -1.0000     alpha+bet : -1.0000", "",
                "  FORCE on cell =-STRESS in cart. coord.  units (eV):",
                "  Direction" + "".join(f"{c:>12s}" for c in ("XX", "YY", "ZZ", "XY", "YZ", "ZX")),
                "  " + "-" * 86,
                f"  Total   {_vec(np.array(kb) * structure.volume / 1602.1766, '12.5f')}",
                f"  in kB   {_vec(kb, '12.5f')}",
                f"  external pressure = {np.trace(stress) / 3:11.2f} kB  Pullay stress =        0.00 kB", "",
                " POSITION                                       TOTAL-FORCE (eV/Angst)", " " + "-" * 83,
                *(f" {_vec(r, '13.5f')}    {_vec(f, '14.6f')}" for r, f in zip(structure.cart_coords, forces)),
                " " + "-" * 83, f"    total drift: {0.0:31.6f}{0.0:14.6f}{0.0:14.6f}", "", LINE, "",
                "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)", "  " + "-" * 51,
                f"  free  energy   TOTEN  = {e:20.8f} eV", "",
                f"  energy  without entropy= {e:17.8f}  energy(sigma->0) = {e:17.8f}", "", LINE, ""]
    if int(params["LORBIT"]) >= 10:  # site-projected charges (and moments), as VASP prints them
        tables = [("total charge", [(0.3 * z, 0.6 * z, 0.0) for z, n in zip(zvals, natoms) for _ in range(n)])]
        tables += [("magnetization (x)", [(0.0, 0.0, 0.0)] * n_atoms)] if nspin == 2 else []
        for title, rows in tables:
            out += [f" {title}", "", "# of ion       s       p       d       tot", "-" * 42,
                    *(f"{j + 1:5d}{s:12.3f}{_vec([p, d, s + p + d], '8.3f')}"
                      for j, (s, p, d) in enumerate(rows)),
                    "-" * 50, f"tot  {sum(r[0] for r in rows):12.3f}{_vec(np.sum(rows, 0)[1:], '8.3f')}"
                    f"{sum(map(sum, rows)):8.3f}", "", ""]
    timing = {"Total CPU time used (sec)": "1.000", "User time (sec)": "0.900", "System time (sec)": "0.100",
              "Elapsed time (sec)": "1.200", "": "", "Maximum memory used (kb)": "100000.",
              "Average memory used (kb)": "0.", " ": "", "Minor page faults": "1000", "Major page faults": "0",
              "Voluntary context switches": "100"}
    out += [" General timing and accounting informations for this job:", " " + "=" * 56, "",
            *(f"{label:>43s}: {value:>12s}" if value else "" for label, value in timing.items())]
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":  # self-check: NaCl relax and static from MP inputs, read by pymatgen and emmet
    import tempfile

    from emmet.core.tasks import TaskDoc
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility as MP2020
    from pymatgen.io.vasp.sets import MPRelaxSet, MPStaticSet

    fcc = [[0, 2.845, 2.845], [2.845, 0, 2.845], [2.845, 2.845, 0]]
    nacl = Structure(fcc, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for input_set, task_type in ((MPRelaxSet, "Structure Optimization"), (MPStaticSet, "Static")):
        with tempfile.TemporaryDirectory() as tmp:
            input_set(nacl).write_input(tmp, potcar_spec=True)
            write_fake_vasp_outputs(Path(tmp), lambda s: -3.4)
            doc = TaskDoc.from_directory(tmp)
            entry = MP2020().process_entry(doc.entry, on_error="raise")
            assert doc.state == "successful" and doc.run_type == "GGA" and doc.task_type == task_type, doc
            assert abs(doc.output.energy + 6.8) < 1e-6 and entry is not None and entry.correction < 0, entry
            print(task_type, len(doc.calcs_reversed[0].output.ionic_steps), doc.output.energy, entry.correction)

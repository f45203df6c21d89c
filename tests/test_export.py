"""``xtalloop export`` and ``xtalloop db stats`` on a store filled by a real (EMT) run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read
from ase.units import GPa
from pymatgen.core import Structure

from xtalloop.config import RunConfig
from xtalloop.runner import execute
from xtalloop.store.results import open_results


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """An embedded store holding one EMT run over Cu and CuAu."""
    from conftest import EmtRelaxAsDftMaker

    tmp = tmp_path_factory.mktemp("export")
    config = RunConfig.model_validate({
        "name": "emt-export", "compositions": ["Cu", "CuAu"],
        "generate": {"seed": 5, "max_atoms": 4, "sources": [{"n": 4}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 100},
        "store": {"path": str(tmp / "store")}, "output_dir": str(tmp / "runs"),
    })
    result = execute(config, progress=False, run_id="export-run",
                     relax_maker=EmtRelaxAsDftMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    assert result.validated, result.failed_jobs
    return config


def xtalloop(*args, store) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtalloop.cli", *args,
                           "--store", str(store.resolved_path)], capture_output=True, text=True)


def test_export_cif_extxyz_json_with_provenance(filled_store, tmp_path):
    with open_results(filled_store.store) as db:
        stored = {d["uuid"]: d for d in db.find_validated()}
    assert {d["formula"] for d in stored.values()} == {"Cu", "CuAu"}

    out = xtalloop("export", str(tmp_path / "cifs"), store=filled_store.store)
    assert out.returncode == 0, out.stderr
    assert f"exported {len(stored)} structures" in out.stdout
    cifs = sorted((tmp_path / "cifs").glob("*.cif"))
    assert len(cifs) == len(stored)
    text = cifs[0].read_text()
    assert "# generator: random_symmetric" in text and "# run: export-run" in text
    uuid = next(line.split(": ")[1] for line in text.splitlines() if line.startswith("# uuid"))
    structure = Structure.from_file(cifs[0])
    assert structure.composition.reduced_formula == stored[uuid]["formula"]

    out = xtalloop("export", str(tmp_path / "all.extxyz"), "--format", "extxyz",
                   store=filled_store.store)
    assert out.returncode == 0, out.stderr
    frames = read(tmp_path / "all.extxyz", index=":")
    assert len(frames) == len(stored)
    for atoms in frames:
        doc = stored[atoms.info["uuid"]]
        assert atoms.get_potential_energy() == pytest.approx(doc["energy"])
        assert np.allclose(atoms.get_forces(), doc["forces"])
        assert atoms.info["dft_settings_key"] == "emt-test"
        assert atoms.info["generator"] == "random_symmetric"
        assert "generator_seed" in atoms.info and "energy_model" in atoms.info
        # stored in kBar with VASP's sign (compression positive); ASE: eV/Å³, tension positive
        assert np.allclose(atoms.get_stress(voigt=False),
                           -np.asarray(doc["stress_kbar"]) / 10 * GPa)

    out = xtalloop("export", str(tmp_path / "cu.json"), "--format", "json", "--formula", "Cu",
                   store=filled_store.store)
    assert out.returncode == 0, out.stderr
    docs = json.loads((tmp_path / "cu.json").read_text())
    assert docs and all(d["formula"] == "Cu" for d in docs)
    assert "trajectory" not in docs[0] and docs[0]["dft"]["settings_key"] == "emt-test"


def test_export_bad_filters_are_one_line(filled_store, tmp_path):
    out = xtalloop("export", str(tmp_path / "x"), "--formula", "Xx2", store=filled_store.store)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Xx" in out.stderr
    out = xtalloop("export", str(tmp_path / "x"), "--formula", "Ag", store=filled_store.store)
    assert out.returncode == 1 and "no validated structures match" in out.stderr


def test_db_stats_counts(filled_store):
    out = xtalloop("db", "stats", "--format", "json", store=filled_store.store)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    with open_results(filled_store.store) as db:
        n = len(db.find_validated())
    assert counts["validated"] == n
    assert counts["by_chemsys"] == {"Au-Cu": 1, "Cu": 1}
    assert counts["by_arity"] == {"1": 1, "2": 1}
    assert counts["by_run"] == {"export-run": n}
    assert counts["references"] >= 2  # Cu and Au
    assert counts["runs_by_status"] == {"completed": 1}

    table = xtalloop("db", "stats", store=filled_store.store)
    assert table.returncode == 0
    assert "binary" in table.stdout and "Au-Cu" in table.stdout and "export-run" in table.stdout


def test_db_stats_without_a_store_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "xtalloop.cli", "db", "stats", "--store",
                          str(tmp_path / "nothing")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: no xtalloop store at")


def test_export_never_overwrites_without_force_and_chemsys_reads_any_spelling(
        filled_store, tmp_path):
    from typer.testing import CliRunner

    from xtalloop.cli import app

    store = ["--store", str(filled_store.store.resolved_path)]

    def cli(*args):
        return CliRunner().invoke(app, [*args, *store])

    for spelling in ("CuAu", "Au-Cu", "Cu Au", "cu-au"):
        out = cli("query", "--chemsys", spelling, "--format", "json")
        assert out.exit_code == 0, (spelling, out.stderr)
        assert {d["chemsys"] for d in json.loads(out.stdout)} == {"Au-Cu"}

    target = tmp_path / "new" / "folder" / "all.json"  # missing folders are made
    assert cli("export", str(target), "--format", "json").exit_code == 0
    first = target.read_text()
    again = cli("export", str(target), "--format", "json", "--formula", "Cu")
    assert again.exit_code == 2 and "exists; pass --force" in again.stderr
    assert target.read_text() == first
    forced = cli("export", str(target), "--format", "json", "--formula", "Cu", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert {d["formula"] for d in json.loads(target.read_text())} == {"Cu"}
    assert [p.name for p in target.parent.iterdir()] == ["all.json"]  # no temporary file left

    cifs = tmp_path / "cifs"
    assert cli("export", str(cifs)).exit_code == 0
    names = sorted(p.name for p in cifs.iterdir())
    again = cli("export", str(cifs))
    assert again.exit_code == 2 and "exist; pass --force to overwrite them" in again.stderr
    assert cli("export", str(cifs), "--force").exit_code == 0
    assert sorted(p.name for p in cifs.iterdir()) == names

    for _ in range(2):  # query -o writes (or rewrites) the same CIFs
        out = cli("query", "--format", "cif", "-o", str(tmp_path / "q"))
        assert out.exit_code == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == names

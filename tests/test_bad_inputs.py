"""Bad inputs a new user tries (issue 17): one ``error:`` line, exit 2, nothing left behind.

Each row is a config file given to ``xtalloop run`` or the arguments of a
command, the message the user must see, and what must not appear in the
output (a password). Every input is refused before any work starts, so the
commands run in-process and the whole table takes seconds; the test also
checks that the folder the command ran in is exactly as it was before (no
``runs/``, ``report-<id>/``, ``samples/``, half-written or overwritten file).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xtalloop.cli import app

SECRET = "S3cr"  # a fragment of every password below: it must never be printed


@dataclass
class Case:
    id: str
    args: list[str]
    message: str
    config: str | None = None  # written to bad.yaml and given to `xtalloop run`


TRIPWIRE = "dft: {code: vasp, vasp: {vasp_cmd: xtalloop-tripwire}}\n"
"""Appended to each config: should its problem pass the load, `run` stops at this instead of
starting work (and the row fails on its message rather than hanging)."""


def run_config(config: str, message: str, id: str) -> Case:
    return Case(id, ["run", "bad.yaml"], message, config + TRIPWIRE)


CONFIGS = [
    run_config("compositions: [NaCl]\nstore: {backend: mongodb, "
               "uri: 'mongodb://xtal:S3cr?t@db.example/xtalloop'}\n",
               "store.uri: holds a password", "uri-password-with-question-mark"),
    run_config("compositions: [NaCl]\nstore: {backend: mongodb, "
               "uri: 'mongodb://xtal:S3cr/t@db.example/xtalloop'}\n",
               "store.uri: holds a password", "uri-password-with-slash"),
    run_config("compositions: [NaCl]\nstore: {backend: mongodb, "
               "uri: 'mongodb://xtal:S3cr3t/xtalloop'}\n",
               "store.uri: host list", "uri-password-without-host"),
    run_config("compositions: [NaCl]\nstore: {backend: mongodb, "
               "uri: 'mongodb://xtal@db.example/x?tlsCertificateKeyFilePassword=S3cr3t'}\n",
               "tlsCertificateKeyFilePassword holds a password", "uri-password-option"),
    run_config("compositions: [D2O]\ncharge_balance: 'off'\n",
               "compositions[0]: 'D' (deuterium)", "isotope-D"),
    run_config("compositions: [NaCl]\ncharge_balance: 'off'\ncompositions: [KBr]\n",
               "key 'compositions' is given twice (lines 1 and 3)", "duplicate-key"),
    run_config("compositions: [NaCl]\nprefilter:\n  top_k: 2\n  top_k: 5\n",
               "key 'top_k' is given twice (lines 3 and 4)", "duplicate-nested-key"),
    run_config("compositions: [NaCl]\ngenerate: {sources: [{formula_units: [0]}]}\n",
               "generate.sources[0].formula_units: formula units per cell are 1 or more",
               "formula-units-zero"),
    run_config("compositions: [NaCl]\ngenerate: {sources: [{formula_units: [1, -2]}]}\n",
               "generate.sources[0].formula_units: formula units per cell are 1 or more, not -2",
               "formula-units-negative"),
    run_config("compositions: [NaCl]\nprefilter: {device: tpu}\n",
               "prefilter.device: unknown device 'tpu': use cpu, cuda, cuda:N or mps",
               "prefilter-device"),
    run_config("compositions: [NaCl]\ngenerate: {sources: [{kind: prototype_substitution, "
               "reference_csv: missing.csv}]}\n",
               "generate.sources[0].reference_csv: structure table 'missing.csv' not found",
               "reference-csv-missing"),
    run_config("compositions: [NaCl]\ngenerate: {sources: [{kind: prototype_substitution, "
               "reference_csv: nocif.csv}]}\n",
               "reference_csv: structure table nocif.csv has no 'cif' column",
               "reference-csv-without-cif"),
    run_config("compositions: [NaCl]\ngenerate: {sources: [{kind: prototype_substitution, "
               "reference_csv: broken.csv.gz}]}\n",
               "reference_csv: cannot read structure table broken.csv.gz", "reference-csv-corrupt"),
    run_config("compositions: [NaCl]\ngenerate: {sources: [{n: 100000000}]}\n",
               "generate.sources[0].n: at most 10000 candidates", "n-too-large"),
]

COMMANDS = [
    Case("query-cif-into-a-file", ["query", "--format", "cif", "-o", "a-file.txt"],
         "--output a-file.txt is a file, not a folder"),
    Case("query-output-without-cif", ["query", "--format", "json", "-o", "cifs"],
         "--output: only with --format cif"),
    Case("query-empty-chemsys", ["query", "--chemsys", ""], "--chemsys is empty"),
    Case("query-empty-formula", ["query", "--formula", ""], "--formula is empty"),
    Case("query-chemsys-with-counts", ["query", "--chemsys", "Cu2Au"],
         "--chemsys: cannot read 'Cu2Au'"),
    Case("query-isotope", ["query", "--formula", "D2O"], "'D' (deuterium)"),
    Case("query-nan-hull", ["query", "--max-e-above-hull", "nan"],
         "--max-e-above-hull: not a number"),
    Case("query-password-env-without-uri", ["query", "--password-env", "XTAL_PW"],
         "--password-env: only with --uri"),
    Case("query-password-in-uri", ["query", "--uri", "mongodb://xtal:S3cr?t@db.example/x"],
         "--uri: holds a password"),
    Case("export-json-under-a-file", ["export", "a-file.txt/x.json", "--format", "json"],
         "a-file.txt is a file, not a folder"),
    Case("export-cif-into-a-file", ["export", "a-file.txt"], "OUT a-file.txt is a file"),
    Case("export-json-onto-a-folder", ["export", "a-folder", "--format", "json"],
         "OUT a-folder is a folder; give a file name"),
    Case("export-json-into-proc", ["export", "/proc/x.json", "--format", "json"],
         "cannot write into /proc"),
    Case("export-json-onto-a-file", ["export", "a-file.txt", "--format", "extxyz"],
         "OUT a-file.txt exists; pass --force to overwrite it"),
    Case("export-password-env-without-uri", ["export", "x.json", "--format", "json",
                                             "--password-env", "XTAL_PW"],
         "--password-env: only with --uri"),
    Case("sample-into-a-file", ["generator", "sample", "--checkpoint", "missing.pt",
                                "--composition", "NaCl", "--out", "a-file.txt"],
         "--out a-file.txt is a file, not a folder"),
    Case("sample-too-many", ["generator", "sample", "--checkpoint", "missing.pt",
                             "--composition", "NaCl", "--n", "100000000"],
         "--n: at most 10000 structures"),
    Case("finetune-onto-a-folder", ["generator", "finetune", "--checkpoint", "missing.pt",
                                    "--data", "missing.csv", "--out", "a-folder"],
         "--out a-folder is a folder"),
    Case("report-corrupt-run-folder", ["report", "runs-corrupt/run-1"],
         "config.json: not valid JSON"),
    Case("report-unknown-run", ["report", "no-such-run", "--store", "store"],
         "no run 'no-such-run' in the store"),
    Case("report-into-a-file", ["report", "no-such-run", "--store", "store", "--out",
                                "a-file.txt"], "--out a-file.txt is a file, not a folder"),
    Case("sample-isotope", ["generator", "sample", "--checkpoint", "missing.pt",
                            "--composition", "T2O"], "'T' (tritium)"),
]


def _prepare(folder: Path) -> None:
    """The files the rows point at: a file, a folder, damaged tables and run folder, a store."""
    from xtalloop.config import StoreConfig
    from xtalloop.store.results import open_results

    (folder / "a-file.txt").write_text("keep me\n")
    (folder / "a-folder").mkdir()
    (folder / "a-folder" / "keep.txt").write_text("keep me\n")
    (folder / "nocif.csv").write_text("material_id,formula\nmp-1,NaCl\n")
    (folder / "broken.csv.gz").write_bytes(gzip.compress(b"cif\n" * 100)[:20])
    (folder / "runs-corrupt" / "run-1").mkdir(parents=True)
    (folder / "runs-corrupt" / "run-1" / "config.json").write_text('{"store": {"path": ')
    with open_results(StoreConfig(path=str(folder / "store"))) as db:
        assert db.get_run("no-such-run") is None  # creates an empty store


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs")
    _prepare(folder)
    return folder


@pytest.mark.parametrize("case", CONFIGS + COMMANDS, ids=lambda c: c.id)
def test_bad_input_is_one_line_and_leaves_nothing(case: Case, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("XTAL_PW", "S3cr3t-password")
    if case.config is not None:
        (workdir / "bad.yaml").write_text(case.config)
    before = _snapshot(workdir)
    result = CliRunner().invoke(app, case.args)
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert "Traceback" not in output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert case.message in lines[0]
    assert SECRET not in output
    assert _snapshot(workdir) == before  # no stray folder, no file written or changed

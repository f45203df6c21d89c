"""The command line as a user meets it: one error line, a non-zero exit, no traceback."""

import subprocess
import sys

import pytest


def xtalloop(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "xtalloop.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("compositions: [NaXx]\n", "compositions[0]: unknown element 'Xx'"),
        ("compositions: [NaCl2]\n", "no charge-balanced reading"),
        ("compositions: [Na0Cl]\n", "must be positive"),
        ("compositions: [Li3PS4]\ngenerate: {max_atoms: 6}\n", "more than the configured maximum"),
        ("compositions: [NaCl]\nprefilter: {top_kk: 2}\n", "prefilter.top_kk: unknown key"),
        ("compositions: [NaCl\n", "not valid YAML"),
        ("compositions: [NaCl]\ndft: {code: vasp, vasp: {vasp_cmd: no-such-vasp}}\n",
         "VASP command 'no-such-vasp' not found"),
    ],
)
def test_run_rejects_bad_input_in_one_line(tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    out = xtalloop("run", str(path), cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stderr.startswith("error: ")
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "runs").exists()  # nothing started


def test_run_missing_config(tmp_path):
    out = xtalloop("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert out.returncode == 2 and "config file not found" in out.stderr


def test_query_without_a_store(tmp_path):
    out = xtalloop("query", "--store", str(tmp_path / "none"), cwd=tmp_path)
    assert out.returncode == 2 and "no xtalloop store at" in out.stderr
    assert "Traceback" not in out.stderr


def test_query_bad_formula(tmp_path):
    out = xtalloop("query", "--formula", "Abc", cwd=tmp_path)
    assert out.returncode == 2 and "error: " in out.stderr and "Traceback" not in out.stderr


def test_help_lists_the_commands():
    out = xtalloop("--help")
    assert out.returncode == 0
    assert "run" in out.stdout and "query" in out.stdout

"""Run configurations: the shipped ones load; every mistake names its key in one line."""

from pathlib import Path

import pytest

from xtalloop.config import RunConfig, load_config
from xtalloop.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_quickstart_config_loads():
    config = load_config(CONFIGS / "quickstart.yaml")
    assert isinstance(config, RunConfig)
    assert [c.reduced_formula for c in config.parsed_compositions()] == [
        "NaCl", "MgO", "Si", "GaAs"]
    assert config.generate.sources[0].kind == "random_symmetric"



def test_cluster_config_loads_with_a_mongodb_store_and_fireworks():
    config = load_config(CONFIGS / "cluster.yaml")
    assert config.store.backend == "mongodb" and config.store.password_env
    assert config.submit.engine == "fireworks"


def test_cluster_vasp_config_builds_the_vasp_maker():
    from xtalloop.dft.factory import dft_maker
    from xtalloop.dft.vasp import VaspValidationMaker

    config = load_config(CONFIGS / "cluster-vasp.yaml")
    maker = dft_maker(config.dft)
    assert isinstance(maker, VaspValidationMaker)
    assert maker.vasp_cmd == "srun vasp_std" and maker.incar_updates == {"NCORE": 8}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("compositions: [NaCl]\nprefilter: {topk: 3}\n", "prefilter.topk: unknown key"),
        ("compositions: [NaCl]\nprefilter: {top_k: 0}\n", "prefilter.top_k: Input should be greater"),
        ("compositions: [NaCl]\ndft: {code: abinit}\n", "dft.code: Input should be 'gpaw' or 'vasp'"),
        ("compositions: [NaCl]\nsubmit: {engine: slurm}\n",
         "submit.engine: Input should be 'fireworks' or 'jobflow-remote'"),
        ("compositions: [NaCl, Qq2]\n", "compositions[1]: unknown element 'Qq'"),
        ("compositions: [NaCl2]\n", "compositions[0]: NaCl2 has no charge-balanced reading"),
        ("compositions: [Na0Cl]\n", "compositions[0]: count of Na"),
        ("compositions: [Li3PS4]\ngenerate: {max_atoms: 4}\n",
         "compositions[0]: Li3PS4 has 8 atoms per formula unit"),
        ("compositions: [NaCl]\ngenerate: {sources: [{kind: magic}]}\n", "generate.sources[0]"),
        ("compositions: [NaCl]\ngenerate: {sources: [{n: 3, colour: red}]}\n",
         "generate.sources[0].colour: unknown key"),
        ("compositions: [NaCl]\nprefilter: {model: /nowhere/m.model}\n", "does not exist"),
        ("name: x\n", "compositions: required key is missing"),
        ("compositions: [NaCl\n", "not valid YAML"),
        ("- NaCl\n", "expected a mapping"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_defaults_fill_everything_but_the_compositions(tmp_path):
    config = load_config(write(tmp_path, "compositions: [GaN]\n"))
    assert config.prefilter.model == "chgnet"
    assert config.dft.code == "gpaw"
    assert config.store.backend == "embedded"

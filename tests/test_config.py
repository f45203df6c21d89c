"""Run configurations: the shipped ones load; every mistake names its key in one line."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from xtalloop.config import RunConfig, StoreConfig, load_config
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
        ("compositions: [NaCl]\ndft: {code: abinit}\n", "dft.code: Input should be 'gpaw', 'vasp' or 'mlip'"),
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
        ("compositions: [NaCl]\nprefilter: {model: /nowhere/m.mace.json}\n", "does not exist"),
        ("compositions: [NaCl]\nprefilter: {model: /nowhere/m.model}\n",
         "a pickled MACE model, which can run code"),
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


def test_a_fine_tuned_chgnet_is_a_model_setting(tmp_path):
    """What `learn` writes (NAME.chgnet.json, or its folder) is what a prefilter may name."""
    folder = tmp_path / "chgnet-1"
    folder.mkdir()
    (folder / "chgnet-1.chgnet.json").write_text("{}")
    for spec in (folder, folder / "chgnet-1.chgnet.json"):
        text = f"compositions: [GaN]\nprefilter: {{model: {spec}}}\n"
        config = load_config(write(tmp_path, text))
        assert config.prefilter.model == str(spec)
    with pytest.raises(ConfigError, match="fine-tuned CHGNet .* does not exist"):
        load_config(write(tmp_path, "compositions: [GaN]\nprefilter: {model: /no/x.chgnet.json}\n"))


def test_yaml_booleans_and_accepted_devices_and_a_good_reference_table(tmp_path):
    """What the bad-input checks must still accept (tests/test_bad_inputs.py has the refusals)."""
    (tmp_path / "ref.csv").write_text("material_id,cif\nmp-1,data_x\n")
    config = load_config(write(tmp_path, (
        "compositions: [NaCl2]\n"
        "charge_balance: off\n"  # YAML reads an unquoted off as false
        "prefilter: {device: 'cuda:1'}\n"
        "learn: {energy_model: {device: mps}, generator: {device: auto}}\n"
        f"generate: {{sources: [{{n: 10000, formula_units: [2]}}, "
        f"{{kind: prototype_substitution, reference_csv: {tmp_path / 'ref.csv'}}}]}}\n")))
    assert config.charge_balance == "off"
    assert config.prefilter.device == "cuda:1"
    assert config.generate.sources[0].n == 10000
    assert load_config(write(tmp_path, "compositions: [NaCl]\ncharge_balance: yes\n")
                       ).charge_balance == "strict"
    merged = load_config(write(tmp_path, "compositions: [NaCl]\nprefilter:\n"
                               "  <<: {top_k: 2, steps: 5}\n  top_k: 3\n"))  # a merge key overrides
    assert (merged.prefilter.top_k, merged.prefilter.steps) == (3, 5)


@pytest.mark.parametrize(
    ("uri", "hosts", "redacted", "refused"),
    [
        ("mongodb://db1:27017,db2/xtalloop?authSource=admin", "db1:27017,db2",
         "mongodb://db1:27017,db2/xtalloop?authSource=admin", None),
        ("mongodb://xtal@db1/xtalloop", "db1", "mongodb://xtal@db1/xtalloop", None),
        ("mongodb+srv://xtal%40lab@cluster0.example.net", "cluster0.example.net",
         "mongodb+srv://xtal%40lab@cluster0.example.net", None),
        ("mongodb://[::1]:27017/x", "[::1]:27017", "mongodb://[::1]:27017/x", None),
        ("mongodb://xtal:S3cret@db1/x", "db1", "mongodb://xtal:***@db1/x", "holds a password"),
        ("mongodb://xtal:S3cr?t@db1/x", "db1", "mongodb://xtal:***@db1/x", "holds a password"),
        ("mongodb://xtal:S3cr/t@db1:27017/x", "db1:27017", "mongodb://xtal:***@db1:27017/x",
         "holds a password"),
        ("mongodb://xtal:S3@cr@db1", "db1", "mongodb://xtal:***@db1", "holds a password"),
        ("mongodb://xt/S3cr@db1", "db1", "mongodb://***@db1", "percent-encode"),
        ("mongodb://xtal:S3cret/x", "xtal:***", "mongodb://xtal:***/x", "numeric port"),
        ("mongodb://db1/x?appName=me@laptop", "laptop", "mongodb://***@laptop",
         "percent-encode"),
        ("mongodb://xtal@db1/x?tlsCertificateKeyFilePassword=S3cr", "db1",
         "mongodb://xtal@db1/x?tlsCertificateKeyFilePassword=***", "holds a password"),
    ],
)
def test_uri_parts_and_password_check(uri, hosts, redacted, refused):
    """The user part ends at the last '@', so no piece of a password passes for a host."""
    from xtalloop.uri import password_problem, redact_uri, uri_hosts

    assert uri_hosts(uri) == hosts
    assert redact_uri(uri) == redacted
    problem = password_problem(uri)
    assert (problem is None) if refused is None else (refused in problem)
    assert "S3c" not in (problem or "")
    if refused is not None:
        with pytest.raises(ValidationError) as info:
            StoreConfig(backend="mongodb", uri=uri)
        assert "S3c" not in str(info.value)
        dumped = StoreConfig.model_construct(backend="mongodb", uri=uri).redacted_dump()
        assert "S3c" not in dumped["uri"] and "S3c" not in uri_hosts(dumped["uri"])

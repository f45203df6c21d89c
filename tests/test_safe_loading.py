"""A crafted pickle, fed through every way a model file reaches xtalloop, never runs.

The malicious object's ``__reduce__`` creates a marker file when it is
unpickled (a real attack would run a shell command). Every entry point must
refuse the file in one clear line and leave no marker: diffusion checkpoints
(the loader, the ``generator sample``/``finetune`` and ``benchmark csp``
commands, a run config's diffusion source, the loop's generator fine-tuning)
and energy models (a MACE ``.model`` path, refused even when trusted, the
native format's weights and description, fine-tuning parents, and registry models whose stored files an
attacker with write access to the store replaced).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from xtalloop.cli import app
from xtalloop.config import load_config
from xtalloop.errors import ConfigError, XtalloopError
from xtalloop.generators.diffusion.checkpoint import (
    FORMAT,
    CheckpointError,
    check_checkpoint,
    load_model,
    read_checkpoint,
)
from xtalloop.learn.registry import MODELS, ModelRegistry, resolve_model
from xtalloop.models.energy_model import load_energy_model
from xtalloop.models.trust import UntrustedModelError
from xtalloop.store.files import FileStore
from xtalloop.store.results import open_results


class Boom:
    """Unpickling this creates ``marker``: code chosen by the file's author runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def evil(tmp_path, marker) -> dict[str, Path]:
    """Malicious files shaped like each kind of model file."""
    folder = tmp_path / "evil"
    folder.mkdir()
    checkpoint = folder / "generator.pt"
    torch.save({"format": FORMAT, "config": {}, "model_state": {}, "boom": Boom(marker)},
               checkpoint)
    raw = folder / "raw.pt"  # a bare pickle, torch's legacy format
    raw.write_bytes(pickle.dumps({"format": FORMAT, "boom": Boom(marker)}))
    model = folder / "mace.model"
    torch.save({"model": Boom(marker)}, model)
    weights = folder / "member_0.mace.pt"
    torch.save({"w": Boom(marker)}, weights)
    return {"checkpoint": checkpoint, "raw": raw, "model": model, "weights": weights}


def native_description(weights: Path, **kwargs) -> Path:
    """A description an attacker would write to point at ``weights``."""
    path = weights.with_name(weights.name.removesuffix(".mace.pt") + ".mace.json")
    path.write_text(json.dumps({
        "format": "xtalloop-mace/1", "class": "ScaleShiftMACE", "dtype": "float64",
        "weights": weights.name, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "kwargs": kwargs}))
    return path


def one_line(error: BaseException | str, *names: object) -> str:
    text = str(error)
    assert "\n" not in text.strip() and "Traceback" not in text, text
    for name in names:
        assert str(name) in text, text
    return text


def test_the_crafted_files_do_run_code_when_unpickled(tmp_path, evil, marker):
    """The control: without the guards, loading these files runs the attacker's code."""
    for path in (evil["checkpoint"], evil["model"], evil["weights"]):
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()
    pickle.loads(evil["raw"].read_bytes())
    assert marker.exists()


def test_diffusion_checkpoint_loaders_refuse(evil, marker):
    for path in (evil["checkpoint"], evil["raw"]):
        for load in (load_model, read_checkpoint, check_checkpoint):
            with pytest.raises(CheckpointError) as err:
                load(path)
            assert one_line(err.value, path).startswith(f"{path}: cannot read checkpoint")
    assert not marker.exists()


def test_diffusion_cli_commands_refuse(evil, marker, tmp_path):
    import pandas as pd
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    pt = str(evil["checkpoint"])
    csv = tmp_path / "data.csv"  # a valid table: the benchmark reads it before the checkpoint
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    pd.DataFrame([{"material_id": "t-1", "cif": str(CifWriter(nacl)), "nsites": 2}]).to_csv(
        csv, index=False)
    commands = [
        ["generator", "sample", "--checkpoint", pt, "--composition", "NaCl", "--n", "1",
         "--out", str(tmp_path / "samples")],
        ["generator", "finetune", "--checkpoint", pt, "--data", str(csv),
         "--out", str(tmp_path / "tuned.pt"), "--no-progress"],
        ["benchmark", "csp", "--data", str(csv), "--generator", "diffusion",
         "--checkpoint", pt, "--out", str(tmp_path / "bench"), "--no-progress"],
    ]
    for argv in commands:
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        line = one_line(result.stderr.strip(), pt)
        assert line.startswith(f"error: {pt}: cannot read checkpoint"), line
    assert not marker.exists()
    assert not (tmp_path / "tuned.pt").exists()


def test_config_with_a_diffusion_source_refuses_at_load(evil, marker, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "name": "evil", "compositions": ["NaCl"],
        "generate": {"sources": [{"kind": "diffusion", "checkpoint": str(evil["checkpoint"])}]},
        "store": {"path": str(tmp_path / "store")}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = one_line(err.value, path, evil["checkpoint"])
    assert "generate.sources[0].checkpoint" in text and "not plain data" in text
    missing = path.read_text().replace(str(evil["checkpoint"]), str(tmp_path / "none.pt"))
    path.write_text(missing)
    with pytest.raises(ConfigError, match="none.pt: checkpoint not found"):
        load_config(path)
    # a pickled MACE prefilter model is refused at load too, trusted or not
    path.write_text(yaml.safe_dump({
        "name": "evil", "compositions": ["NaCl"], "prefilter": {"model": str(evil["model"])},
        "store": {"path": str(tmp_path / "store")}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "prefilter.model" in one_line(err.value, evil["model"], "a pickled MACE model")
    assert not marker.exists()


def test_loop_generator_fine_tuning_refuses(evil, marker, store_config):
    from xtalloop.workflows.learn import GeneratorTrainingMaker

    maker = GeneratorTrainingMaker(store=store_config.model_dump(),
                                   checkpoint=str(evil["checkpoint"]), settings_key="k")
    with pytest.raises(CheckpointError) as err:
        GeneratorTrainingMaker.make.original(maker)  # the job's body, as a worker runs it
    one_line(err.value, evil["checkpoint"])
    assert not marker.exists()


def test_energy_model_files_refuse(evil, marker, tmp_path):
    from xtalloop.learn.mace_training import MaceTrainer

    from xtalloop.models.trust import add_files

    add_files([evil["model"]])  # even a file the user vouched for is never unpickled
    with pytest.raises(XtalloopError) as err:
        load_energy_model(str(evil["model"]))
    one_line(err.value, evil["model"], "a pickled MACE model", "native format")
    folder = evil["model"].parent
    with pytest.raises(XtalloopError, match="a pickled MACE model"):
        load_energy_model(str(folder))  # a folder of .model files
    # the native format: weights are read weights-only, even for a trusted file
    description = native_description(evil["weights"])
    with pytest.raises(XtalloopError, match="not plain tensors") as err:
        load_energy_model(str(description))
    one_line(err.value, evil["weights"])
    # ... and a description names classes and functions only from mace's own tables
    plain = tmp_path / "plain.mace.pt"
    torch.save({}, plain)
    with pytest.raises(XtalloopError, match="gate 'posix.system' is not one of mace's") as err:
        load_energy_model(str(native_description(plain, gate="posix.system")))
    one_line(err.value)
    # fine-tuning from a pickle: refused before any training process starts
    frames = _two_frames()
    with pytest.raises(XtalloopError, match="a pickled MACE model"):
        MaceTrainer(epochs=1).train(frames, tmp_path / "ft", parent=evil["model"])
    assert not marker.exists()


def _two_frames() -> list:
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for a in (3.6, 3.7):
        atoms = bulk("Cu", "fcc", a=a)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
        frames.append(atoms)
    return frames


def test_registry_model_replaced_in_the_store_is_refused(evil, marker, store_config, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    honest = tmp_path / "honest"
    honest.mkdir()
    plain = honest / "member_0.mace.pt"
    torch.save({}, plain)
    native_description(plain)
    with open_results(store_config) as db:
        registry = ModelRegistry(db)
        registry.register(honest, parent="chgnet", metrics={}, parent_metrics={},
                          promoted=True, settings_key="k")
        # the attacker replaces the stored weights: the recorded digest no longer matches
        files = FileStore(store_config)
        honest_weights = next(f for f in registry.get("mace-1")["files"]
                              if f["name"] == "member_0.mace.pt")
        data = evil["weights"].read_bytes()
        files.path_of(honest_weights["sha256"]).write_bytes(data)
        with pytest.raises(XtalloopError):
            registry.fetch("mace-1")
        # ... and rewrites the record too: a digest this machine has never trusted
        record = db.store(MODELS).query_one({"model_id": "mace-1"})
        for entry in record["files"]:
            if entry["name"] == "member_0.mace.pt":
                files.path_of(entry["sha256"]).unlink()
                entry.update(sha256=files.put(data), bytes=len(data))
        evil_description = native_description(evil["weights"])
        description = evil_description.read_bytes()
        for entry in record["files"]:
            if entry["name"] == "member_0.mace.json":
                entry.update(sha256=files.put(description))
        assert hashlib.sha256(description).hexdigest() in str(record)
        db.store(MODELS).update([{k: v for k, v in record.items() if k != "_id"}],
                                key="model_id")
        with pytest.raises(UntrustedModelError) as err:
            registry.fetch("mace-1")
        assert "`xtalloop model trust mace-1`" in one_line(err.value, "mace-1")
    with pytest.raises(UntrustedModelError):
        resolve_model("registry", "chgnet", store_config.model_dump(), ["Cu"])
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").rglob("*.mace.pt"))
    # a user who trusts it anyway still never unpickles it: the native loader refuses
    trusted = CliRunner().invoke(app, ["model", "trust", "mace-1", "--store", store_config.path])
    assert trusted.exit_code == 0, trusted.output
    spec, model_id = resolve_model("registry", "chgnet", store_config.model_dump(), ["Cu"])
    assert model_id == "mace-1"
    with pytest.raises(XtalloopError, match="not plain tensors") as err:
        load_energy_model(spec)
    one_line(err.value)
    assert not marker.exists()


def test_model_trust_command_trusts_contents_not_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("XTALLOOP_TRUST", str(tmp_path / "trusted.json"))
    from xtalloop.models.trust import is_trusted
    from xtalloop.models.mace_format import sha256

    mine = tmp_path / "mine.mace.json"
    mine.write_text("{}")
    result = CliRunner().invoke(app, ["model", "trust", str(mine)])
    assert result.exit_code == 0, result.output
    assert f"trusted {mine}" in result.output and str(tmp_path / "trusted.json") in result.output
    assert is_trusted(sha256(mine))
    mine.write_text('{"changed": "after it was trusted"}')
    assert not is_trusted(sha256(mine))  # the digest is trusted, not the path
    pickled = tmp_path / "mine.model"
    pickled.write_bytes(b"a pickle")
    result = CliRunner().invoke(app, ["model", "trust", str(pickled)])
    assert result.exit_code == 2  # trusting a pickle would change nothing: refused
    one_line(result.stderr.strip(), "a pickled MACE model")
    assert not is_trusted(sha256(pickled))
    result = CliRunner().invoke(app, ["model", "trust", "no/such/file"])
    assert result.exit_code == 2
    one_line(result.stderr.strip(), "no such file or folder")


def test_no_library_code_unpickles():
    """xtalloop's own code never calls an unrestricted unpickler (pickle, or torch.load
    without ``weights_only=True``); the only pickles read are mace's, by mace, of the
    parent that xtalloop wrote in the same process."""
    import ast
    import xtalloop

    offenders = []
    for path in Path(xtalloop.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in {"pickle.load", "pickle.loads", "dill.load", "cloudpickle.load"}:
                offenders.append(f"{path.name}:{node.lineno} {name}")
            if name.endswith("torch.load"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                if not safe:
                    offenders.append(f"{path.name}:{node.lineno} {name} without weights_only=True")
    assert not offenders, offenders

"""The Wyckoff generator wherever a generator is chosen: library, run config, CLI, benchmark.

Most tests use a tiny checkpoint trained for seconds (``tiny_wyckoff`` in
conftest.py); its crystals are poor, so the sampling tests check what holds
for any model (composition, cell size, reproducibility), not quality. The
shipped checkpoints have their own tests.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from pymatgen.core import Composition
from typer.testing import CliRunner
from wyckoff_checkpoint import mp20_rows

from xtalloop.cli import app
from xtalloop.config import WyckoffSource, load_config
from xtalloop.errors import ConfigError
from xtalloop.generators.diffusion.checkpoint import CheckpointError, save_checkpoint
from xtalloop.generators.factory import build_generator
from xtalloop.generators.wyckoff import (
    DEFAULT_CHECKPOINT,
    WyckoffGenerator,
    check_wyckoff,
    load_wyckoff,
)
from xtalloop.generators.wyckoff.checkpoint import FORMAT

#: A real 40-atom quinary of MPTS-52 (Sr8CaCu4(ReO8)3): every cell of it within 52
#: atoms is its 40-atom formula unit.
QUINARY_40 = "Sr8CaCu4Re3O24"
SIX_ELEMENTS = "LiNaKRbCsF6"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread is much faster on a shared CPU."""


def one_line(text: str, *names: object) -> str:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    for name in names:
        assert str(name) in text, text
    return text


def fingerprint(candidates) -> list:
    """What makes candidates identical: species, lattice and coordinates."""
    return [([str(s) for s in c.structure.species], c.structure.lattice.matrix.round(8).tolist(),
             c.structure.frac_coords.round(8).tolist(), c.metadata["space_group"])
            for c in candidates]


# --- the library ---------------------------------------------------------------------


def test_tiny_training_writes_a_checkpoint_that_loads(tiny_wyckoff):
    assert check_wyckoff(tiny_wyckoff) == tiny_wyckoff
    loaded = load_wyckoff(tiny_wyckoff)
    assert not loaded.model.training and loaded.model.config.d_model == 32
    assert 1 <= loaded.max_atoms <= 20  # MP-20's cells
    assert loaded.metadata["training"]["n_train"] + loaded.metadata["training"]["n_val"] >= 30
    assert len(loaded.checkpoint_hash) == 64


def test_same_seed_gives_identical_structures(tiny_wyckoff):
    def run(seed: int) -> list:
        generator = WyckoffGenerator(checkpoint=str(tiny_wyckoff), min_distance_factor=0.0)
        return fingerprint(generator.generate(Composition("Li2MnO3"), 4, seed))

    first = run(7)
    assert len(first) == 4
    assert run(7) == first
    assert run(8) != first


@pytest.mark.parametrize("formula", [QUINARY_40, SIX_ELEMENTS, "Li2MnFeCoO4", "BaSrCaMgZnO5"])
def test_many_atoms_and_elements_get_candidates_of_the_composition(tiny_wyckoff, formula):
    # an untrained model's coordinates overlap often; this test is about what is
    # built (composition, size), so draws are not refused for short distances
    generator = WyckoffGenerator(checkpoint=str(tiny_wyckoff), max_atoms=52,
                                 min_distance_factor=0.0)
    target = Composition(formula).reduced_composition
    candidates = generator.generate(target, 3, seed=0)
    assert candidates, formula
    for candidate in candidates:
        structure = candidate.structure
        assert structure.composition.reduced_composition == target
        assert len(structure) <= 52 and len(structure) % target.num_atoms == 0
        assert candidate.generator == "wyckoff" and 1 <= candidate.metadata["space_group"] <= 230
    if formula == QUINARY_40:
        assert {len(c.structure) for c in candidates} == {40}


def test_cell_limit_is_kept_and_defaults_to_the_training_cells(tiny_wyckoff):
    generator = WyckoffGenerator(checkpoint=str(tiny_wyckoff), min_distance_factor=0.0)
    assert generator.cell_limit == load_wyckoff(tiny_wyckoff).max_atoms
    for candidate in generator.generate(Composition("SrTiO3"), 6, seed=1):
        assert len(candidate.structure) <= generator.cell_limit
    # no cell of a 40-atom formula fits within 20 atoms: nothing, not an error
    assert WyckoffGenerator(checkpoint=str(tiny_wyckoff), max_atoms=20).generate(
        Composition(QUINARY_40), 2, seed=0) == []


def test_the_shipped_checkpoint_loads_and_samples_a_40_atom_quinary():
    check_wyckoff(DEFAULT_CHECKPOINT)
    generator = WyckoffGenerator(max_atoms=52)  # no checkpoint: the shipped one
    candidates = generator.generate(Composition(QUINARY_40), 5, seed=0)
    assert len(candidates) == 5
    for candidate in candidates:
        assert candidate.structure.composition.reduced_composition == \
            Composition(QUINARY_40).reduced_composition
        assert len(candidate.structure) == 40
    assert fingerprint(WyckoffGenerator(max_atoms=52).generate(
        Composition(QUINARY_40), 5, seed=0)) == fingerprint(candidates)


@pytest.mark.parametrize("name", ["wyckoff.pt", "wyckoff-mp20.pt", "wyckoff-mpts52.pt"])
def test_every_shipped_checkpoint_gives_full_n_for_six_elements(name):
    from xtalloop.generators.wyckoff.checkpoint import SHIPPED

    formula = "LiNaKRbCsF6"
    candidates = WyckoffGenerator(checkpoint=str(SHIPPED / name), max_atoms=52).generate(
        Composition(formula), 6, seed=1)
    assert len(candidates) == 6
    assert {c.structure.composition.reduced_formula for c in candidates} == \
        {Composition(formula).reduced_formula}
    assert all(c.metadata["space_group"] >= 1 for c in candidates)


# --- bad checkpoints -----------------------------------------------------------------


@pytest.fixture
def bad_checkpoints(tmp_path, tiny_wyckoff) -> dict[str, Path]:
    """A damaged file, a diffusion checkpoint and a Wyckoff checkpoint with wrong weights."""
    from xtalloop.generators.diffusion import (
        CrystalDenoiser,
        DiffusionConfig,
        ModelConfig,
    )

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_wyckoff.read_bytes()[:2000])
    diffusion = tmp_path / "diffusion.pt"
    config = DiffusionConfig(model=ModelConfig(hidden_dim=16, n_layers=1, n_frequencies=2,
                                               time_dim=8))
    save_checkpoint(diffusion, {"config": config.model_dump(mode="json"),
                                "model_state": CrystalDenoiser(config.model).state_dict()})
    tiny = torch.load(tiny_wyckoff, weights_only=True)  # written by this test session
    mismatched = tmp_path / "mismatched.pt"
    save_checkpoint(mismatched, {**tiny, "config": {**tiny["config"], "d_model": 64}},
                    fmt=FORMAT)
    missing_weight = tmp_path / "missing_weight.pt"
    state = dict(tiny["model_state"])
    state.pop(sorted(state)[0])
    save_checkpoint(missing_weight, {**tiny, "model_state": state}, fmt=FORMAT)
    return {"corrupt": corrupt, "diffusion": diffusion, "mismatched": mismatched,
            "missing_weight": missing_weight}


@pytest.mark.parametrize(("name", "message"), [
    ("corrupt", "cannot read checkpoint (damaged"),
    ("diffusion", "not an xtalloop wyckoff checkpoint"),
    ("mismatched", "weights do not match"),
    ("missing_weight", "weights do not match"),
])
def test_bad_checkpoints_give_one_line(bad_checkpoints, name, message):
    path = bad_checkpoints[name]
    for read in (check_wyckoff, load_wyckoff, lambda p: WyckoffGenerator(checkpoint=str(p)).load()):
        with pytest.raises(CheckpointError) as error:
            read(path)
        one_line(str(error.value), path, message)


def test_a_torch_version_in_the_metadata_is_stored_as_plain_text(tmp_path, tiny_wyckoff):
    # torch.__version__ is a str subclass that weights-only loading refuses
    tiny = torch.load(tiny_wyckoff, weights_only=True)
    path = save_checkpoint(tmp_path / "versioned.pt", {**tiny, "torch": torch.__version__},
                           fmt=FORMAT)
    check_wyckoff(path)
    assert load_wyckoff(path).metadata["torch"] == str(torch.__version__)


class Boom:
    """Unpickling this creates ``marker``: code chosen by the file's author runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_is_refused_unread(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "config": {}, "model_state": {}, "boom": Boom(marker)}, evil)
    raw = tmp_path / "raw.pt"  # a bare pickle, torch's legacy format
    raw.write_bytes(pickle.dumps({"format": FORMAT, "boom": Boom(marker)}))
    for path in (evil, raw):
        for read in (check_wyckoff, load_wyckoff,
                     lambda p: WyckoffGenerator(checkpoint=str(p)).load()):
            with pytest.raises(CheckpointError) as error:
                read(path)
            one_line(str(error.value), path)
        assert not marker.exists()
    assert "not plain data and is refused unread" in str(
        pytest.raises(CheckpointError, check_wyckoff, evil).value)
    runner = CliRunner()
    for args in (["generator", "sample", "--checkpoint", str(evil), "--composition", "NaCl",
                  "--out", str(tmp_path / "s")],
                 ["generator", "sample", "--kind", "wyckoff", "--checkpoint", str(evil),
                  "--composition", "NaCl", "--out", str(tmp_path / "s")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    config = write_config(tmp_path, {"kind": "wyckoff", "checkpoint": str(evil)})
    with pytest.raises(ConfigError) as error:
        load_config(config)
    one_line(str(error.value), "generate.sources[0].checkpoint", "refused unread")
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the control: loading it for real runs its code
    assert marker.exists()


# --- run configuration ---------------------------------------------------------------


def write_config(folder: Path, source: dict) -> Path:
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"compositions": ["NaCl"],
                                    "generate": {"max_atoms": 12, "sources": [source]}}))
    return path


def test_config_wyckoff_source_is_accepted_and_builds_the_generator(tmp_path, tiny_wyckoff):
    config = load_config(write_config(tmp_path, {"kind": "wyckoff", "n": 3,
                                                 "checkpoint": str(tiny_wyckoff),
                                                 "temperature": 0.8,
                                                 "skeleton_coordinates": False,
                                                 "skeleton_proposals": False}))
    source = config.generate.sources[0]
    assert isinstance(source, WyckoffSource) and source.n == 3 and source.device == "cpu"
    generator = build_generator(source.model_dump(), config.generate.max_atoms)
    assert isinstance(generator, WyckoffGenerator)
    assert (generator.checkpoint, generator.temperature, generator.max_atoms,
            generator.skeleton_coordinates, generator.skeleton_proposals) == (
                str(tiny_wyckoff), 0.8, 12, False, False)
    candidates = generator.generate(Composition("NaCl"), 2, seed=0)
    assert all(c.structure.composition.reduced_formula == "NaCl" for c in candidates)
    assert {c.metadata["coordinates"] for c in candidates} == {"model"}


@pytest.mark.parametrize(("source", "where", "message"), [
    ({"checkpoint": "{missing}"}, "generate.sources[0].checkpoint", "checkpoint not found"),
    ({"checkpoint": "{corrupt}"}, "generate.sources[0].checkpoint", "cannot read checkpoint"),
    ({"checkpoint": "{diffusion}"}, "generate.sources[0].checkpoint",
     "not an xtalloop wyckoff checkpoint"),
    ({"checkpoint": "{mismatched}"}, "generate.sources[0].checkpoint", "weights do not match"),
    ({"checkpoint": "{tiny}", "temperature": 0}, "generate.sources[0].temperature",
     "greater than 0"),
    ({"checkpoint": "{tiny}", "device": "gpu"}, "generate.sources[0].device", "unknown device"),
    ({"checkpoint": "{tiny}", "steps": 3}, "generate.sources[0].steps", "unknown key"),
    ({"checkpoint": "{tiny}", "skeleton_coordinates": "sometimes"},
     "generate.sources[0].skeleton_coordinates", "boolean"),
    ({"checkpoint": "{tiny}", "skeleton_proposals": "often"},
     "generate.sources[0].skeleton_proposals", "boolean"),
])
def test_config_errors_name_the_key(tmp_path, tiny_wyckoff, bad_checkpoints, source, where,
                                    message):
    names = {"missing": tmp_path / "missing.pt", "tiny": tiny_wyckoff, **bad_checkpoints}
    source = {k: v.format(**names) if isinstance(v, str) else v for k, v in source.items()}
    path = write_config(tmp_path, {"kind": "wyckoff", **source})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    one_line(str(error.value), path, where, message)


def test_config_without_checkpoint_checks_the_shipped_one(tmp_path, tiny_wyckoff, monkeypatch):
    import xtalloop.generators.wyckoff.checkpoint as checkpoints

    monkeypatch.setattr(checkpoints, "DEFAULT_CHECKPOINT", tmp_path / "shipped" / "wyckoff.pt")
    path = write_config(tmp_path, {"kind": "wyckoff"})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    one_line(str(error.value), "generate.sources[0].checkpoint", tmp_path / "shipped",
             "checkpoint not found")
    (tmp_path / "shipped").mkdir()
    shutil.copy(tiny_wyckoff, tmp_path / "shipped" / "wyckoff.pt")
    assert load_config(path).generate.sources[0].checkpoint is None


# --- command line --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    """Small MP-20 tables: 40 rows to train or evaluate on, 40 others as templates."""
    folder = tmp_path_factory.mktemp("wyckoff_tables")
    paths = {"train": folder / "train.csv", "val": folder / "val.csv",
             "templates": folder / "templates.csv", "no_ids": folder / "no_ids.csv"}
    mp20_rows(40).to_csv(paths["train"], index=False)
    mp20_rows(6, skip=100).to_csv(paths["val"], index=False)
    mp20_rows(40, skip=200).to_csv(paths["templates"], index=False)
    mp20_rows(3).drop(columns=["material_id"]).to_csv(paths["no_ids"], index=False)
    return paths


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_wyckoff_command(tmp_path, tables, monkeypatch):
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model.pt"
    result = invoke("generator", "train-wyckoff", "--data", tables["train"], "--out", out,
                    "--exclude", tables["val"], "--limit", 30, "--epochs", 1, "--workers", 1,
                    "--threads", 1)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "on 30 crystals" in result.output
    loaded = load_wyckoff(check_wyckoff(out))
    assert loaded.metadata["training"]["n_crystals"] == 30
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["exclude"] == [str(tables["val"])] and len(log["epochs"]) == 1
    assert list((tmp_path / "cache" / "wyckoff").iterdir())  # the descriptions are cached


def test_benchmark_csp_with_the_wyckoff_generators(tmp_path, tables, tiny_wyckoff):
    out = tmp_path / "bench"
    result = invoke("benchmark", "csp", "--data", tables["val"], "--n", 3, "--k", "1,4",
                    "--generator", "wyckoff", "--generator", "templates+wyckoff",
                    "--wyckoff-checkpoint", tiny_wyckoff, "--reference-csv", tables["templates"],
                    "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"wyckoff checkpoint: {tiny_wyckoff}" in result.output
    combined = json.loads((out / "results.json").read_text())
    assert combined["wyckoff_checkpoint"] == str(tiny_wyckoff)
    largest = int(pd.read_csv(tables["val"])["nsites"].max())
    assert combined["max_atoms"] == largest  # the data's largest cell
    wyckoff = combined["generators"]["wyckoff"]
    assert wyckoff["n_compositions"] == 3 and wyckoff["n_failed"] == 0
    assert wyckoff["generator_settings"]["checkpoint"] == str(tiny_wyckoff)
    assert wyckoff["generator_settings"]["max_atoms"] == largest
    members = combined["generators"]["templates+wyckoff"]["generator_settings"]["generators"]
    assert [m["name"] for m in members] == ["prototype_substitution", "wyckoff"]


def test_benchmark_defaults_to_the_checkpoint_of_the_data_set(tmp_path, tables, tiny_wyckoff,
                                                              monkeypatch):
    import xtalloop.generators.wyckoff.checkpoint as checkpoints
    from xtalloop.benchmark.references import default_wyckoff_checkpoint

    shipped = tmp_path / "shipped"
    monkeypatch.setattr(checkpoints, "SHIPPED", shipped)
    monkeypatch.setattr(checkpoints, "DEFAULT_CHECKPOINT", shipped / "wyckoff.pt")
    for folder, name in (("mp_20", "wyckoff-mp20.pt"), ("mpts_52", "wyckoff-mpts52.pt"),
                         ("perov_5", "wyckoff.pt")):
        assert default_wyckoff_checkpoint(f"/data/{folder}/val.csv.gz") == shipped / name
    (tmp_path / "mp_20").mkdir()
    data = tmp_path / "mp_20" / "val.csv"
    shutil.copy(tables["val"], data)
    args = ("benchmark", "csp", "--data", data, "--n", 2, "--k", 1, "--generator", "wyckoff",
            "--out", tmp_path / "bench", "--no-progress")
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    one_line(result.stderr, "error: ", shipped / "wyckoff-mp20.pt", "--wyckoff-checkpoint")
    shipped.mkdir()
    shutil.copy(tiny_wyckoff, shipped / "wyckoff-mp20.pt")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"wyckoff checkpoint: {shipped / 'wyckoff-mp20.pt'}" in result.output
    combined = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert combined["wyckoff_checkpoint"] == str(shipped / "wyckoff-mp20.pt")


def test_generator_sample_with_a_wyckoff_checkpoint(tmp_path, tiny_wyckoff, monkeypatch):
    import xtalloop.generators.wyckoff.checkpoint as checkpoints

    out = tmp_path / "samples"
    result = invoke("generator", "sample", "--checkpoint", tiny_wyckoff, "--composition",
                    "SrTiO3", "--n", 3, "--seed", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert "from the Wyckoff model" in result.output
    written = sorted(out.glob("*.cif"))
    assert written and len(written) <= 3 and f"wrote {len(written)} CIFs" in result.output
    # --kind wyckoff without --checkpoint: the shipped model
    monkeypatch.setattr(checkpoints, "DEFAULT_CHECKPOINT", tiny_wyckoff)
    again = tmp_path / "again"
    result = invoke("generator", "sample", "--kind", "wyckoff", "--composition", "SrTiO3",
                    "--n", 3, "--seed", 2, "--out", again)
    assert result.exit_code == 0, result.output
    assert [p.read_text() for p in sorted(again.glob("*.cif"))] == \
        [p.read_text() for p in written]


@pytest.mark.parametrize(("args", "message"), [
    (["generator", "sample", "--composition", "NaCl", "--out", "{never}"],
     "--checkpoint is needed"),
    (["generator", "sample", "--kind", "magic", "--composition", "NaCl", "--out", "{never}"],
     "--kind: diffusion or wyckoff"),
    (["generator", "sample", "--kind", "wyckoff", "--checkpoint", "{missing}",
      "--composition", "NaCl", "--out", "{never}"], "checkpoint not found"),
    (["generator", "sample", "--kind", "wyckoff", "--checkpoint", "{diffusion}",
      "--composition", "NaCl", "--out", "{never}"], "not an xtalloop wyckoff checkpoint"),
    (["generator", "sample", "--checkpoint", "{tiny}", "--composition", QUINARY_40,
      "--out", "{never}"],
     "no cell of Sr8CaCu4(ReO8)3 fits within"),
    (["generator", "sample", "--checkpoint", "{mismatched}", "--composition", "NaCl",
      "--out", "{never}"],
     "weights do not match"),
    (["generator", "train-wyckoff", "--data", "{missing}", "--out", "{out}"],
     "structure table"),
    (["generator", "train-wyckoff", "--data", "{train}", "--exclude", "{no_ids}",
      "--out", "{out}"], "--exclude"),
    (["generator", "train-wyckoff", "--data", "{train}", "--exclude", "{missing}",
      "--out", "{out}"], "--exclude"),
    (["benchmark", "csp", "--data", "{missing}", "--generator", "wyckoff",
      "--wyckoff-checkpoint", "{tiny}", "--out", "{never}"], "structure table"),
    (["benchmark", "csp", "--data", "{val}", "--generator", "wyckoff",
      "--wyckoff-checkpoint", "{missing}", "--out", "{never}"], "Wyckoff checkpoint not found"),
    (["benchmark", "csp", "--data", "{val}", "--generator", "wyckoff",
      "--wyckoff-checkpoint", "{corrupt}", "--out", "{never}"], "cannot read checkpoint"),
    (["benchmark", "csp", "--data", "{val}", "--generator", "templates+wyckoff",
      "--wyckoff-checkpoint", "{diffusion}", "--reference-csv", "{templates}",
      "--out", "{never}"],
     "not an xtalloop wyckoff checkpoint"),
])
def test_bad_input_gives_one_error_line(tmp_path, tables, tiny_wyckoff, bad_checkpoints,
                                        args, message):
    names = {"missing": tmp_path / "missing.file", "out": tmp_path / "never.pt",
             "never": tmp_path / "never", "tiny": tiny_wyckoff, **tables, **bad_checkpoints}
    result = invoke(*[a.format(**names) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    one_line(result.stderr, message)
    assert not (tmp_path / "never.pt").exists() and not (tmp_path / "never").exists()

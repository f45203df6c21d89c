"""The diffusion generator: data, denoiser symmetry, training, resuming, fine-tuning, sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.core.operations import SymmOp

import xtalloop
from xtalloop.generators.base import Generator
from xtalloop.generators.diffusion import (
    PRESETS,
    CrystalDenoiser,
    DiffusionConfig,
    DiffusionGenerator,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    preset,
    read_checkpoint,
    structures_to_dataset,
    train,
)
from xtalloop.generators.diffusion.data import CrystalBatch
from xtalloop.generators.diffusion.diffusion import (
    Schedules,
    sampling_times,
    wrapped_normal_score,
)

# prototype, space group, sites, [(species, a in Å)]
_PROTOTYPES = [
    ("Fm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]], [(("Na", "Cl"), 5.64), (("Mg", "O"), 4.21), (("K", "Cl"), 6.29)]),
    ("Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]], [(("Cs", "Cl"), 4.12), (("Cs", "Br"), 4.29)]),
    ("F-43m", [[0, 0, 0], [0.25, 0.25, 0.25]], [(("Zn", "S"), 5.41), (("Ga", "As"), 5.65)]),
    ("Fm-3m", [[0, 0, 0], [0.25, 0.25, 0.25]], [(("Ca", "F"), 5.46), (("Sr", "F"), 5.80)]),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _structures() -> list[Structure]:
    """Primitive cells of nine simple binaries plus three conventional cells (<= 12 atoms)."""
    out = []
    for sg, coords, members in _PROTOTYPES:
        for species, a in members:
            conv = Structure.from_spacegroup(sg, Lattice.cubic(a), list(species), coords)
            out.append(conv.get_primitive_structure())
            if species in (("Na", "Cl"), ("Zn", "S"), ("Ca", "F")):
                out.append(conv)
    return out


def _tiny_config(epochs: int = 12, **train: object) -> DiffusionConfig:
    return DiffusionConfig(
        model=ModelConfig(hidden_dim=32, n_layers=2, n_frequencies=4, time_dim=16),
        noise=NoiseConfig(timesteps=50),
        train=TrainConfig(
            epochs=epochs, batch_size=4, lr=3e-3, save_every=0, device="cpu", seed=0, **train
        ),
    )


@pytest.fixture(scope="module")
def dataset():
    return structures_to_dataset(_structures())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset):
    path = tmp_path_factory.mktemp("diffusion") / "tiny.pt"
    return train(_tiny_config(), dataset, path, progress=False)


# --- data and configuration -------------------------------------------------------


def test_dataset_tensors_and_hash(dataset):
    structures = _structures()
    assert len(dataset) == len(structures) == 12
    assert int(dataset.num_atoms.sum()) == len(dataset.atom_types) == sum(len(s) for s in structures)
    assert dataset.max_atoms == 12
    assert bool(((dataset.frac_coords >= 0) & (dataset.frac_coords < 1)).all())
    assert torch.linalg.det(dataset.lattices).abs().min() > 1.0
    # the hash ignores order and changes with content
    assert structures_to_dataset(structures[::-1]).data_hash == dataset.data_hash
    assert structures_to_dataset(structures[:-1]).data_hash != dataset.data_hash
    # fluorite CaF2 conventional cell: 4 formula units of 3 atoms
    assert dataset.formula_unit_counts()[3] == {1: 2, 4: 1}


def test_cell_is_canonical_under_rotation():
    s = _structures()[0]
    rotated = s.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    a, b = structures_to_dataset([s]), structures_to_dataset([rotated])
    assert torch.allclose(a.lattices, b.lattices, atol=1e-4)


def test_config_forbids_unknown_fields_and_has_presets():
    with pytest.raises(ValidationError):
        TrainConfig(epochs=3, learning_rate=1e-3)
    assert set(PRESETS) >= {"small_cpu", "full_gpu"}
    assert preset("small_cpu").train.device == "cpu"
    assert preset("small_cpu", epochs=3).train.epochs == 3
    with pytest.raises(KeyError):
        preset("huge")


def test_wrapped_normal_score_is_periodic_and_odd():
    x = torch.tensor([0.1, 0.3, -0.2])
    sigma = torch.full_like(x, 0.2)
    assert torch.allclose(wrapped_normal_score(x, sigma), wrapped_normal_score(x + 1, sigma), atol=1e-4)
    assert torch.allclose(wrapped_normal_score(-x, sigma), -wrapped_normal_score(x, sigma), atol=1e-5)
    schedules = Schedules.from_config(NoiseConfig(timesteps=10))
    assert schedules.sigmas[1] == pytest.approx(0.005) and schedules.sigmas[-1] == pytest.approx(0.5)
    assert sampling_times(10, 10) == list(range(10, 0, -1))
    assert sampling_times(1000, 4)[0] == 1000 and sampling_times(1000, 4)[-1] == 1


# --- symmetry of the denoiser -------------------------------------------------------


def _random_batch(seed: int = 0) -> CrystalBatch:
    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.tensor([3, 5, 1])
    n = int(num_atoms.sum())
    return CrystalBatch(
        atom_types=torch.randint(1, 90, (n,), generator=g),
        frac_coords=torch.rand(n, 3, generator=g),
        lattices=torch.randn(3, 3, 3, generator=g, dtype=torch.float64).float() * 2
        + 4 * torch.eye(3),
        num_atoms=num_atoms,
    )


def _model() -> CrystalDenoiser:
    torch.manual_seed(0)
    return CrystalDenoiser(ModelConfig(hidden_dim=32, n_layers=3, n_frequencies=4, time_dim=16)).double().eval()


def _run(model, b: CrystalBatch, t: torch.Tensor):
    with torch.no_grad():
        return model(t, b.atom_types, b.frac_coords.double(), b.lattices.double(), b.num_atoms)


def test_denoiser_is_e3_invariant():
    model, b = _model(), _random_batch()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    lat_out, x_out = _run(model, b, t)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    for rot in (q, -q):  # a rotation and an improper rotation (det of -q is -det q)
        rotated = CrystalBatch(b.atom_types, b.frac_coords, b.lattices.double() @ rot.T, b.num_atoms)
        lat_rot, x_rot = _run(model, rotated, t)
        assert torch.allclose(x_rot, x_out, atol=1e-8)
        assert torch.allclose(lat_rot, lat_out @ rot.T, atol=1e-8)
    # a common translation of the fractional coordinates changes nothing
    shifted = CrystalBatch(
        b.atom_types, (b.frac_coords.double() + torch.tensor([0.3, -0.7, 0.45], dtype=torch.float64)) % 1,
        b.lattices, b.num_atoms,
    )
    lat_s, x_s = _run(model, shifted, t)
    assert torch.allclose(x_s, x_out, atol=1e-8) and torch.allclose(lat_s, lat_out, atol=1e-8)


def test_denoiser_is_permutation_equivariant():
    model, b = _model(), _random_batch(3)
    t = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    lat_out, x_out = _run(model, b, t)
    perm = torch.tensor([2, 0, 1, 7, 5, 3, 6, 4, 8])  # permutes atoms within each crystal
    permuted = CrystalBatch(b.atom_types[perm], b.frac_coords[perm], b.lattices, b.num_atoms)
    lat_p, x_p = _run(model, permuted, t)
    assert torch.allclose(x_p, x_out[perm], atol=1e-8)
    assert torch.allclose(lat_p, lat_out, atol=1e-8)


# --- training ------------------------------------------------------------------------


def test_training_lowers_the_loss(trained):
    history = read_checkpoint(trained)["history"]
    first = np.mean([h["loss"] for h in history[:2]])
    last = np.mean([h["loss"] for h in history[-2:]])
    assert last < 0.8 * first


def test_checkpoint_records_provenance(trained, dataset):
    ckpt = read_checkpoint(trained)
    assert ckpt["data_hash"] == dataset.data_hash
    assert ckpt["xtalloop_version"] == xtalloop.__version__
    assert DiffusionConfig.model_validate(ckpt["config"]) == _tiny_config()
    assert ckpt["epoch"] == 12 and ckpt["step"] == 36
    assert ckpt["parent"] is None
    assert ckpt["lattice_abs_max"] == pytest.approx(float(dataset.lattices.abs().max()))
    assert {"model_state", "optimizer_state", "formula_unit_counts"} <= set(ckpt)
    log = json.loads(trained.with_suffix(".log.json").read_text())
    assert log["epoch"] == 12 and len(log["history"]) == 12
    assert trained.with_suffix(".loss.png").stat().st_size > 0


def test_damaged_or_mismatched_checkpoints_are_one_line_errors(tmp_path, trained):
    from xtalloop.generators.diffusion.checkpoint import (
        CheckpointError,
        check_checkpoint,
        load_model,
        save_checkpoint,
    )

    ckpt = torch.load(trained, weights_only=True)  # plain data: readable without unpickling
    assert check_checkpoint(trained) == trained and load_model(trained).max_atoms > 0
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[:5000])
    wider = tmp_path / "wider.pt"  # weights of another model than the config says
    config = dict(ckpt["config"], model=dict(ckpt["config"]["model"], hidden_dim=64))
    save_checkpoint(wider, {**ckpt, "config": config, "counts": np.int64(3)})
    bad_config = tmp_path / "bad_config.pt"
    save_checkpoint(bad_config, {**ckpt, "config": {"model": {"hidden_dim": "wide"}}})
    for path, message in [(truncated, "damaged"), (wider, "do not match the model"),
                          (bad_config, r"config is invalid \(model.hidden_dim"),
                          (tmp_path / "none.pt", "checkpoint not found")]:
        for load in (check_checkpoint, load_model):
            with pytest.raises(CheckpointError, match=message) as err:
                load(path)
            assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_resume_continues_from_saved_epoch(tmp_path, dataset):
    straight = train(_tiny_config(epochs=4), dataset, tmp_path / "straight.pt", progress=False)
    first = train(_tiny_config(epochs=2), dataset, tmp_path / "part.pt", progress=False)
    assert read_checkpoint(first)["epoch"] == 2
    resumed = train(
        _tiny_config(epochs=4), dataset, tmp_path / "resumed.pt", resume_from=first, progress=False
    )
    ckpt = read_checkpoint(resumed)
    assert ckpt["epoch"] == 4 and ckpt["step"] == 12
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2, 3, 4]
    # seeded per epoch: resuming gives the same weights as training straight through
    ref = read_checkpoint(straight)["model_state"]
    for k, v in ckpt["model_state"].items():
        assert torch.allclose(v, ref[k], atol=1e-5), k
    with pytest.raises(ValueError, match="finetune"):
        train(_tiny_config(epochs=5), structures_to_dataset(_structures()[:5]),
              tmp_path / "x.pt", resume_from=first, progress=False)


def test_finetune_records_parent(tmp_path, trained):
    new_data = structures_to_dataset(
        [Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [el, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
         .get_primitive_structure() for el, a in (("Ca", 4.81), ("Ni", 4.17), ("Ba", 5.52))]
    )
    out = train(_tiny_config(epochs=2), new_data, tmp_path / "ft.pt", finetune_from=trained, progress=False)
    ckpt = read_checkpoint(out)
    parent = read_checkpoint(trained)
    assert ckpt["parent"]["path"] == str(trained.resolve())
    assert ckpt["parent"]["data_hash"] == parent["data_hash"] != ckpt["data_hash"]
    assert len(ckpt["parent"]["checkpoint_hash"]) == 64
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert ckpt["history"][0]["lr"] == pytest.approx(3e-3 * 0.1)


# --- sampling -----------------------------------------------------------------------


def _same(a: list, b: list) -> bool:
    return all(
        np.array_equal(x.structure.lattice.matrix, y.structure.lattice.matrix)
        and np.array_equal(x.structure.frac_coords, y.structure.frac_coords)
        and x.structure.species == y.structure.species
        for x, y in zip(a, b, strict=True)
    )


def test_sampling_is_seeded(trained):
    gen = DiffusionGenerator(checkpoint=str(trained), n_steps=15)
    assert isinstance(gen, Generator) and gen.name == "diffusion"
    a = gen.generate(Composition("NaCl"), 4, seed=7)
    b = DiffusionGenerator(checkpoint=str(trained), n_steps=15).generate(Composition("NaCl"), 4, seed=7)
    c = gen.generate(Composition("NaCl"), 4, seed=8)
    assert len(a) == len(b) == len(c) == 4
    assert _same(a, b)
    assert not any(
        np.allclose(x.structure.lattice.matrix, y.structure.lattice.matrix) for x, y in zip(a, c)
    )
    assert gen._loaded is not None  # loaded once, cached


@pytest.mark.parametrize("formula", ["CaF2", "ZnS", "Li2O", "BaTiO3"])
def test_samples_have_the_composition_and_valid_cells(trained, formula):
    gen = DiffusionGenerator(checkpoint=str(trained), n_steps=10, batch_size=3)
    reduced = Composition(formula).reduced_composition
    cands = gen.generate(Composition(formula), 5, seed=3)
    assert len(cands) == 5
    for i, cand in enumerate(cands):
        s = cand.structure
        z = cand.metadata["formula_units"]
        assert cand.index == i and cand.seed == 3 and cand.generator == "diffusion"
        assert s.composition == reduced * z
        assert len(s) <= 12
        assert np.isfinite(s.lattice.matrix).all() and s.volume > 0
        assert np.isfinite(s.frac_coords).all()
        assert ((s.frac_coords >= 0) & (s.frac_coords < 1)).all()
        assert cand.metadata["n_steps"] == 10
        assert len(cand.metadata["checkpoint_hash"]) == 16


def test_formula_units_can_be_given(trained):
    gen = DiffusionGenerator(checkpoint=str(trained), n_steps=5, formula_units=(2,))
    cands = gen.generate(Composition("MgO"), 3, seed=0)
    assert [c.metadata["formula_units"] for c in cands] == [2, 2, 2]
    assert all(len(c.structure) == 4 for c in cands)
    assert DiffusionGenerator(checkpoint=str(trained), n_steps=5, max_atoms=4).generate(
        Composition("BaTiO3"), 2, seed=0
    ) == []

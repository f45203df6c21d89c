"""Large files in the results store: blobs by sha256, model files, generator checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pymatgen.core import Composition, Lattice, Structure

from xtalloop.config import RunConfig, StoreConfig
from xtalloop.errors import StoreError, XtalloopError
from xtalloop.store.files import FileStore, is_ref, local_copy, ref
from xtalloop.store.results import open_results


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture(params=["embedded", "mongodb"])
def any_store(request, tmp_path) -> StoreConfig:
    if request.param == "embedded":
        return StoreConfig(path=str(tmp_path / "store"))
    return request.getfixturevalue("mongo_config")


def damage(files: FileStore, digest: str) -> None:
    """Replace the stored bytes of ``digest`` by others of the same length."""
    size = len(files.get(digest))
    if files.config.backend == "embedded":
        files.path_of(digest).write_bytes(b"x" * size)
        return
    from bson import Binary

    files._bucket()
    files._gridfs._chunks_collection.update_one(
        {"files_id": digest, "n": 0}, {"$set": {"data": Binary(b"x" * size)}})


def test_blob_round_trip_and_a_damaged_blob_is_one_line(any_store, tmp_path, monkeypatch):
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    data = bytes(range(256)) * 5000  # > one GridFS chunk (255 kB)
    source = tmp_path / "weights.bin"
    source.write_bytes(data)
    with FileStore(any_store) as files:
        digest = files.put(source, {"kind": "test"})
        assert digest == hashlib.sha256(data).hexdigest()
        assert files.put(data) == digest  # content-addressed: storing again is a no-op
        assert files.exists(digest) and files.get(digest) == data
        fetched = files.fetch(digest, tmp_path / "out" / "w.bin")
        assert fetched.read_bytes() == data
        assert [p.name for p in fetched.parent.iterdir()] == ["w.bin"]  # no partial left
        # a reference resolves to a checked copy in this machine's cache
        local = Path(local_copy(ref(digest), any_store.model_dump(), ".bin", "test"))
        assert local.parent == tmp_path / "cache" / "test" and local.read_bytes() == data
        assert local_copy(str(source), None) == str(source)  # a path stays a path
        damage(files, digest)
        with pytest.raises(StoreError) as err:
            files.get(digest)
        assert "is damaged" in one_line(err.value) and digest[:16] in str(err.value)
        with pytest.raises(StoreError):  # the cached copy is fine, a new fetch is refused
            files.fetch(digest, tmp_path / "again.bin")
        assert not (tmp_path / "again.bin").exists()
        files.remove(digest)
        assert not files.exists(digest)
        with pytest.raises(StoreError) as err:
            files.get(digest)
        assert "is not in" in one_line(err.value)
    with pytest.raises(StoreError, match="no store was given"):
        local_copy(ref(digest), None)


def test_registry_model_files_go_through_gridfs_into_an_empty_cache(mongo_config, tmp_path,
                                                                   monkeypatch):
    from xtalloop.learn.registry import MODEL_FILES, ModelRegistry, resolve_model
    from xtalloop.models.trust import add, trusted

    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "member_0.mace.json").write_text('{"format": "test"}')
    (folder / "member_0.mace.pt").write_bytes(b"weights" * 100_000)
    with open_results(mongo_config) as db:
        registry = ModelRegistry(db)
        model_id = registry.register(folder, parent="chgnet", metrics={}, parent_metrics={},
                                     promoted=True, settings_key="k", elements=["Cu"])
        entries = registry.get(model_id)["files"]
        assert [set(e) for e in entries] == [{"name", "sha256", "bytes"}] * 2
        assert db.store(MODEL_FILES).count() == 0  # no hand-made chunks any more
        bucket = db.store("runs")._collection.database["files.files"]
        assert {d["_id"] for d in bucket.find({})} == {e["sha256"] for e in entries}
    with pytest.raises(XtalloopError, match="trust list"):
        resolve_model("registry", "chgnet", mongo_config.model_dump(), ["Cu"])
    assert not (tmp_path / "cache").exists()
    add([e["sha256"] for e in entries], source="test")
    assert all(e["sha256"] in trusted() for e in entries)
    # the promoted model, as the next round's prefilter job reads it on another node
    spec, registry_id = resolve_model("registry", "chgnet", mongo_config.model_dump(), ["Cu"])
    assert registry_id == model_id
    assert Path(spec).parent == tmp_path / "cache" / "models"
    assert {p.name: p.read_bytes() for p in Path(spec).iterdir()} == {
        p.name: p.read_bytes() for p in folder.iterdir()}


def test_registry_still_reads_models_stored_as_base64_chunks(store_config, tmp_path):
    import base64

    from xtalloop.learn.registry import MODEL_FILES, MODELS, ModelRegistry
    from xtalloop.models.trust import add

    data = b"old weights"
    digest = hashlib.sha256(data).hexdigest()
    with open_results(store_config) as db:
        db.store(MODEL_FILES).update([{"key": "mace-1/m.mace.pt/0", "model_id": "mace-1",
                                       "file": "m.mace.pt", "chunk": 0,
                                       "data": base64.b64encode(data).decode()}], key="key")
        db.store(MODELS).update([{"model_id": "mace-1", "number": 1, "promoted": False,
                                  "files": [{"name": "m.mace.pt", "sha256": digest,
                                             "bytes": len(data), "chunks": 1}]}],
                                key="model_id")
        add([digest], source="test")
        fetched = ModelRegistry(db).fetch("mace-1", into=tmp_path / "cache")
    assert (fetched / "m.mace.pt").read_bytes() == data


def tiny_checkpoint(path: Path) -> Path:
    from xtalloop.generators.diffusion import (
        DiffusionConfig,
        ModelConfig,
        NoiseConfig,
        TrainConfig,
        structures_to_dataset,
        train,
    )

    fcc = [Structure(Lattice.cubic(a), [el] * 4,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
           for el, a in (("Cu", 3.61), ("Au", 4.08))]
    fcc += [s.get_primitive_structure() for s in fcc]
    return train(DiffusionConfig(model=ModelConfig(hidden_dim=16, n_layers=1, n_frequencies=2,
                                                   time_dim=8),
                                 noise=NoiseConfig(timesteps=10),
                                 train=TrainConfig(epochs=1, batch_size=4, save_every=0)),
                 structures_to_dataset(fcc), path, progress=False)


def test_fine_tuned_generator_is_read_from_the_store_once_its_job_folder_is_gone(
        store_config, tmp_path, monkeypatch, one_torch_thread):
    import shutil

    from xtalloop.active_learning import round_config
    from xtalloop.generators.factory import build_generator
    from xtalloop.workflows.csp import csp_flow_maker, job_store_settings
    from xtalloop.workflows.loop import _generator_checkpoint, _read_checkpoints_from

    base = tiny_checkpoint(tmp_path / "base.pt")
    config = RunConfig.model_validate({
        "name": "gen", "compositions": ["Cu"], "charge_balance": "off",
        "generate": {"max_atoms": 4, "sources": [
            {"kind": "diffusion", "n": 2, "checkpoint": str(base), "n_steps": 3}]},
        "prefilter": {"model": "emt"}, "loop": {"rounds": 2},
        "store": store_config.model_dump(), "output_dir": str(tmp_path / "runs")})
    # round 1's fine-tuning job, in its own folder, stores its checkpoint and ends
    job_folder = tmp_path / "job-1"
    job_folder.mkdir()
    tuned = shutil.copy(base, job_folder / "generator.pt")
    with FileStore(store_config) as files:
        reference = ref(files.put(tuned))
    shutil.rmtree(job_folder)
    completed = [{"round": 1, "generator": {"checkpoint": reference, "path": str(tuned)}}]
    with open_results(store_config) as db:
        assert _generator_checkpoint(config, completed, db) == reference
        assert _generator_checkpoint(config, [], db) == str(base)
    # round 2 samples on another node: an empty cache, only the store in common
    monkeypatch.setenv("XTALLOOP_CACHE", str(tmp_path / "node-2"))
    maker = csp_flow_maker(round_config(config, _plan(), reference), {"id": "r2"}, False)
    _read_checkpoints_from(maker.generate_maker.sources, job_store_settings(config))
    source = maker.generate_maker.sources[0]
    assert is_ref(source["checkpoint"]) and source["store"] == job_store_settings(config)
    made = build_generator(source, 4).generate(Composition("Cu"), 2, seed=0)
    assert len(made) == 2
    assert made[0].metadata["checkpoint_hash"] == reference.removeprefix("store:sha256:")[:16]
    assert list((tmp_path / "node-2" / "generators").iterdir())
    # a checkpoint lost from the store stops the round in one line, before its jobs run
    with FileStore(store_config) as files:
        files.remove(reference)
    with open_results(store_config) as db, pytest.raises(StoreError) as err:
        _generator_checkpoint(config, completed, db)
    assert "round 1's fine-tuned generator" in one_line(err.value)


def _plan():
    from xtalloop.active_learning import RoundPlan

    return RoundPlan(round=2, compositions=["Cu"], top_k=1, seed=0)


def test_trajectories_live_in_the_file_store_and_are_read_back_where_needed(store_config,
                                                                           tmp_path):
    from xtalloop.errors import DataError
    from xtalloop.export import export_structures
    from xtalloop.learn.dataset import frames_from_store
    from xtalloop.store.files import put_trajectory, trajectory_of

    structure = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])

    def relaxed(energy: float, run: str, files: FileStore) -> dict:
        steps = [{"structure": structure.as_dict(), "energy": energy + 0.1 * (2 - i),
                  "forces": [[0.01 * i, 0.0, 0.0]], "stress": [0.0] * 6} for i in range(3)]
        return {"formula": "Cu", "structure": structure.as_dict(), "energy": energy,
                "energy_per_atom": energy, "forces": [[0.0, 0.0, 0.0]],
                "space_group": "Fm-3m",
                "dft": {"settings_key": "k", "converged": True}, "run": {"id": run},
                **put_trajectory(files, steps, {"formula": "Cu"})}

    with open_results(store_config) as db, FileStore(store_config) as files:
        first = relaxed(-3.0, "r1", files)
        assert "trajectory" not in first and first["n_frames"] == 3
        uuid, _ = db.add_validated(first)
        second = relaxed(-3.5, "r2", files)  # a better result of the same structure
        assert db.add_validated(second) == (uuid, "improved")
        (doc,) = db.find_validated()
        # the improvement keeps the replaced result's reference, and both read back
        assert doc["trajectory_ref"] == second["trajectory_ref"]
        old = doc["previous_results"][0]
        assert old["trajectory_ref"] == first["trajectory_ref"] != second["trajectory_ref"]
        assert trajectory_of(old, files)[-1]["energy"] == pytest.approx(-3.0)
        # the energy model trains on the steps
        frames = frames_from_store(db, "k", max_frames_per_relaxation=8)
        assert len(frames) == 3 and frames[-1].info["step"] == "final"
        assert frames[-1].get_potential_energy() == pytest.approx(-3.5)
        # export --trajectory puts the steps back into the JSON
        out = export_structures([doc], "json", tmp_path / "out.json", with_trajectory=True,
                                files=files)
        import json

        (exported,) = json.loads(out[0].read_text())
        assert len(exported["trajectory"]) == 3
        with pytest.raises(DataError, match="give the store"):
            export_structures([doc], "json", tmp_path / "no.json", with_trajectory=True)
        # a damaged trajectory is one line, never a wrong frame
        files.path_of(second["trajectory_ref"]).write_bytes(b"junk")
        with pytest.raises(StoreError) as err:
            frames_from_store(db, "k")
        one_line(err.value)

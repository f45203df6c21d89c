"""A two-round loop through a real SLURM: round 2 reads round 1's models from the store.

The loop of :func:`conftest.with_two_round_loop` (elements, then binaries)
with a diffusion generator fine-tuned after round 1 and a MACE energy model
trained (and maybe promoted) after round 1, submitted with ``submit()`` and
run by SLURM jobs (``slurm_cluster`` fixture) that FireWorks' ``qlaunch`` or
jobflow-remote's runner queue. Every SLURM job starts with an empty cache of
its own (``export XTALLOOP_CACHE=$(mktemp -d ...)`` in the job script), and
every job runs in its own folder, so round 2 can get the fine-tuned checkpoint
(``store:sha256:...``) and the promoted model only from the store (GridFS on
the MongoDB server), as on a cluster whose nodes share no filesystem. With
FireWorks, round 1's job folders are even deleted before round 2 starts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import EmtRelaxAsDftMaker, assert_two_round_loop_done, with_two_round_loop
from mongodb_server import PASSWORD_ENV
from pymatgen.core import Lattice, Structure
from test_fireworks import assert_nothing_duplicated, cli
from test_jobflow_remote import jobflow_remote, write_config  # noqa: F401 (fixture)
from test_slurm_fireworks import BIN, Cluster
from test_slurm_jobflow_remote import (  # noqa: F401 (fixture)
    PROJECT,
    WORKER,
    RunnerThread,
    slurm_project,
)

from xtalloop.config import load_config
from xtalloop.hpc.submit import run_status, submit
from xtalloop.learn.registry import ModelRegistry
from xtalloop.models.trust import trusted
from xtalloop.store.results import open_results

LOOP_ID = "slurm-loop"


def base_generator(tmp_path: Path) -> Path:
    """A tiny diffusion checkpoint on fcc Cu, Au, Ag: what the user starts the loop from."""
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
           for el, a in (("Cu", 3.61), ("Au", 4.08), ("Ag", 4.09))]
    fcc += [s.get_primitive_structure() for s in fcc]
    return train(DiffusionConfig(model=ModelConfig(hidden_dim=16, n_layers=1, n_frequencies=2,
                                                   time_dim=8),
                                 noise=NoiseConfig(timesteps=20),
                                 train=TrainConfig(epochs=2, batch_size=3, save_every=0)),
                 structures_to_dataset(fcc), tmp_path / "base.pt", progress=False)


def with_learning(path: Path, base: Path) -> None:
    """Add to a two-round loop config a fine-tuned generator and a learned energy model."""
    with_two_round_loop(path)
    data = yaml.safe_load(path.read_text())
    data["compositions"] = ["Cu", "Au", "CuAu"]
    data["generate"]["seed"] = 1
    data["generate"]["sources"] = [{"n": 3}, {"kind": "diffusion", "n": 2,
                                              "checkpoint": str(base)}]
    # two DFT relaxations per element: round 1's energy model has enough to train on
    data["prefilter"] = {"model": "registry", "base_model": "emt", "top_k": 2, "steps": 100}
    data["learn"] = {
        "energy_model": {"enabled": True, "architecture": "mace", "ensemble_size": 1,
                         "epochs": 4, "num_channels": 8, "r_max": 4.0, "min_structures": 2,
                         "holdout_fraction": 0.3},
        "generator": {"enabled": True, "epochs": 2, "min_structures": 1},
    }
    path.write_text(yaml.safe_dump(data))


def fresh_cache_per_job(caches: Path) -> str:
    """The job-script line that gives each SLURM job an empty cache (under ``caches``)."""
    caches.mkdir(exist_ok=True)
    return f"export XTALLOOP_CACHE=$(mktemp -d {caches}/job.XXXXXX)"


class LoopCluster(Cluster):
    """:class:`test_slurm_fireworks.Cluster` whose queue jobs start with an empty cache each."""

    def qlaunch_into(self, launches: Path, query: dict | None = None) -> str:
        """One queue job that runs what is ready, in ``launches``; FireWorks matching ``query``.

        As :meth:`Cluster.qlaunch`, with one more line in the job script's
        ``pre_rocket``: the job's own empty ``$XTALLOOP_CACHE``.
        """
        launches.mkdir()
        self.launches = launches
        worker = yaml.safe_load((self.fw / "my_fworker.yaml").read_text())
        worker["query"] = json.dumps(query or {})  # FireWorks reads it as JSON
        (self.fw / "my_fworker.yaml").write_text(yaml.safe_dump(worker))
        qadapter = {**self.qadapter, "queue": self.slurm.partition, "account": "xtalloop-test",
                    "walltime": "00:10:00", "ntasks_per_node": 1, "job_name": "xtalloop-test",
                    "logdir": str(launches),
                    "rocket_launch": f"rlaunch -l {self.fw}/my_launchpad.yaml "
                                     f"-w {self.fw}/my_fworker.yaml rapidfire --max_loops 1",
                    "pre_rocket": "\n".join([f"source {BIN}/activate", "export OMP_NUM_THREADS=1",
                                             fresh_cache_per_job(launches.parent / "caches")])}
        assert qadapter.keys() == self.qadapter.keys()
        (self.fw / "my_qadapter.yaml").write_text(yaml.safe_dump(qadapter))
        before = set(self.slurm.jobs())
        out = self.slurm.run([str(BIN / "qlaunch"), "-l", f"{self.fw}/my_launchpad.yaml",
                              "-w", f"{self.fw}/my_fworker.yaml",
                              "-q", f"{self.fw}/my_qadapter.yaml", "--launch_dir",
                              str(launches), "rapidfire", "--nlaunches", "1"], env=self.env)
        new = set(self.slurm.jobs()) - before
        assert len(new) == 1, out
        job = new.pop()
        self.slurm.wait_until(lambda: job not in self.slurm.jobs(), 540,
                              f"queue job {job} did not finish")
        script = next(launches.rglob("FW_submit.script")).read_text()
        assert "export XTALLOOP_CACHE=$(mktemp -d " in script
        return job


@pytest.mark.slow
def test_two_round_loop_through_fireworks_qlaunch(tmp_path, slurm_cluster, mongo_config):
    started = time.monotonic()
    cluster = LoopCluster(tmp_path, slurm_cluster, mongo_config, LOOP_ID)
    with_learning(cluster.path, base_generator(tmp_path))
    config = cluster.config = load_config(cluster.path)
    assert list(config.compositions) == ["Cu", "Au", "CuAu"]
    record = submit(config, run_id=LOOP_ID,
                    relax_maker=EmtRelaxAsDftMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    assert record["kind"] == "loop"

    # round 1 only: this worker leaves the job that plans round 2 ("... round 2") queued
    cluster.qlaunch_into(tmp_path / "launches-1", {"name": {"$not": {"$regex": " round 2$"}}})
    with open_results(config.store) as db:
        [first] = db.rounds(LOOP_ID)
    assert first["status"] == "completed", first
    tuned = first["generator"]
    assert tuned["checkpoint"].startswith("store:sha256:")
    assert Path(tuned["path"]).is_relative_to(tmp_path / "launches-1")  # in its job's folder
    learned = first["energy_model"]
    assert learned["model_id"]
    shutil.rmtree(tmp_path / "launches-1")  # round 1's job folders: gone before round 2

    # round 2 on "another node": its own trust list, on which the user puts the model
    trust = tmp_path / "node-2" / "trusted.json"
    trust.parent.mkdir()
    cluster.env["XTALLOOP_TRUST"] = str(trust)
    out = subprocess.run(
        [str(BIN / "xtalloop"), "model", "trust", learned["model_id"],
         "--uri", f"{mongo_config.uri}/?authSource=admin", "--database", mongo_config.database,
         "--password-env", PASSWORD_ENV],
        env=cluster.env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and f"trusted registry model {learned['model_id']}" in out.stdout, (
        out.stdout + out.stderr)
    cluster.qlaunch_into(tmp_path / "launches-2")

    state = run_status(config, LOOP_ID)
    assert_two_round_loop_done(config, LOOP_ID, state)
    assert_nothing_duplicated(config)
    with open_results(config.store) as db:
        second = db.rounds(LOOP_ID)[1]
    assert second["generator_used"] == tuned["checkpoint"]  # a reference, not a path
    digest = tuned["checkpoint"].removeprefix("store:sha256:")
    caches = sorted((tmp_path / "caches").iterdir())
    assert len(caches) == 2  # one per SLURM job; round 2's fetched the checkpoint
    assert (caches[0] / "generators" / f"{digest}.pt").is_file() != (
        caches[1] / "generators" / f"{digest}.pt").is_file()
    if learned["promoted"]:  # round 2 prefiltered with the promoted model, fetched
        assert learned["model_id"] in second["energy_model_used"]
        assert any(learned["model_id"] in p.name for c in caches for p in c.rglob("*"))
    status = cli("status", str(cluster.path), "--run", LOOP_ID, env=cluster.env)
    assert status.returncode == 0, status.stderr
    print(f"fireworks loop through SLURM: {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_two_round_loop_through_jobflow_remote_slurm_worker(tmp_path, mongo_config,
                                                            slurm_cluster, slurm_project):  # noqa: F811
    started = time.monotonic()
    # each SLURM job: its own folder below the worker's work_dir, its own empty cache
    project_file = Path(slurm_project["base_dir"]).parent / f"{PROJECT}.yaml"
    worker = slurm_project["workers"][WORKER]
    worker["work_dir"] = str(tmp_path / "jfr-scratch")
    worker["pre_run"] += fresh_cache_per_job(tmp_path / "caches") + "\n"
    project_file.write_text(yaml.safe_dump(slurm_project))
    path = write_config(tmp_path, mongo_config, project=PROJECT)
    with_learning(path, base_generator(tmp_path))
    data = yaml.safe_load(path.read_text())
    data["submit"]["worker"] = WORKER
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    record = submit(config, run_id=LOOP_ID,
                    relax_maker=EmtRelaxAsDftMaker(steps=100, relax_kwargs={"fmax": 0.02}))
    assert record["kind"] == "loop" and record["submission"]["worker"] == WORKER

    runner = RunnerThread(max_seconds=900)
    runner.start()

    def round_one():
        with open_results(config.store) as db:
            rounds = db.rounds(LOOP_ID)
        return rounds[0] if rounds and rounds[0]["status"] == "completed" else None

    # as soon as round 1 is recorded, its jobs' folders go: the generator training
    # job's (the fine-tuned checkpoint) and the energy model's
    first = slurm_cluster.wait_until(round_one, 900, "round 1 did not complete")
    tuned, learned = first["generator"], first["energy_model"]
    assert tuned["checkpoint"].startswith("store:sha256:")
    scratch = tmp_path / "jfr-scratch"
    job_folder = Path(tuned["path"]).parent  # generator.pt: in its job's own folder
    assert job_folder.is_relative_to(scratch) and job_folder != scratch
    shutil.rmtree(job_folder)
    runner.finish()

    state = run_status(config, LOOP_ID)
    assert_two_round_loop_done(config, LOOP_ID, state)
    assert_nothing_duplicated(config)
    with open_results(config.store) as db:
        second = db.rounds(LOOP_ID)[1]
    assert second["generator_used"] == tuned["checkpoint"]
    digest = tuned["checkpoint"].removeprefix("store:sha256:")
    # the round-2 jobs that sampled and fine-tuned it fetched it into their own caches
    fetched = [c for c in (tmp_path / "caches").iterdir()
               if (c / "generators" / f"{digest}.pt").is_file()]
    assert len(fetched) >= 1
    # the SLURM job that trained it put it on the trust list that sbatch's environment
    # ($XTALLOOP_TRUST) names for every job: this host's, so the next jobs may load it
    with open_results(config.store) as db:
        files = ModelRegistry(db).get(learned["model_id"])["files"]
    assert files and {f["sha256"] for f in files} <= set(trusted())
    if learned["promoted"]:  # fetched from the store, trusted through the shared trust list
        assert learned["model_id"] in second["energy_model_used"]
        assert any(p.name.startswith(f"{learned['model_id']}-")
                   for c in (tmp_path / "caches").iterdir() for p in c.rglob("*"))
    print(f"jobflow-remote loop through SLURM: {time.monotonic() - started:.0f} s")

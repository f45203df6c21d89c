"""DFT failures: SCF non-convergence is retried with gentler mixing; what still fails is reported.

EMT stands in for GPAW's energies; the failures are GPAW's own exception
(``gpaw.KohnShamConvergenceError``), raised the way GPAW raises it: from the
calculator, in the middle of a relaxation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from jobflow import run_locally
from monty.json import MontyEncoder
from pymatgen.core import Structure

from conftest import EmtRelaxAsDftMaker, rocksalt
from xtalloop.config import RunConfig
from xtalloop.dft.gpaw import SCF_REMEDIES
from xtalloop.runner import execute
from xtalloop.store import job_store
from xtalloop.store.results import open_results

pytestmark = pytest.mark.usefixtures("require_gpaw")


class NonConvergingScf(Calculator):
    """A calculator whose SCF never converges, as GPAW reports it."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from gpaw import KohnShamConvergenceError

        raise KohnShamConvergenceError("Did not converge!  See text output for help.")


@dataclass
class HardScfMaker(EmtRelaxAsDftMaker):
    """SCF converges only with the remedy named ``converges_with`` (never, if None)."""

    converges_with: str | None = "mixing-0.02"

    def calculator_for(self, structure, remedy=None):
        if self.converges_with is None or remedy is None or remedy["name"] != self.converges_with:
            return NonConvergingScf()
        return super().calculator_for(structure, remedy)


def test_scf_failure_is_retried_with_gentler_mixing_and_recorded(tmp_path, store_config):
    maker = HardScfMaker(steps=50, relax_kwargs={"fmax": 0.05})
    job = maker.make(rocksalt("Cu", "Au", 4.2))
    store = job_store(store_config)
    responses = run_locally(job, store=store, root_dir=tmp_path, log=False, ensure_success=True)
    task = responses[job.uuid][1].output
    assert task.output.energy is not None
    assert task.tags == [f"scf-remedy:{r['name']}" for r in SCF_REMEDIES]


@dataclass
class NeverForCuAu(HardScfMaker):
    """SCF of CuAu never converges; everything else is EMT."""

    def calculator_for(self, structure, remedy=None):
        if structure.composition.reduced_formula == "CuAu":
            return NonConvergingScf()
        return EmtRelaxAsDftMaker.calculator_for(self, structure, remedy)


def test_scf_that_never_converges_fails_the_pick_not_the_round(tmp_path):
    config = RunConfig.model_validate({
        "name": "scf-fail", "compositions": ["CuAu", "Cu"],
        "generate": {"seed": 7, "max_atoms": 4, "sources": [{"n": 4}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 100},
        "store": {"path": str(tmp_path / "store")}, "output_dir": str(tmp_path / "runs"),
    })
    result = execute(config, progress=False, relax_maker=NeverForCuAu(steps=50))
    by_formula = {c["formula"]: c for c in result.compositions}
    assert by_formula["CuAu"]["validated"] == [] and by_formula["CuAu"]["failed"]
    assert by_formula["Cu"]["validated"]
    assert any("Did not converge" in m for m in result.failed_jobs), result.failed_jobs
    with open_results(config.store) as db:
        docs = db.find_validated()
    assert {d["formula"] for d in docs} == {"Cu"}
    assert docs[0]["dft"]["scf_remedies"] == []


@dataclass
class FailsOnceForCuAu(EmtRelaxAsDftMaker):
    """The first CuAu relaxation dies (as a job killed at its walltime would); the rest run."""

    marker: str = ""

    def calculator_for(self, structure, remedy=None):
        if structure.composition.reduced_formula == "CuAu" and not Path(self.marker).exists():
            Path(self.marker).touch()
            raise RuntimeError("job killed: walltime limit reached")
        return super().calculator_for(structure, remedy)


@pytest.mark.parametrize("replace_failed", [True, False])
def test_failed_pick_is_replaced_by_the_next_ranked_candidate(tmp_path, replace_failed):
    config = RunConfig.model_validate({
        "name": "replace", "compositions": ["CuAu", "Cu"],
        "generate": {"seed": 7, "max_atoms": 4, "sources": [{"n": 6}]},
        "prefilter": {"model": "emt", "top_k": 1, "steps": 100},
        "dft": {"replace_failed": replace_failed},
        "store": {"path": str(tmp_path / "store")}, "output_dir": str(tmp_path / "runs"),
    })
    maker = FailsOnceForCuAu(steps=50, marker=str(tmp_path / "failed-once"))
    result = execute(config, progress=False, relax_maker=maker)
    cuau = {c["formula"]: c for c in result.compositions}["CuAu"]
    [failure] = cuau["failed"]
    assert failure["rank"] == 0
    if not replace_failed:
        assert cuau["validated"] == [] and failure.get("replaced_by") is None
        return
    assert failure["replaced_by"] == 2
    [validated] = cuau["validated"]
    assert validated["e_above_hull"] is not None
    assert cuau["funnel"]["dft_replacements"] == 1 and cuau["funnel"]["dft_validated"] == 1
    with open_results(config.store) as db:
        [doc] = db.find_validated(formula="CuAu")
    assert doc["prefilter"]["rank"] == 1  # the second-ranked candidate
    assert any("walltime" in m for m in result.failed_jobs)


def test_relaxation_out_of_steps_goes_on_from_its_last_structure(tmp_path, store_config):
    """Three BFGS steps do not relax a squeezed CuAu; the continuations finish the job."""
    maker = EmtRelaxAsDftMaker(steps=3, step_limit_restarts=8, relax_kwargs={"fmax": 0.05})
    job = maker.make(rocksalt("Cu", "Au", 4.0))
    responses = run_locally(job, store=job_store(store_config), root_dir=tmp_path, log=False,
                            ensure_success=True)
    task = responses[job.uuid][1].output
    continued = [t for t in task.tags if t.startswith("relax-continued:")]
    assert continued and maker.parse_output(task)["converged"]
    assert task.output.n_steps > 3  # the trajectory holds every step, not just the last run
    assert maker.parse_output(task)["relax_continuations"] == len(continued)

    single = EmtRelaxAsDftMaker(steps=3, step_limit_restarts=0, relax_kwargs={"fmax": 0.05})
    job = single.make(rocksalt("Cu", "Au", 4.0))
    responses = run_locally(job, store=job_store(store_config), root_dir=tmp_path, log=False)
    assert not single.parse_output(responses[job.uuid][1].output)["converged"]


KILL_FLAG_ENV = "XTALLOOP_TEST_KILL_FLAG"


class DyingEmt(EMT):
    """EMT that kills its own process (SIGKILL, like a walltime) after a few calculations."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def calculate(self, *args, **kwargs):
        self.calls += 1
        flag = os.environ.get(KILL_FLAG_ENV)
        if self.calls > self.after and flag and Path(flag).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(*args, **kwargs)


@dataclass
class KilledMidRelaxMaker(EmtRelaxAsDftMaker):
    """EMT "DFT" whose process is killed at its 5th ionic step while the kill flag exists."""

    def calculator_for(self, structure, remedy=None):
        return DyingEmt(after=5)


def test_killed_relaxation_restarts_from_its_last_ionic_step(tmp_path, store_config):
    maker = KilledMidRelaxMaker(steps=80, relax_kwargs={"fmax": 0.02},
                                checkpoint_store=store_config.model_dump())
    start = rocksalt("Cu", "Au", 4.0)
    job = maker.make(start)
    (tmp_path / "job.json").write_text(json.dumps(job.as_dict(), cls=MontyEncoder))
    flag = tmp_path / "kill-now"
    flag.touch()
    script = (
        "import json, sys\n"
        "from jobflow import Job, run_locally\n"
        "from monty.json import MontyDecoder\n"
        "from xtalloop.config import StoreConfig\n"
        "from xtalloop.store import job_store\n"
        "job = MontyDecoder().decode(open(sys.argv[1]).read())\n"
        "run_locally(job, store=job_store(StoreConfig(**json.loads(sys.argv[2]))),\n"
        "            root_dir=sys.argv[3], log=False, create_folders=True)\n"
    )
    env = {**os.environ, KILL_FLAG_ENV: str(flag),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    killed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "job.json"),
         json.dumps(store_config.model_dump()), str(tmp_path / "first")],
        env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with open_results(store_config) as db:
        saved = db.get_checkpoint(job.uuid)
    assert saved is not None and saved["step"] >= 3
    assert Structure.from_dict(saved["structure"]) != start

    flag.unlink()  # the rerun (FireWorks' rerun, jobflow-remote's retry) is not killed
    responses = run_locally(job, store=job_store(store_config), root_dir=tmp_path / "second",
                            log=False, create_folders=True, ensure_success=True)
    task = responses[job.uuid][1].output
    assert f"restarted-from-step:{saved['step']}" in task.tags
    first_frame = task.objects["trajectory"].get_structure(0)
    assert first_frame.lattice.abc == pytest.approx(
        Structure.from_dict(saved["structure"]).lattice.abc, abs=1e-6)
    assert maker.parse_output(task)["converged"]
    with open_results(store_config) as db:
        assert db.get_checkpoint(job.uuid) is None  # finished: the checkpoint is gone

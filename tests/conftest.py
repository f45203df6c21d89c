"""Shared fixtures: prototype structures, a temporary store, a cheap "DFT" maker, a MongoDB server."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from mongodb_server import PASSWORD, PASSWORD_ENV, USER, Server, free_port
from xtalloop.config import StoreConfig
from xtalloop.dft.gpaw import GpawRelaxMaker


def fcc(a: float) -> Lattice:
    """Primitive fcc lattice of cubic constant ``a``."""
    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def rocksalt(a_el: str, b_el: str, a: float) -> Structure:
    return Structure(fcc(a), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]])


def zincblende(a_el: str, b_el: str, a: float) -> Structure:
    return Structure(fcc(a), [a_el, b_el], [[0, 0, 0], [0.25, 0.25, 0.25]])


def diamond(el: str, a: float) -> Structure:
    return Structure(fcc(a), [el, el], [[0, 0, 0], [0.25, 0.25, 0.25]])


@pytest.fixture(scope="session", autouse=True)
def test_trust_list(tmp_path_factory) -> Iterator[Path]:
    """Models trained by tests go on a temporary trust list, never on the user's own."""
    path = tmp_path_factory.mktemp("trust") / "trusted.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XTALLOOP_TRUST", str(path))
        yield path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread avoids oversubscribing a shared CPU (much faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def store_config(tmp_path) -> StoreConfig:
    """An empty embedded store in a temporary folder."""
    return StoreConfig(path=str(tmp_path / "store"))


@dataclass
class EmtRelaxAsDftMaker(GpawRelaxMaker):
    """The validation maker with ASE's EMT in place of GPAW.

    For tests of the workflow wiring, storage and queries where the physics
    does not matter; the real GPAW path has its own tests.
    """

    name: str = "EMT relax"
    progress: bool = False

    def calculator_for(self, structure, remedy=None):
        from ase.calculators.emt import EMT

        return EMT()

    def settings_for(self, structure):
        return {**super().settings_for(structure), "code": "emt"}

    def settings_key(self) -> str:
        return "emt-test"

    def _get_calculator(self):
        from ase.calculators.emt import EMT

        return EMT()


FLAG_ENV = "XTALLOOP_TEST_FAIL_FLAG"

@dataclass
class FlakyEmtMaker(EmtRelaxAsDftMaker):
    """EMT "DFT" that fails for CuAu while the file named by $XTALLOOP_TEST_FAIL_FLAG exists."""

    def calculator_for(self, structure, remedy=None):
        flag = os.environ.get(FLAG_ENV)
        if structure.composition.reduced_formula == "CuAu" and flag and Path(flag).exists():
            raise RuntimeError("SCF did not converge in 100 iterations")
        return super().calculator_for(structure, remedy)


@pytest.fixture
def emt_dft_maker() -> EmtRelaxAsDftMaker:
    return EmtRelaxAsDftMaker(steps=100, relax_kwargs={"fmax": 0.02})


def gpaw_available() -> bool:
    try:
        import gpaw  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def require_gpaw() -> None:
    """Skip without GPAW on a workstation; fail in CI, where `make test` installs it."""
    if gpaw_available():
        return
    if os.environ.get("CI"):
        pytest.fail("GPAW is not importable in CI: `make test` should have installed it")
    pytest.skip("GPAW is not installed (pip install 'xtalloop[dft]')")


# -- a MongoDB server -------------------------------------------------------------


@pytest.fixture(scope="session")
def mongodb_server(tmp_path_factory) -> Iterator[Server]:
    """A SecantusDB server with auth on and user ``xtal`` (readWrite on every database)."""
    if importlib.util.find_spec("secantus") is None:
        if os.environ.get("CI"):
            pytest.fail("secantusdb is not installed (pip install secantusdb, or `make test`)")
        pytest.skip("secantusdb is not installed: `pip install secantusdb` to test the "
                    "MongoDB backend against a real server")
    import pymongo

    server = Server(tmp_path_factory.mktemp("secantusdb"), free_port())
    server.start(auth=False)
    try:
        client = pymongo.MongoClient("127.0.0.1", server.port, serverSelectionTimeoutMS=10000)
        client.admin.command("createUser", USER, pwd=PASSWORD,
                             roles=[{"role": "readWriteAnyDatabase", "db": "admin"}])
        client.close()
    finally:
        server.stop()
    server.start(auth=True)
    yield server
    server.stop()


@pytest.fixture
def mongo_password(monkeypatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return PASSWORD


@pytest.fixture
def mongo_config(mongodb_server, mongo_password, request) -> StoreConfig:
    """A fresh database on the test server, one per test."""
    return StoreConfig(backend="mongodb", uri=f"mongodb://{USER}@127.0.0.1:{mongodb_server.port}",
                       database=f"t_{request.node.name[:40]}".replace("[", "_").replace("]", ""),
                       auth_source="admin", password_env=PASSWORD_ENV)


# -- a SLURM cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster on free ports, stopped (its jobs and daemons killed) after.

    Yields a :class:`slurm_cluster.SlurmCluster`: ``.env`` (os.environ plus
    SLURM_CONF and PATH) for every subprocess that talks to it, ``.partition``,
    ``.conf``, ``.dir`` (daemon logs), ``.run(cmd)``, ``.jobs()`` and
    ``.wait_until(...)``; see tests/slurm_cluster.py. Skipped where SLURM is
    not installed or not root (slurmd runs jobs as their user).
    """
    from slurm_cluster import SlurmCluster, slurm_missing

    why = slurm_missing() or (None if os.geteuid() == 0 else
                              "a local SLURM cluster runs its daemons as root")
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:  # whatever stop left (a failed stop, a hung job step) goes too
            for pid in cluster.daemon_pids():
                os.kill(pid, 9)


# --- a two-round loop submitted to a workflow manager (FireWorks, jobflow-remote) ---------


def with_two_round_loop(path: Path) -> None:
    """Add to a run config file a loop: elements (round 1), then binaries (round 2)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    data["loop"] = {"schedule": [{"arities": [1]}, {"arities": [2]}]}
    path.write_text(yaml.safe_dump(data))


def assert_two_round_loop_done(config, loop_id: str, state: dict) -> None:
    """Both rounds of :func:`with_two_round_loop` on Cu, Au, CuAu ran and were recorded."""
    from xtalloop.store.results import open_results

    with open_results(config.store) as db:
        rounds = db.rounds(loop_id)
        loop = db.get_run(loop_id)
    assert [r["status"] for r in rounds] == ["completed", "completed"]
    assert [r["compositions"] for r in rounds] == [["Cu", "Au"], ["CuAu"]]
    assert loop["status"] == "completed" and loop["stopped_by"] == "all 2 rounds done"
    assert rounds[1]["dft_calls"] >= 1
    assert state["counts"]["failed"] == 0 and state["counts"]["waiting"] == 0
    assert {d["formula"] for d in state["validated"]} == {"Cu", "Au", "CuAu"}
    assert [r["round"] for r in state["rounds"]] == [1, 2]


# --- a tiny Wyckoff generator checkpoint ---------------------------------------------


@pytest.fixture(scope="session")
def tiny_wyckoff(tmp_path_factory) -> Path:
    """A Wyckoff checkpoint trained for seconds on 40 MP-20 crystals (wyckoff_checkpoint.py)."""
    from wyckoff_checkpoint import MP20_VAL, build_tiny_checkpoint

    if not MP20_VAL.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the shared data is not here: {MP20_VAL}")
        pytest.skip(f"the shared data is not here: {MP20_VAL}")
    return build_tiny_checkpoint(tmp_path_factory.mktemp("wyckoff") / "tiny.pt")

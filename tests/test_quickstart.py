"""The quickstart finds the known ground-state structure types of its binaries.

Both tests are in the slow suite (``make test-slow``): the ML stage alone
(generate + CHGNet prefilter + DIEP re-ranking, about 4 minutes on 2 cores; the
first pick must be the ground state) and the whole quickstart with GPAW (the
DFT-validated structures and the query). The default suite checks the same
pieces on smaller inputs (``test_ranker.py``, ``test_cli.py``).
"""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import diamond, rocksalt, zincblende
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from xtalloop.config import load_config
from xtalloop.generators import build_generator
from xtalloop.generators.base import derived_seeds
from xtalloop.rankers.ml_ranker import MLRanker

QUICKSTART = Path(__file__).parent.parent / "configs" / "quickstart.yaml"

GROUND_STATES = {
    "NaCl": rocksalt("Na", "Cl", 5.64),
    "MgO": rocksalt("Mg", "O", 4.21),
    "Si": diamond("Si", 5.43),
    "GaAs": zincblende("Ga", "As", 5.65),
}


def matches(structure: Structure, formula: str) -> bool:
    return StructureMatcher().fit(structure, GROUND_STATES[formula])


@pytest.mark.slow
def test_ml_prefilter_recovers_ground_state_prototypes():
    config = load_config(QUICKSTART)
    ranker = MLRanker(model=config.prefilter.model, fmax=config.prefilter.fmax,
                      steps=config.prefilter.steps, top_k=config.prefilter.top_k,
                      rerank_model=config.prefilter.rerank_model,
                      rerank_top=config.prefilter.rerank_top, progress=False)
    found = {}
    for composition in config.parsed_compositions():
        formula = composition.reduced_formula
        pool = []
        sources = config.generate.sources
        for source, seed in zip(sources, derived_seeds(config.generate.seed, len(sources)),
                                strict=True):
            generator = build_generator(source.model_dump(), config.generate.max_atoms)
            pool += generator.generate(composition, source.n, seed)
        ranking = ranker.rank(composition, pool)
        found[formula] = matches(ranking.picks[0].structure, formula)
    assert all(found.values()), found  # diamond Si too (issue 18)


@pytest.mark.slow
@pytest.mark.dft
def test_quickstart_end_to_end(tmp_path, require_gpaw):
    store, runs = tmp_path / "store", tmp_path / "runs"
    run = subprocess.run(
        [sys.executable, "-m", "xtalloop.cli", "run", str(QUICKSTART), "--store", str(store),
         "--output-dir", str(runs), "--no-progress"],
        capture_output=True, text=True, timeout=3600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Validated structures" in run.stdout

    from xtalloop.config import StoreConfig
    from xtalloop.store.results import ResultsDB

    recovered = {}
    with ResultsDB(StoreConfig(path=str(store))) as db:
        for formula in GROUND_STATES:
            docs = db.find_validated(formula=formula)  # most stable first
            recovered[formula] = bool(docs) and matches(
                Structure.from_dict(docs[0]["structure"]), formula)
    assert all(recovered.values()), recovered

    query = subprocess.run(
        [sys.executable, "-m", "xtalloop.cli", "query", "--formula", "NaCl", "--store", str(store)],
        capture_output=True, text=True,
    )
    assert query.returncode == 0 and "NaCl" in query.stdout and "Fm-3m" in query.stdout
    run_dir = next(runs.iterdir())
    assert (run_dir / "funnel.png").exists() and list((run_dir / "cifs").glob("NaCl_*.cif"))

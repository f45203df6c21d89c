"""The generate job: candidates from every configured generator, one pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Maker, job
from tqdm.auto import tqdm

from xtalloop.composition import parse_composition
from xtalloop.generators.base import Candidate, derived_seeds
from xtalloop.generators.factory import build_generator


@dataclass
class GenerateMaker(Maker):
    """Generate candidate structures for one composition.

    Parameters
    ----------
    name
        Job name.
    sources
        Generator configurations (dumped ``generate.sources`` entries of a run
        config): each has a ``kind``, a number ``n`` of candidates and its settings.
    max_atoms
        Largest cell any generator may return.
    progress
        Show a progress bar over generators.
    """

    name: str = "generate"
    sources: list[dict[str, Any]] = field(
        default_factory=lambda: [{"kind": "random_symmetric", "n": 24}]
    )
    max_atoms: int = 8
    progress: bool = True

    @job
    def make(self, formula: str, seed: int = 0) -> list[Candidate]:
        """Candidates of ``formula``; the same ``seed`` gives the same pool.

        Each generator gets its own child seed of ``seed`` (recorded in the
        candidates' provenance), so adding a generator leaves the others'
        candidates unchanged.
        """
        composition = parse_composition(formula, charge_balance="off")
        seeds = derived_seeds(seed, len(self.sources))
        pool: list[Candidate] = []
        bar = tqdm(total=sum(s.get("n", 1) for s in self.sources),
                   desc=f"{composition.reduced_formula}: generate", unit="struct",
                   disable=not self.progress)
        with bar:
            for source, child_seed in zip(self.sources, seeds, strict=True):
                generator = build_generator(fetched(source), self.max_atoms)
                made = generator.generate(composition, source.get("n", 1), child_seed)
                pool.extend(made)
                bar.update(source.get("n", 1))
        return pool


def fetched(source: dict[str, Any]) -> dict[str, Any]:
    """``source`` with a Wyckoff checkpoint held in the results store fetched to this machine.

    A loop hands the next round the checkpoint it fine-tuned as a reference
    ``store:sha256:<digest>``, with the store to read it from under ``store``
    (:func:`xtalloop.workflows.loop._read_checkpoints_from`). The diffusion
    generator fetches such a file itself; the Wyckoff generator reads a path,
    so the file is fetched into this machine's cache here, where the job runs.
    """
    if source.get("kind") != "wyckoff" or "store" not in source:
        return source
    from xtalloop.store.files import local_copy

    settings = {k: v for k, v in source.items() if k != "store"}
    if settings.get("checkpoint"):
        settings["checkpoint"] = local_copy(settings["checkpoint"], source["store"],
                                            suffix=".pt", kind="generators")
    return settings

"""Planning an active-learning loop: what the next round runs, and when the loop stops.

Pure functions of the configuration and of the records earlier rounds left in
the store, so a killed loop plans the same round again when it resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Composition

from xtalloop.config import LoopConfig, RunConfig


@dataclass
class RoundPlan:
    """What round ``round`` of a loop runs (or why the loop stops instead).

    Parameters
    ----------
    round
        1-based round number.
    stop
        Why the loop stops before this round (``None``: it runs).
    arities
        Numbers of distinct elements this round covers (``None``: all).
    compositions
        Reduced formulas to run, in order.
    done
        Formulas of this round already validated before an interruption.
    deferred
        Formulas of the stage left out by the DFT budget.
    top_k
        Picks per composition sent to DFT.
    seed
        Generator seed of the round.
    """

    round: int
    stop: str | None = None
    arities: list[int] | None = None
    compositions: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    top_k: int = 1
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, as stored in the round record."""
        return {"round": self.round, "stop": self.stop, "arities": self.arities,
                "compositions": self.compositions, "done": self.done,
                "deferred": self.deferred, "top_k": self.top_k, "seed": self.seed}


def round_seed(base_seed: int, round_index: int) -> int:
    """Generator seed of round ``round_index``: new candidates every round, reproducibly."""
    return base_seed + 1000 * (round_index - 1)


def stop_reason(loop: LoopConfig, rounds: list[dict[str, Any]], round_index: int,
                stable_formulas: set[str]) -> str | None:
    """Why the loop stops before round ``round_index`` (``None``: it goes on).

    Parameters
    ----------
    loop
        The loop settings.
    rounds
        Records of the completed rounds, in order.
    round_index
        The round about to start (1-based).
    stable_formulas
        Reduced formulas that have a validated structure within
        ``loop.stable_within`` of the DFT hull.
    """
    if round_index > loop.total_rounds:
        return f"all {loop.total_rounds} rounds done"
    spent = sum(r.get("dft_calls", 0) for r in rounds)
    if loop.max_dft_calls is not None and spent >= loop.max_dft_calls:
        return f"DFT budget spent ({spent} of {loop.max_dft_calls} calls)"
    if loop.patience is not None and len(rounds) >= loop.patience:
        if all(r.get("new_stable", 0) == 0 for r in rounds[-loop.patience:]):
            return f"no new stable structure in the last {loop.patience} round(s)"
    if loop.targets:
        wanted = {Composition(t).reduced_formula for t in loop.targets}
        if wanted <= stable_formulas:
            return f"targets reached: {', '.join(sorted(wanted))}"
    return None


def plan_round(config: RunConfig, rounds: list[dict[str, Any]], round_index: int,
               stable_formulas: set[str], done: set[str] | None = None,
               spent: int = 0) -> RoundPlan:
    """The plan of round ``round_index`` of ``config``'s loop.

    Parameters
    ----------
    config
        A run configuration with a ``loop`` section.
    rounds
        Records of the completed rounds, in order.
    round_index
        1-based round number.
    stable_formulas
        Formulas that already have a stable validated structure; under a tight
        DFT budget, compositions without one go first.
    done
        Formulas of this round already validated (a resumed round skips them).
    spent
        DFT calls this round already made (a resumed round's first attempt): they
        count against the round's budget, or a resumed round would spend it again.
    """
    loop = config.loop or LoopConfig()
    seed = round_seed(config.generate.seed, round_index)
    reason = stop_reason(loop, rounds, round_index, stable_formulas)
    if reason:
        return RoundPlan(round_index, stop=reason, seed=seed)
    stage = loop.stage(round_index)
    formulas = [c.reduced_formula for c in config.parsed_compositions()]
    if stage is not None:
        formulas = [f for f in formulas if len(Composition(f).elements) in stage.arities]
    done = set(done or ())
    todo = [f for f in formulas if f not in done]
    top_k = config.prefilter.top_k
    deferred: list[str] = []
    budget = loop.dft_budget_per_round
    if budget is not None:
        budget = max(0, budget - spent)
    if loop.max_dft_calls is not None:
        left = max(0, loop.max_dft_calls - spent - sum(r.get("dft_calls", 0) for r in rounds))
        budget = left if budget is None else min(budget, left)
    if budget is not None and todo and budget < len(todo) * top_k:
        if budget < len(todo):  # compositions still without a stable structure go first
            ordered = sorted(todo, key=lambda f: (f in stable_formulas, todo.index(f)))
            deferred = [f for f in todo if f not in ordered[:budget]]
            todo = [f for f in todo if f in ordered[:budget]]
        top_k = max(1, budget // len(todo)) if todo else top_k
    return RoundPlan(round_index, arities=list(stage.arities) if stage else None,
                     compositions=todo, done=sorted(done & set(formulas)),
                     deferred=deferred, top_k=top_k, seed=seed)


#: Source kinds whose checkpoint a loop fine-tunes and hands on to the next round.
LEARNED_KINDS: tuple[str, ...] = ("diffusion", "wyckoff")


def learned_source(sources: tuple[Any, ...] | list[Any]) -> Any | None:
    """The source whose generator the loop fine-tunes: the first diffusion or Wyckoff one.

    One checkpoint is learned per loop, so with both kinds configured only the
    first one's sources sample the fine-tuned checkpoint (a diffusion model
    cannot read a Wyckoff checkpoint, nor the other way round).
    """
    return next((s for s in sources if s.kind in LEARNED_KINDS), None)


def round_config(config: RunConfig, plan: RoundPlan, generator_checkpoint: str | None
                 ) -> RunConfig:
    """The run configuration of one round: its compositions, seed, picks and generator.

    Parameters
    ----------
    config
        The loop's configuration.
    plan
        The round's plan.
    generator_checkpoint
        Replaces the checkpoint of the sources of the learned kind (see
        :func:`learned_source`; the one the previous round fine-tuned);
        ``None`` keeps the configured one.
    """
    learned = learned_source(config.generate.sources)
    sources = tuple(
        s.model_copy(update={"checkpoint": generator_checkpoint})
        if generator_checkpoint and learned is not None and s.kind == learned.kind else s
        for s in config.generate.sources
    )
    return config.model_copy(update={
        "compositions": tuple(plan.compositions),
        "generate": config.generate.model_copy(update={"seed": plan.seed, "sources": sources}),
        "prefilter": config.prefilter.model_copy(update={"top_k": plan.top_k}),
    })


def summarise_round(results: list[dict[str, Any]], stable_within: float,
                    current_hull: dict[str, float | None]) -> dict[str, Any]:
    """Counts of one round from its composition results.

    Parameters
    ----------
    results
        The round's composition results (``ResultsDB.composition_results``).
    stable_within
        eV/atom above the DFT hull that counts as stable.
    current_hull
        uuid → energy above the hull now (later structures can move the hull).

    Returns
    -------
    dict
        ``funnel`` (generated, relaxed, picked, dft_validated, stable),
        ``dft_calls`` (DFT relaxations of picks, replacements included),
        ``validated``, ``stable``, ``new_stable`` (stable and not known
        before this round), ``hit_rate`` (stable / DFT calls) and the
        uuids of the stable structures.
    """
    funnel = dict.fromkeys(("generated", "relaxed", "picked"), 0)
    stable_ids, new_stable, dft_calls, validated = [], 0, 0, 0
    for result in results:
        for key in funnel:
            funnel[key] += int(result.get("funnel", {}).get(key, 0))
        rows = result.get("validated", [])
        dft_calls += len(rows) + len(result.get("failed", []))
        validated += len(rows)
        for row in rows:
            e_hull = current_hull.get(row["uuid"], row.get("e_above_hull"))
            if e_hull is not None and e_hull <= stable_within:
                stable_ids.append(row["uuid"])
                new_stable += row.get("outcome") in ("new", "improved")
    funnel["dft_validated"] = validated
    funnel["stable"] = len(stable_ids)
    return {"funnel": funnel, "dft_calls": dft_calls, "validated": validated,
            "stable": len(stable_ids), "new_stable": new_stable,
            "hit_rate": len(stable_ids) / dft_calls if dft_calls else None,
            "stable_ids": stable_ids}

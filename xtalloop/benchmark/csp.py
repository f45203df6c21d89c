"""Crystal-structure-prediction benchmark: match rate and RMSE as DiffCSP reports them.

For each sampled row of a structure table the generator is asked for
``max(ks)`` candidates of the row's reduced composition (nothing else about
the ground truth), the candidates are optionally relaxed, and each is
compared with the ground truth by ``StructureMatcher(stol=0.5, ltol=0.3,
angle_tol=10)``. A row counts as matched at ``k`` if any of its first ``k``
candidates matches; the RMSE at ``k`` is the mean, over matched rows, of the
smallest normalised RMS distance among those first ``k`` candidates. With a
relaxation, each candidate's final energy per atom is kept and ``ranked@1``
(``ranked_match_rate["1"]``) counts the rows whose lowest-energy candidate
(of all ``max(ks)``) matches: the pick a user gets before any DFT.
``window_match_rate["1"]`` counts the rows whose earliest candidate within
:data:`RANK_WINDOW` of the lowest energy matches (energy first, then the
generator's own ranking among near-ties). ``pair_match_rate["2"]`` counts the
rows where the generator's first relaxed candidate or the lowest-energy one
matches: the loop's two picks with ``prefilter.prior_picks: 1``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from xtalloop.benchmark.csp_scoring import (  # noqa: F401  (re-exported: one import for users)
    RANK_WINDOW,
    degenerate,
    ranked_hit,
    rms_distance,
    running_line,
    summarise,
)
from xtalloop.benchmark.journal import Journal
from xtalloop.benchmark.relax import Relax
from xtalloop.errors import DataError, XtalloopError
from xtalloop.generators.base import Generator, derived_seeds
from xtalloop.generators.prototype_substitution import read_structure_csv

logger = logging.getLogger(__name__)

ARITY_LABELS: tuple[str, ...] = ("1", "2", "3", "4", "5+")
MATCHER_SETTINGS: dict[str, float] = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10}


def arity_label(n_elements: int) -> str:
    """Group label for a number of distinct elements: ``"1"`` ... ``"4"``, ``"5+"``."""
    return str(n_elements) if n_elements < 5 else "5+"


def run_csp_benchmark(
    data_csv: str | os.PathLike,
    generator: Generator,
    n_compositions: int,
    ks: Sequence[int] = (1, 20),
    seed: int = 0,
    relax: Relax | None = None,
    progress: bool = True,
    journal: str | os.PathLike | None = None,
    resume: bool = False,
    run_key: dict[str, Any] | None = None,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Match rate and RMSE of a generator's candidates against known structures.

    Parameters
    ----------
    data_csv
        Table of ground-truth structures with a ``cif`` column (the shared
        data's shape; ``material_id`` is reported when present).
    generator
        Any :class:`~xtalloop.generators.base.Generator`; it sees only the
        reduced composition of each row.
    n_compositions
        Rows to sample (all rows if the table is smaller).
    ks
        Numbers of candidates at which to report the match rate and RMSE.
    seed
        Seeds the row sample and, through derived seeds, every generator call.
    relax
        Optional :data:`~xtalloop.benchmark.relax.Relax`, called once per row
        with all its candidates; it returns the relaxed structures (same order,
        same length), which are matched instead, and each one's energy per atom
        (None or NaN where it failed), which ranks them for ``ranked@1``.
    progress
        Show a tqdm progress bar over compositions.
    journal
        JSON-lines file each finished composition's record is appended to
        (:class:`~xtalloop.benchmark.journal.Journal`), so a killed run loses
        at most one composition.
    resume
        Take the compositions already in ``journal`` from it instead of
        computing them again; the journal must come from a run with the same
        data, generator settings, seed, sample size and ``run_key``.
    run_key
        Settings the generator and ``relax`` do not report themselves (e.g. the
        relaxation's model and limits) that a resumed journal must match.
    report
        Called with one line per composition computed (position, formula, whether it
        matched, the running figures and the time left at this pace), for runs
        without a progress bar (a log file of a run of hours); the progress bar
        shows the running figures itself.

    Returns
    -------
    dict
        JSON-serialisable results: ``match_rate`` and ``rmse`` keyed by ``str(k)``
        and ``ranked_match_rate`` keyed by ``"1"`` (None without ``relax``),
        the same under ``per_arity[label]`` for labels ``"1"``..``"4"``, ``"5+"``
        (``None`` where undefined), timings, ``n_zero_candidates``,
        ``n_failed``, the sampled rows skipped for an unreadable CIF
        (``unreadable_targets``) and one record per composition under
        ``per_composition`` (with ``energy_per_atom`` per candidate when relaxed).

    Raises
    ------
    DataError
        If the table is missing or unreadable, or no sampled row has a readable
        CIF (rows with one are skipped and counted).
    ValueError
        If ``n_compositions`` or ``ks`` are not positive.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from tqdm.auto import tqdm

    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if n_compositions < 1:
        raise ValueError(f"n_compositions must be positive, got {n_compositions}")
    k_max = ks[-1]

    table = read_structure_csv(data_csv)
    rng = np.random.default_rng(seed)
    n_rows = min(n_compositions, len(table))
    if n_rows < n_compositions:
        logger.warning("%s has only %d rows; using all of them", data_csv, n_rows)
    chosen = sorted(int(i) for i in rng.choice(len(table), size=n_rows, replace=False))
    row_seeds = derived_seeds(seed, n_rows)
    matcher = StructureMatcher(**MATCHER_SETTINGS)
    targets, unreadable = _ground_truths(table, chosen, row_seeds, data_csv)

    log = None
    if journal is not None:
        key = {"data_csv": str(Path(data_csv).resolve()),
               "generator": getattr(generator, "name", type(generator).__name__),
               "generator_settings": _settings(generator), "seed": seed,
               "n_compositions": n_compositions, "k_max": k_max, "relaxed": relax is not None,
               **(run_key or {})}
        log = Journal(journal, key, resume)
    records: list[dict[str, Any]] = []
    n_resumed = 0
    computed_s: list[float] = []
    bar = tqdm(targets, desc="CSP benchmark", unit="comp", disable=not progress)
    for row, row_seed, truth in bar:
        if log is not None and row in log.done:
            records.append(log.done[row])
            n_resumed += 1
            continue
        started = time.perf_counter()
        composition = truth.composition.element_composition.reduced_composition
        record: dict[str, Any] = {
            "material_id": _material_id(table, row),
            "formula": composition.reduced_formula,
            "arity": arity_label(len(composition)),
            "n_candidates": 0,
            "rms": [],
            "energy_per_atom": None,
            "ranked_match": None,
            "error": None,
            "row": row,
        }
        t0 = time.perf_counter()
        try:
            candidates = generator.generate(composition, k_max, row_seed)[:k_max]
        except XtalloopError:
            raise  # configuration problems (e.g. a missing reference set) fail every row
        except Exception as exc:  # one failing composition must not end a long benchmark
            logger.warning("generator failed on %s: %s", record["formula"], exc)
            record["error"] = f"{type(exc).__name__}: {exc}"
            candidates = []
        record["generate_s"] = time.perf_counter() - t0
        structures = [c.structure for c in candidates]
        record["n_candidates"] = len(structures)
        if structures and relax is not None:
            t0 = time.perf_counter()
            relaxed, energies = relax(list(structures))
            if len(relaxed) != len(structures) or len(energies) != len(structures):
                raise ValueError(f"relax returned {len(relaxed)} structures and "
                                 f"{len(energies)} energies for {len(structures)} candidates")
            structures = list(relaxed)
            record["energy_per_atom"] = [_finite(e) for e in energies]
            record["relax_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        record["rms"] = [rms_distance(matcher, s, truth) for s in structures]
        if relax is not None:
            record["ranked_match"] = ranked_hit(record)
        record["match_s"] = time.perf_counter() - t0
        record["wall_s"] = time.perf_counter() - started
        records.append(record)
        if log is not None:
            log.append(record)
        computed_s.append(record["wall_s"])
        running = running_line(records, k_max, relax is not None)
        if progress:
            bar.set_postfix_str(running, refresh=False)
        elif report is not None:
            report(_progress_line(record, len(records), len(targets), k_max, running,
                                  computed_s))

    def total(field: str) -> float:  # journaled records count with their own times
        return float(sum(r.get(field, 0.0) for r in records))

    n_generated = sum(r["n_candidates"] for r in records)

    ranked = relax is not None
    overall = summarise(records, ks, ranked)
    per_arity = {
        label: summarise([r for r in records if r["arity"] == label], ks, ranked)
        for label in ARITY_LABELS
    }
    return {
        "data_csv": str(data_csv),
        "generator": getattr(generator, "name", type(generator).__name__),
        "generator_settings": _settings(generator),
        "n_compositions": len(records),
        "ks": ks,
        "seed": seed,
        "relaxed": relax is not None,
        "matcher": dict(MATCHER_SETTINGS),
        "match_rate": overall["match_rate"],
        "rmse": overall["rmse"],
        "ranked_match_rate": overall["ranked_match_rate"],
        "window_match_rate": overall["window_match_rate"],
        "pair_match_rate": overall["pair_match_rate"],
        "rank_window_ev": RANK_WINDOW,
        "per_arity": per_arity,
        "n_generated": n_generated,
        "n_zero_candidates": sum(1 for r in records if r["n_candidates"] == 0),
        "n_failed": sum(1 for r in records if r["error"] is not None),
        "unreadable_targets": unreadable,
        "time_per_structure_s": total("generate_s") / n_generated if n_generated else None,
        "generate_time_s": total("generate_s"),
        "relax_time_s": total("relax_s"),
        "match_time_s": total("match_s"),
        "wall_time_s": total("wall_s"),
        "n_resumed": n_resumed,
        "per_composition": records,
    }


def _progress_line(record: dict[str, Any], done: int, total: int, k_max: int, running: str,
                   computed_s: list[float]) -> str:
    """``12/300 GaN: match@20 yes, ranked@1 no | so far match@20 91.7 %, ... | 2.4 h left``."""
    hit = "yes" if any(r is not None for r in record["rms"][:k_max]) else "no"
    outcome = f"match@{k_max} {hit}"
    if record["ranked_match"] is not None:
        outcome += f", ranked@1 {'yes' if record['ranked_match'] else 'no'}"
    left_s = (total - done) * sum(computed_s) / len(computed_s)
    left = f"{left_s / 3600:.1f} h" if left_s >= 5400 else f"{left_s / 60:.0f} min"
    return f"{done}/{total} {record['formula']}: {outcome} | so far {running} | {left} left"


def write_results(result: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.json`` and ``match_rate.png`` (match rate per arity, one bar per k,
    and ranked@1 and first+lowest@2 when the candidates were relaxed).

    Returns
    -------
    tuple of Path
        The JSON file and the PNG plot.
    """
    from xtalloop.benchmark.csp_plot import rate_bars

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")

    groups = ["all", *ARITY_LABELS]
    per = {"all": result} | {label: result["per_arity"][label] for label in ARITY_LABELS}
    counts = {"all": result["n_compositions"]} | {
        label: result["per_arity"][label]["n"] for label in ARITY_LABELS
    }
    series = {f"k = {k}": {g: per[g]["match_rate"][str(k)] for g in groups}
              for k in result["ks"]}
    if result["ranked_match_rate"]["1"] is not None:
        series["ranked@1"] = {g: per[g]["ranked_match_rate"]["1"] for g in groups}
        if result.get("pair_match_rate"):
            series["first+lowest@2"] = {g: per[g]["pair_match_rate"]["2"] for g in groups}
    png_path = rate_bars(series, counts, f"{result['generator']} on "
                         f"{Path(result['data_csv']).name}", out / "match_rate.png")
    return json_path, png_path


def _ground_truths(
    table, rows: list[int], seeds: list[int], source
) -> tuple[list[tuple[int, int, Structure]], list[str]]:
    """The readable sampled rows (row, seed, structure) and the ids of the unreadable ones.

    Raises
    ------
    DataError
        If no sampled row is readable.
    """
    targets: list[tuple[int, int, Structure]] = []
    unreadable: list[str] = []
    for row, row_seed in zip(rows, seeds, strict=True):
        try:
            targets.append((row, row_seed, _ground_truth(table, row, source)))
        except DataError as exc:
            logger.debug("%s", exc)
            unreadable.append(_material_id(table, row))
    if not targets:
        raise DataError(f"no usable target in {source}: none of the {len(rows)} sampled rows "
                        "has a readable CIF")
    if unreadable:
        logger.warning("%s: skipped %d of %d sampled rows with an unreadable CIF",
                       source, len(unreadable), len(rows))
    return targets, unreadable


def _finite(value: float | None) -> float | None:
    """A float for JSON, None for a missing or non-finite value."""
    return float(value) if value is not None and math.isfinite(value) else None


def _ground_truth(table, row: int, source) -> Structure:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(str(table["cif"].iloc[row]), fmt="cif")
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot read the CIF of {_material_id(table, row)} in {source}: {reason}"
        ) from None
    structure.remove_oxidation_states()
    return structure


def _material_id(table, row: int) -> str:
    if "material_id" in table.columns:
        return str(table["material_id"].iloc[row])
    return f"row-{row}"


def _settings(generator: Generator) -> dict[str, Any]:
    """The generator's settings (its dataclass init fields) that JSON can hold.

    Member generators of a pooled generator are listed with their own settings.
    """
    if not dataclasses.is_dataclass(generator):
        return {}
    settings: dict[str, Any] = {}
    for f in dataclasses.fields(generator):
        if not f.init:  # caches such as a loaded model
            continue
        value = getattr(generator, f.name)
        if isinstance(value, list) and value and all(isinstance(g, Generator) for g in value):
            value = [{"name": g.name, **_settings(g)} for g in value]
        if isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value)
        except TypeError:
            value = repr(value)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        settings[f.name] = value
    return settings

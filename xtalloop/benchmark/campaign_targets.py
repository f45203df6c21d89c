"""The campaign's targets: compositions with known structures, drawn per arity group.

See :mod:`xtalloop.benchmark.campaign`; a campaign keeps its draw in
``<work>/targets.json``, so this runs once per campaign.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from xtalloop.benchmark.arity_data import rows_of_arity
from xtalloop.benchmark.csp import arity_label
from xtalloop.errors import DataError

if TYPE_CHECKING:
    from xtalloop.benchmark.campaign import CampaignSettings

logger = logging.getLogger(__name__)

#: Arity groups of a campaign's schedule, in order; "5+" covers 5 to 9 distinct elements.
STAGES: dict[str, tuple[int, ...]] = {"2": (2,), "3": (3,), "4": (4,), "5+": (5, 6, 7, 8, 9)}



def choose_targets(settings: CampaignSettings,
                   usable: Callable[[set[str]], set[str]] | None = None) -> list[dict[str, Any]]:
    """Target compositions: ``per_arity`` per arity group, seeded, distinct reduced formulas.

    Rows of every table in ``settings.data`` with at most ``max_atoms`` sites
    are pooled; a formula that appears twice keeps its first occurrence
    after the seeded shuffle. ``usable`` (elements → the
    usable subset) drops compositions with an element a model cannot evaluate.

    Returns
    -------
    list of dict
        ``formula``, ``arity`` (label), ``material_id``, ``source``, ``nsites``, ``cif``.
    """
    import numpy as np

    arities = sorted({n for a in settings.arities for n in STAGES[a]})
    pools = []
    for path in settings.data:
        if not Path(path).is_file():
            raise DataError(f"{path}: structure table not found")
        table = pd.read_csv(path)
        if "cif" not in table.columns:
            raise DataError(f"{path}: no 'cif' column")
        rows = rows_of_arity(table, arities, settings.max_atoms)
        rows = rows.assign(source=str(path), material_id=(
            rows["material_id"].astype(str) if "material_id" in rows.columns
            else [f"{Path(path).name}:{i}" for i in rows.index]))
        pools.append(rows[["material_id", "cif", "formula", "n_elements", "nsites", "source"]])
    pool = pd.concat(pools, ignore_index=True)
    if usable is not None:
        from pymatgen.core import Composition

        elements = {str(e) for f in set(pool["formula"]) for e in Composition(f).elements}
        ok = usable(elements)
        pool = pool[[all(str(e) in ok for e in Composition(f).elements)
                     for f in pool["formula"]]]
    pool = pool.assign(arity=[arity_label(n) for n in pool["n_elements"]])
    rng = np.random.default_rng(settings.seed)
    pool = pool.iloc[rng.permutation(len(pool))].drop_duplicates("formula")
    targets = []
    for label in settings.arities:
        chosen = pool[pool["arity"] == label].head(settings.per_arity)
        if chosen.empty:
            raise DataError(f"no target composition with {label} elements and at most "
                            f"{settings.max_atoms} sites in {', '.join(settings.data)}")
        targets += [{"formula": r.formula, "arity": label, "material_id": r.material_id,
                     "source": r.source, "nsites": int(r.nsites), "cif": r.cif}
                    for r in chosen.itertuples()]
    return targets


def model_elements(spec: str, device: str = "cpu") -> Callable[[set[str]], set[str]]:
    """``usable`` for :func:`choose_targets`: the elements ``spec`` evaluates alone in a box.

    The same test as :func:`xtalloop.dft.mlip.check_mlip` (which raises on the
    first unknown element), with the model loaded once.
    """
    def usable(elements: set[str]) -> set[str]:
        from ase import Atoms

        from xtalloop.models.energy_model import load_energy_model

        model = load_energy_model(spec, device, "float64")
        ok = set()
        for element in sorted(elements):
            try:
                model.predict([Atoms(element, cell=[3.0, 3.0, 3.0], pbc=True)])
            except Exception as exc:  # noqa: BLE001 - the model cannot evaluate this element
                logger.info("%s cannot evaluate %s (%s): no target has it", spec, element,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            ok.add(element)
        return ok
    return usable

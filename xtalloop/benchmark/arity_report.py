"""The arity-extension benchmark's outputs: ``results.json``, a Markdown table, the figure.

The result dict is :func:`xtalloop.benchmark.arity.run_arity_benchmark`'s (or
:func:`xtalloop.benchmark.arity_wyckoff.run_wyckoff_arity_benchmark`'s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xtalloop.benchmark.arity import ARITY_NAMES



def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown_table(result: dict[str, Any]) -> str:
    """Match rates as a Markdown table: one row per model, one column per arity and k."""
    ks = [str(k) for k in result["settings"]["ks"]]
    n_eval = result["data"]["n_eval_per_arity"]
    arities = list(n_eval)
    ranked = result["settings"].get("prefilter")
    header = ["model", "fine-tune crystals"]
    for a in arities:
        name = ARITY_NAMES.get(int(a), f"{a}-ary")
        header += [f"{name} (n={n_eval[a]}) @{k}" for k in ks]
        if ranked:
            header.append(f"{name} {ranked}-ranked @1")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in result["models"]:
        label = "base" if model["fraction"] == 0 else f"fine-tuned {100 * model['fraction']:g}%"
        cells = [label, str(model["n_finetune"])]
        for a in arities:
            r = model["results"][a]
            cells += [_pct(r["match_rate"][k]) for k in ks]
            if ranked:
                cells.append(_pct(r.get("ranked_match_rate", {}).get("1")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``match_rate.png`` to ``out_dir``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md",
             "png": out_dir / "match_rate.png"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")

    s = result["settings"]
    d = result["data"]
    kind = s.get("generator", "diffusion")
    sampler = (f"{s['n_steps']} sampler steps" if kind == "diffusion"
               else f"sampling temperature {s.get('temperature', 1.0):g}")
    text = [
        f"# Arity extension: fine-tuning the {kind} model on quaternaries/quinaries",
        "",
        f"- base checkpoint: `{s['base_checkpoint']}` ({d['base_n_train']} training crystals, "
        f"epoch {d['base_epoch']})",
        f"- fine-tuning pool: {d['finetune_pool']} crystals of {s['arities']} elements with "
        f"at most {s['max_atoms']} atoms from `{s['train_csv']}`; nested seeded subsets "
        f"{d['finetune_sizes']}",
        f"- fine-tuning budget: {s['finetune']['budget']} (batch size "
        f"{s['finetune']['batch_size'] or 'parent'}, lr factor "
        f"{s['finetune']['lr_factor'] or 'of the parent'})",
        f"- evaluation: {d['n_eval_per_arity']} held-out compositions per arity from "
        f"`{s['val_csv']}` (at most {s['max_atoms']} atoms, distinct formulas, seed "
        f"{s['seed']}), {sampler}, StructureMatcher(stol=0.5, ltol=0.3, "
        "angle_tol=10), no relaxation",
        f"- total wall time: {result['timings']['total_s'] / 60:.1f} min",
        "",
        markdown_table(result),
        "",
    ]
    paths["md"].write_text("\n".join(text))

    figure = Figure(figsize=(6.5, 4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    x = [100 * m["fraction"] for m in result["models"]]
    styles = ["-", "--", "-.", ":"]
    top = 0.0
    for colour, a in enumerate(d["n_eval_per_arity"]):
        name = ARITY_NAMES.get(int(a), f"{a}-ary")
        n = d["n_eval_per_arity"][a]
        curves = [(f"k={k}", [m["results"][a]["match_rate"][str(k)] for m in result["models"]])
                  for k in s["ks"]]
        if s.get("prefilter"):
            curves.append((f"ranked by {s['prefilter']}, k=1",
                           [m["results"][a].get("ranked_match_rate", {}).get("1")
                            for m in result["models"]]))
        for i, (what, y) in enumerate(curves):
            values = [np.nan if v is None else v for v in y]
            top = max([top, *(v for v in values if np.isfinite(v))])
            ax.plot(x, values, marker="o", ls=styles[i % len(styles)], color=f"C{colour}",
                    label=f"{name} (n={n}), {what}")
    ax.set_xlabel("fine-tuning set (% of train quaternaries+quinaries; 0 = base)")
    ax.set_ylabel("match rate")
    ax.set_ylim(0, min(1.0, max(0.1, 1.25 * top)))
    ax.set_title(f"{kind.capitalize()} model: arity extension by fine-tuning")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(paths["png"], dpi=120)
    return paths

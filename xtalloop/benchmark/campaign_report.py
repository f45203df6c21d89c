"""A campaign's outputs: results JSON, a markdown table and the hit-rate-per-round figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xtalloop.benchmark.campaign import ARM_NAMES
from xtalloop.benchmark.campaign_funnel import funnel_table

#: Arity groups whose hits per 100 validations the campaign's headline compares.
HIGH_ARITIES: tuple[str, ...] = ("4", "5+")


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """Per arm: hits per 100 validations on quaternaries and up, and (d) ÷ (a) of it.

    The issue's target: arm ``d`` at least twice arm ``a`` by the last round.
    Counted over every round of the 4 and 5+ stages (one stage per round
    unless ``rounds_per_stage`` > 1), since a single round holds few validations.
    The ratio compares the rounds both arms have scored (``d_over_a_rounds``):
    while one arm runs ahead, its quinary rounds (fewer hits) would otherwise
    stand against the other's quaternary ones.
    """
    per_arm = {}
    for arm, data in result["arms"].items():
        rows = [r for r in data["rounds"] if r["arity"] in HIGH_ARITIES]
        per_arm[arm] = _hits(rows)
    both = _high_rounds(result, "a") & _high_rounds(result, "d")
    ratio = None
    if both:
        a, d = (_hits([r for r in result["arms"][arm]["rounds"]
                       if r["arity"] in HIGH_ARITIES and r["round"] in both])["hits_per_100"]
                for arm in ("a", "d"))
        ratio = d / a if a and d is not None else None
    return {"high_arity": per_arm, "d_over_a": ratio, "d_over_a_rounds": sorted(both)}


def _high_rounds(result: dict[str, Any], arm: str) -> set[int]:
    data = result["arms"].get(arm)
    return {r["round"] for r in data["rounds"] if r["arity"] in HIGH_ARITIES} if data else set()


def _hits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    validations = sum(r["validations"] for r in rows)
    hits = sum(r["hits"] for r in rows)
    return {"validations": validations, "hits": hits,
            "hits_per_100": 100 * hits / validations if validations else None}


def _fmt(value: Any, digits: int = 1, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.{digits}f}%" if pct else f"{value:.{digits}f}"


def markdown_table(result: dict[str, Any]) -> str:
    """Per arm, round and arity group: the counts and rates, then the headline."""
    settings = result["settings"]
    lines = [
        (f"Targets: {len(result['targets'])} compositions ({settings['per_arity']} per arity "
         f"group {', '.join(settings['arities'])}, ≤ {settings['max_atoms']} sites), "
         f"{settings['rounds_per_stage']} round(s) per stage, budget {settings['budget']} "
         f"validations per round, {settings['candidates']} Wyckoff candidates per "
         f"composition, prefilter {settings['prefilter']}, validator {settings['validator']}, "
         f"seed {settings['seed']}."),
        "",
        ("| arm | round | arity | compositions | validations | hits | hit rate | "
         "hits / 100 val. | ground states (cum.): this arity, all | wall (s) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, data in result["arms"].items():
        overall = {r["round"]: r["ground_states"] for r in data["rounds"] if r["arity"] == "all"}
        for row in data["rounds"]:
            if row["arity"] == "all":
                continue
            lines.append(
                f"| {arm} ({ARM_NAMES[arm]}) | {row['round']} | {row['arity']} | "
                f"{row['compositions']} | {row['validations']} | {row['hits']} | "
                f"{_fmt(row['hit_rate'], pct=True)} | {_fmt(row['hits_per_100'])} | "
                f"{row['ground_states']}, {overall.get(row['round'], '–')} | "
                f"{_fmt(row['wall_s'], 0)} |")
    lines += origin_table(result)
    lines += funnel_table(result)
    head = headline(result)
    lines += ["", ("| arm | loop | rounds scored | 4 + 5+ validations | hits | hits / 100 val. "
                   "| loop wall (s) |"), "|---|---|---|---|---|---|---|"]
    for arm, row in head["high_arity"].items():
        data = result["arms"][arm]
        scored = sorted({r["round"] for r in data["rounds"]})
        lines.append(f"| {arm} | {data.get('status')} | {len(scored)} | "
                     f"{row['validations']} | {row['hits']} | "
                     f"{_fmt(row['hits_per_100'])} | "
                     f"{_fmt(result['arms'][arm].get('wall_s'), 0)} |")
    if head["d_over_a"] is not None:
        rounds = ", ".join(str(r) for r in head["d_over_a_rounds"])
        lines += ["", (f"Arm d ÷ arm a, hits per 100 validations on 4 + 5+ elements in the "
                       f"rounds both have scored ({rounds}): {head['d_over_a']:.2f} "
                       "(target ≥ 2).")]
    return "\n".join(lines) + "\n"


def origin_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: per arm and round, hits / validated picks by where the pick came from.

    Learning can only pay through what it changes: a fine-tuned generator
    through the skeletons it samples, not through the known ones it proposes.
    Empty when no round records origins (results scored before they existed).
    """
    rows = [(arm, r) for arm, data in result["arms"].items() for r in data["rounds"]
            if r["arity"] == "all" and r.get("by_origin")]
    origins = sorted({o for _, r in rows for o in r["by_origin"]})
    if not rows:
        return []
    lines = ["", "Where the validated picks came from (hits / picks):", "",
             "| arm | round | " + " | ".join(origins) + " |",
             "|---|---|" + "---|" * len(origins)]
    for arm, row in rows:
        cells = [f"{row['by_origin'][o]['hits']} / {row['by_origin'][o]['picks']}"
                 if o in row["by_origin"] else "–" for o in origins]
        lines.append(f"| {arm} | {row['round']} | " + " | ".join(cells) + " |")
    return lines


def plot_campaign(result: dict[str, Any], path: str | Path) -> Path:
    """Hits per 100 validations per round (left) and cumulative ground states (right), per arm."""
    from xtalloop.plots import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    ticks: dict[int, str] = {}
    for arm, data in result["arms"].items():
        rows = [r for r in data["rounds"] if r["arity"] == "all"]
        stage = {r["round"]: r["arity"] for r in data["rounds"] if r["arity"] != "all"}
        x = [r["round"] for r in rows]
        ticks.update({r: f"{r}\n{stage.get(r, '')} el." for r in x})
        left.plot(x, [float("nan") if r["hits_per_100"] is None else r["hits_per_100"]
                      for r in rows], "o-", label=f"{arm}: {ARM_NAMES[arm]}")
        right.plot(x, [r["ground_states"] for r in rows], "o-", label=f"{arm}")
    for ax in (left, right):
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.set_xlabel("round (arity)")
    left.set_ylabel("hits per 100 validations")
    left.set_ylim(bottom=0)
    right.set_ylabel("ground states found (cumulative)")
    left.legend(fontsize=8, frameon=False)
    fig.suptitle("Learning campaign: does learning pay?")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_outputs(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``hit_rate.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "headline": headline(result)}
    paths = {"json": out / "results.json", "md": out / "results.md",
             "png": out / "hit_rate.png"}
    paths["json"].write_text(json.dumps(result, indent=1, default=str))
    paths["md"].write_text(markdown_table(result))
    plot_campaign(result, paths["png"])
    return paths

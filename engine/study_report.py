"""What a study reports: the targets for the main system, one paragraph per variant that says what
the numbers mean, the index page over the variants and summary.md (with the stage commands run).
"""

from __future__ import annotations

import html

from engine.bootstrap import NORMALISED_TARGET
from engine.metrics import paired_difference_ci
from engine.report import fidelity_html, fidelity_text, html_table, markdown_table

COMPARED = ("mismatched-merchant", "mismatched-uniform", "no-persona", "larger-no-persona", "markov")
"""Baselines whose paired difference with the main system a study reports."""


def goal_effects(goal_success: dict[str, dict | None], main: str) -> dict[str, dict]:
    """The main system's goal success minus each other system's, paired by seed (the same buyers and
    goals per seed), with a t interval over the seeds; systems without per-seed rates are left out."""
    mine = (goal_success.get(main) or {}).get("seeds") or {}
    out = {}
    for name, other in goal_success.items():
        theirs = (other or {}).get("seeds") or {}
        shared = sorted(mine.keys() & theirs.keys(), key=int)
        if name != main and shared:
            out[name] = paired_difference_ci([mine[k] for k in shared], [theirs[k] for k in shared])
    return out


def targets(
    systems: dict[str, dict], main: str, bounded: dict, goals: dict[str, dict] | None = None
) -> dict[str, dict]:
    """The study's targets for the main system, stated against what the data allows: CRA and ARA
    within the perfect simulator's reach (normalised score >= 0.95), a paired effect over each
    mismatched baseline whose interval is above 0, not below the Markov chain, and goal success above
    the larger no-persona model (its paired interval over seeds above 0, ``goals`` from
    ``goal_effects``; the means alone without them). Each with its measured value and whether it is met;
    the normalised scores and the effects over another merchant's codes also with ``perfect``, the
    share of draws in which a perfect simulator would meet them (the ceiling's ``meets_target`` and
    ``bounded["effect_ceiling"]``, engine/bootstrap.py)."""
    me, effects = bounded["systems"][main], bounded["effects"]["vs"]
    ceiling = bounded.get("effect_ceiling") or {}
    checks: dict[str, tuple[float | None, bool]] = {}
    perfect: dict[str, float | None] = {}
    for k in ("cra", "ara"):
        value = me[k]["normalised"]
        name = f"{k} normalised >= {NORMALISED_TARGET}"
        checks[name] = (value, value is not None and value >= NORMALISED_TARGET)
        share = bounded.get("bounds", {}).get(k, {}).get("ceiling", {}).get("meets_target")
        if share is not None:
            perfect[name] = share
    for other in ("mismatched-merchant", "mismatched-uniform"):
        for k in ("cra", "ara", "cr_corr"):
            if other in effects:
                d = effects[other][k]
                name = f"{k}: {main} - {other} > 0 (paired 95% low)"
                checks[name] = (d["low"], d["low"] is not None and d["low"] > 0)
                if other == "mismatched-merchant" and k in ceiling:
                    perfect[name] = ceiling[k]["power"]
    if "markov" in effects:
        for k in ("cra", "ara"):
            d = effects["markov"][k]
            checks[f"{k}: {main} not below markov (paired 95% high >= 0)"] = (
                d["high"],
                d["high"] is not None and d["high"] >= 0,
            )
    larger = systems.get("larger-no-persona", {}).get("goal_success")
    mine = systems[main].get("goal_success")
    paired = (goals or {}).get("larger-no-persona")
    if paired is not None and paired["low"] is not None:
        checks[f"goal_success: {main} - larger-no-persona > 0 (paired 95% low)"] = (
            paired["low"],
            paired["low"] > 0,
        )
    elif larger is not None and mine is not None:
        checks["goal_success > larger-no-persona"] = (mine - larger, mine > larger)
    return {
        name: {"value": value, "met": bool(met)} | ({"perfect": perfect[name]} if name in perfect else {})
        for name, (value, met) in checks.items()
    }


def explain(variant: str, fidelity: dict, main: str) -> str:
    """One paragraph that says what a variant's numbers mean: which system is closest to real buyers,
    whether the persona codes matter, and how close the main system is to a perfect simulator."""
    systems, bounds = fidelity["systems"], fidelity["bounds"]

    def norm(name: str) -> float:
        values = [systems[name][k]["normalised"] for k in ("cra", "ara")]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("-inf")

    best = max(systems, key=norm)
    me = systems[main]
    ceiling = bounds["cra"]["ceiling"]
    closest = (
        f"closest to real buyers is {best} (CRA and ARA on average {norm(best):.2f} of the way from a "
        "simulator that knows nothing of the merchant (0) to a perfect one (1))"
        if norm(best) > 0
        else f"no system is closer to real buyers than one that knows nothing of the merchant (best: {best})"
    )
    lines = [
        f"{variant}: {closest}.",
        f"{main}: CRA {me['cra']['value']:.3f} [{me['cra']['low']:.3f}, {me['cra']['high']:.3f}] against a "
        f"perfect simulator's {ceiling['mean']:.3f} [{ceiling['low']:.3f}, {ceiling['high']:.3f}] on the same "
        f"data ({bounds['cra']['ceiling_unlimited']['mean']:.3f} with unlimited visits) and "
        f"{bounds['cra']['floor']['mean']:.3f} for one that knows nothing of the merchant;"
        + (
            " inside the ceiling's interval: no better simulator can be told apart on this data."
            if ceiling["low"] is not None and me["cra"]["value"] >= ceiling["low"]
            else " below the ceiling's interval: there is room to improve."
        ),
    ]
    vs = fidelity["effects"]["vs"]
    for other in ("mismatched-merchant", "mismatched-uniform", "no-persona"):
        if other in vs:
            d = vs[other]["cra"]
            verdict = (
                "the persona codes matter"
                if d["claimed"] and d["low"] > 0
                else "worse with the right codes"
                if d["claimed"]
                else "no difference the data can show"
            )
            lines.append(
                f"Against {other}: CRA {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], {verdict}."
            )
    return " ".join(lines)


def target_value(target: dict) -> str:
    """A target's measured value as the console and the report show it."""
    return "–" if target["value"] is None else f"{target['value']:.3f}"


def _perfect(target: dict) -> str:
    """How often a perfect simulator meets the target, where the study can say."""
    share = target.get("perfect")
    return "–" if share is None else f"{share:.0%}"


def index_html(result: dict) -> str:
    """One page over the variants: the target checks and links to each variant's full report."""
    sections = []
    for variant, r in result["variants"].items():
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{target_value(t)}</td><td>{'met' if t['met'] else 'missed'}</td>"
            f"<td>{_perfect(t)}</td></tr>"
            for name, t in result["targets"][variant].items()
        )
        sections.append(
            f"<h2>{html.escape(variant)}</h2>"
            f"<p><b>{html.escape(explain(variant, r['fidelity'], result['config']['systems'][0]))}</b></p>"
            f"<p>{html.escape(r['notes'])}</p>"
            f'<p><a href="report/{variant}/index.html">full report</a></p>'
            f'<img src="fidelity-{variant}.png" alt="each system with its interval, the ceiling and the floor,'
            f' {variant}">{fidelity_html(r["fidelity"])}'
            "<h3>Targets</h3><table><tr><th>target</th><th>value</th><th>met</th>"
            f"<th>a perfect simulator meets it</th></tr>{rows}</table>"
        )
    goals = next(iter(result["variants"].values()), {}).get("goal_success") or {}
    if goals:
        draw = result["config"]["simulate"].get("goal_draw", "popular")
        table = html_table("\n".join(goal_lines(goals, result["config"]["systems"][0])))
        sections.append(f"<h2>Goal tasks ({html.escape(draw)} goals, same window)</h2>{table}")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>SimPersona study</title>'
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:4px 8px}table{border-collapse:collapse}img{max-width:100%}</style></head><body>"
        f"<h1>SimPersona study</h1><p>Held-out merchants: {len(result['split']['heldout'])}, split seed "
        f'{result["split"]["seed"]}. Details: <a href="summary.md">summary.md</a>, '
        f'<a href="metrics.json">metrics.json</a>.</p>{"".join(sections)}</body></html>\n'
    )


def _signed(d: dict) -> str:
    span = "" if d["low"] is None else f" [{d['low']:+.3f}, {d['high']:+.3f}]"
    return f"{d['diff']:+.3f}{span}"


def goal_lines(goal_success: dict[str, dict | None], main: str) -> list[str]:
    """The goal tasks' table in Markdown: each system, its success with the interval over seeds, and
    the main system minus it, paired by seed (empty for the main system and systems without per-seed
    rates)."""
    effects = goal_effects(goal_success, main)
    lines = [
        f"| system | goal success [95% over seeds] | {main} − system, paired by seed [95%] |",
        "|---|---:|---:|",
    ]
    return lines + [
        f"| {name} | {g['mean']:.3f} [{g['low']:.3f}, {g['high']:.3f}] | "
        f"{_signed(effects[name]) if name in effects else ''} |"
        for name, g in goal_success.items()
        if g is not None
    ]


def summary_markdown(result: dict) -> str:
    split = result["split"]
    lines = [
        "# Study summary",
        "",
        f"Held-out merchants: {len(split['heldout'])} of {split['eligible']} with >= {split['min_sessions']}"
        f" real sessions and >= {split['min_buyers']} buyers ({split['merchants']} merchants in all), split"
        f" seed {split['seed']}; wall time {result['wall_s']} s.",
    ]
    for variant, r in result["variants"].items():
        lines += [
            "",
            f"## {variant}",
            "",
            explain(variant, r["fidelity"], result["config"]["systems"][0]),
            "",
        ]
        lines += [r["notes"] + f"; {r['merchants']} merchants compared.", ""]
        lines += [f"![fidelity](fidelity-{variant}.png)", "", fidelity_text(r["fidelity"]), ""]
        lines += ["Other figures:", "", markdown_table(r["systems"]), ""]
        lines += ["| target | value | met | a perfect simulator meets it |", "|---|---:|---|---:|"]
        for name, t in result["targets"][variant].items():
            lines.append(f"| {name} | {target_value(t)} | {'yes' if t['met'] else 'no'} | {_perfect(t)} |")
    goals = next(iter(result["variants"].values()), {}).get("goal_success") or {}
    if goals:
        draw = result["config"]["simulate"].get("goal_draw", "popular")
        lines += ["", f"## Goal tasks ({draw} goals, same window)", ""]
        lines += goal_lines(goals, result["config"]["systems"][0])
    lines += ["", "## Commands", "", "| stage | command | s |", "|---|---|---:|"]
    for entry in result["log"]:
        seconds = "done before" if entry.get("skipped") else entry["seconds"]
        if entry.get("side_by_side"):
            seconds = f"{seconds} (side by side)"
        lines.append(f"| {entry['stage']} | `{entry['command']}` | {seconds} |")
    return "\n".join(lines) + "\n"

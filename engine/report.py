"""The fidelity report: ``metrics.json``, a Markdown summary and one HTML page with PNG plots."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine.batch_metrics import LOWER_IS_BETTER, METRICS  # noqa: E402

HEADLINE = ("cra", "ara", "js_action", "js_length", "invalid_rate", "goal_success", "cr_corr")


def headline(system: dict) -> dict[str, float | None]:
    """The per-system figures of metrics.json: cra, ara, js_action, js_length, invalid_rate, goal_success,
    cr_corr; None where a figure is undefined (JSON has no NaN)."""
    goal = system.get("goal_success")
    values = {k: system.get(k) for k in HEADLINE} | {
        "goal_success": goal["mean"] if isinstance(goal, dict) else goal
    }
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(systems: dict[str, dict]) -> str:
    """The headline table, one row per system."""
    rows = ["| system | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for name, system in systems.items():
        h = headline(system)
        rows.append(f"| {name} | " + " | ".join(_fmt(h[k]) for k in HEADLINE) + " |")
    return "\n".join(rows)


def _span(low, high) -> str:
    return f"[{_fmt(low)}, {_fmt(high)}]"


def interval_table(fidelity: dict) -> str:
    """Every system's metrics as value [95% interval], then the ceiling and floor rows of the data."""
    head = "| system | " + " | ".join(
        f"{k} ({'lower' if k in LOWER_IS_BETTER else 'higher'} is better)" for k in METRICS
    )
    rows = [
        head + " | conversion, simulated | conversion, real |",
        "|---" + "|---:" * (len(METRICS) + 2) + "|",
    ]
    for name, row in fidelity["systems"].items():
        cells = [row[k] for k in (*METRICS, "sim_conversion", "real_conversion")]
        rows.append(
            f"| {name} | "
            + " | ".join(f"{_fmt(c['value'])} {_span(c['low'], c['high'])}" for c in cells)
            + " |"
        )
    visits = fidelity["visits"]
    labels = {
        "ceiling": f"*ceiling* (perfect simulator, {visits['median']:.0f} visits per merchant)",
        "ceiling_unlimited": "*ceiling* (perfect simulator, unlimited visits)",
        "floor": f"*floor* (visits drawn from {fidelity['floor_pool']}' sessions)"
        if fidelity["floor_pool"]
        else "*floor* (none: one merchant; `--floor-data` names other merchants' sessions to draw from)",
    }
    for key, label in labels.items():
        cells = [fidelity["bounds"][k][key] for k in METRICS]
        rows.append(
            f"| {label} | "
            + " | ".join(f"{_fmt(c['mean'])} {_span(c['low'], c['high'])}" for c in cells)
            + " | – | – |"
        )
    return "\n".join(rows)


def normalised_table(fidelity: dict) -> str:
    """(value - floor) / (ceiling - floor) per system and metric: 1 = perfect, 0 = knows nothing."""
    rows = ["| system | " + " | ".join(METRICS) + " |", "|---" + "|---:" * len(METRICS) + "|"]
    for name, row in fidelity["systems"].items():
        cells = [
            f"{_fmt(row[k]['normalised'])} {_span(row[k]['normalised_low'], row[k]['normalised_high'])}"
            for k in METRICS
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def effects_table(fidelity: dict) -> str:
    """Paired differences main - other with 95% intervals; ** marks an interval that excludes 0."""
    main = fidelity["effects"]["main"]
    rows = ["| difference | " + " | ".join(METRICS) + " |", "|---" + "|---:" * len(METRICS) + "|"]
    for other, diffs in fidelity["effects"]["vs"].items():
        cells = []
        for k in METRICS:
            d = diffs[k]
            mark = "**" if d["claimed"] else ""
            cells.append(f"{mark}{_fmt(d['diff'])}{mark} {_span(d['low'], d['high'])}")
        rows.append(f"| {main} − {other} | " + " | ".join(cells) + " |")
    ceiling = fidelity.get("effect_ceiling")
    if ceiling:
        cells = [
            f"{_fmt(ceiling[k]['mean'])} {_span(ceiling[k]['low'], ceiling[k]['high'])}"
            + ("" if ceiling[k]["power"] is None else f" ({ceiling[k]['power']:.0%} of draws clear 0)")
            for k in METRICS
        ]
        rows.append("| *perfect − perfect given another merchant's buyers* | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def html_table(markdown: str) -> str:
    """A Markdown pipe table of this module as an HTML table (one source for both formats)."""
    lines = [line.strip().strip("|").split(" | ") for line in markdown.splitlines() if line.startswith("|")]
    head, body = lines[0], lines[2:]

    def cell(text: str, tag: str) -> str:
        text = html.escape(text.strip())
        if text.startswith("**"):
            text = "<b>" + text.replace("**", "", 2) + "</b>"
        return f"<{tag}>{text.replace('*', '')}</{tag}>"

    rows = "".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in body)
    return "<table><tr>" + "".join(cell(c, "th") for c in head) + f"</tr>{rows}</table>"


def fidelity_html(fidelity: dict) -> str:
    """``fidelity_text`` as HTML: a sentence, then each table."""
    parts = []
    for block in fidelity_text(fidelity).split("\n\n"):
        parts.append(
            html_table(block) if block.startswith("|") else f"<p>{html.escape(block.replace('**', ''))}</p>"
        )
    return "".join(parts)


def fidelity_text(fidelity: dict) -> str:
    """The three tables with one line each on how to read them."""
    visits, real = fidelity["visits"], fidelity["real_units"]
    return (
        f"{fidelity['merchants']} merchants, {real['median']:.0f} real units (median; {real['min']}–"
        f"{real['max']}) and {visits['median']:.0f} simulated visits per merchant; 95% intervals from a "
        f"{fidelity['method']}, {fidelity['replicates']} replicates, seed {fidelity['seed']}. A system "
        "inside the ceiling's interval cannot be told from a perfect simulator on this data.\n\n"
        + interval_table(fidelity)
        + (
            "\n\nNormalised score (value − floor) / (ceiling − floor): 1 = as good as a perfect simulator, "
            "0 = knows nothing about the merchant.\n\n" + normalised_table(fidelity)
            if fidelity["floor_pool"]
            else ""
        )
        + (
            "\n\nPaired differences (same merchant and real resamples); **bold**: the interval excludes 0, an "
            "effect the data supports. For js_* a negative difference is better."
            + (
                " The last row is the most an effect over another merchant's codes can be here: a perfect"
                " simulator against one given another merchant's buyers, with how often its own paired"
                " interval would clear 0."
                if fidelity.get("effect_ceiling")
                else ""
            )
            + "\n\n"
            + effects_table(fidelity)
            if fidelity["effects"]["vs"]
            else ""
        )
    )


def plot_bounds(fidelity: dict, path: Path) -> None:
    """One panel per metric: systems as points with intervals, the ceiling band and the floor line."""
    names = list(fidelity["systems"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.1 * len(METRICS), 0.6 + 0.32 * len(names) + 1.2))
    y = np.arange(len(names))
    for ax, k in zip(axes, METRICS, strict=True):
        bounds = fidelity["bounds"][k]
        c, u, f = bounds["ceiling"], bounds["ceiling_unlimited"], bounds["floor"]
        if c["low"] is not None:
            ax.axvspan(c["low"], c["high"], color="tab:green", alpha=0.18, label="ceiling (95%)")
            ax.axvline(c["mean"], color="tab:green", lw=1.2)
        if u["mean"] is not None:
            ax.axvline(u["mean"], color="tab:green", lw=1, ls=":", label="ceiling, unlimited visits")
        if f["mean"] is not None:
            ax.axvline(f["mean"], color="tab:red", lw=1.2, ls="--", label="floor")
        for i, name in enumerate(names):
            r = fidelity["systems"][name][k]
            if r["value"] is None:
                continue
            lo = r["value"] - r["low"] if r["low"] is not None else 0
            hi = r["high"] - r["value"] if r["high"] is not None else 0
            ax.errorbar(
                r["value"], i, xerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o", color="black", ms=4, capsize=2
            )
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{k} ({'lower' if k in LOWER_IS_BETTER else 'higher'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[0].legend(fontsize=6, loc="lower left", bbox_to_anchor=(0, 1.12), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_conversion(systems: dict[str, dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for name, system in systems.items():
        real, sim = system.get("cr_real", {}), system.get("cr_sim", {})
        merchants = sorted(real)
        xs, ys = [real[m] for m in merchants], [sim[m] for m in merchants]
        ax.scatter(xs, ys, s=18, alpha=0.75, label=name)
        top = max([top, *xs, *ys])
    top = top * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="black", lw=1, ls="--", label="identity")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="real conversion rate", ylabel="simulated conversion rate")
    ax.set_title("Conversion per merchant")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_strata(system: dict, name: str, path: Path) -> None:
    shares = system.get("ara_shares", {})
    strata = sorted(shares)
    actions = sorted({a for row in shares.values() for a in row})
    fig, axes = plt.subplots(1, max(len(strata), 1), figsize=(3.2 * max(len(strata), 1), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    x = np.arange(len(actions))
    for ax, stratum in zip(axes, strata, strict=False):
        row = shares[stratum]
        ax.bar(x - 0.2, [row[a]["real"] for a in actions], 0.4, label="real")
        ax.bar(x + 0.2, [row[a]["sim"] for a in actions], 0.4, label="simulated")
        ax.set_xticks(x, actions, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"stratum {stratum}")
    axes[0].set_ylabel("share of buyers taking the action")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Funnel rates by conversion stratum ({name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_type_heatmap(system: dict, name: str, path: Path) -> bool:
    profile = system.get("type_profile") or {}
    if not profile:
        return False
    codes = sorted(profile, key=int)
    kinds = sorted({k for row in profile.values() for k in row})
    grid = np.array([[profile[c].get(k, 0.0) for k in kinds] for c in codes])
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(kinds), 1 + 0.25 * len(codes)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(codes)), [f"type {c}" for c in codes], fontsize=7)
    fig.colorbar(im, ax=ax, label="share of simulated buyers")
    ax.set_title(f"Type × behaviour ({name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_baselines(systems: dict[str, dict], path: Path) -> None:
    keys = ("cra", "ara", "goal_success")
    names = list(systems)
    x = np.arange(len(keys))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, name in enumerate(names):
        h = headline(systems[name])
        values = [h[k] if h[k] is not None and not math.isnan(h[k]) else 0.0 for k in keys]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, keys)
    ax.set_ylim(0, 1)
    ax.set_title("Persona agent vs baselines (higher is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    systems: dict[str, dict],
    out: str | Path,
    main: str | None = None,
    notes: str = "",
    fidelity: dict | None = None,
) -> Path:
    """Write REPORT/metrics.json, summary.md, index.html and the plots; returns the HTML path.
    ``fidelity`` (``engine.bootstrap.uncertainty``) adds intervals, ceiling and floor."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not systems:
        raise ValueError("nothing to report: no system was evaluated")
    main = main or next(iter(systems))
    report = {"systems": {n: headline(s) for n, s in systems.items()}, "details": systems}
    (out / "metrics.json").write_text(json.dumps(report | {"fidelity": fidelity}, indent=2))
    plots = {}
    if fidelity is not None:
        plot_bounds(fidelity, out / "fidelity.png")
        plots["fidelity.png"] = (
            "Each system with its 95% interval, the perfect simulator's band and the floor"
        )
    plots["conversion.png"] = "Simulated vs real conversion per merchant"
    _plot_conversion(systems, out / "conversion.png")
    plots["strata.png"] = f"Funnel rates by stratum ({main})"
    _plot_strata(systems[main], main, out / "strata.png")
    if _plot_type_heatmap(systems[main], main, out / "types.png"):
        plots["types.png"] = f"Type × behaviour ({main})"
    plots["baselines.png"] = "Baseline comparison"
    _plot_baselines(systems, out / "baselines.png")

    table = markdown_table(systems)
    bounded = fidelity_text(fidelity) + "\n\n" if fidelity is not None else ""
    (out / "summary.md").write_text(
        "# Fidelity report\n\n" + (notes + "\n\n" if notes else "") + bounded + table + "\n\n"
        "cra: conversion-rate alignment (mean over merchants); ara: stratified action-rate alignment; "
        "js_*: Jensen–Shannon divergence (bits, lower is better); invalid_rate: share of steps the page "
        "could not perform; goal_success: share of goal tasks bought within 20 steps; cr_corr: Pearson r of "
        "simulated vs real conversion across merchants.\n"
    )
    rows = "".join(
        "<tr><th>"
        + html.escape(n)
        + "</th>"
        + "".join(f"<td>{_fmt(v)}</td>" for v in headline(s).values())
        + "</tr>"
        for n, s in systems.items()
    )
    figures = "".join(
        f'<figure><img src="{f}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for f, c in plots.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SimPersona fidelity report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
figure{{display:inline-block;margin:1em}}img{{max-width:100%}}</style></head>
<body><h1>SimPersona fidelity report</h1><p>{html.escape(notes)}</p>
{fidelity_html(fidelity) if fidelity is not None else ""}
<table><tr><th>system</th>{"".join(f"<th>{k}</th>" for k in HEADLINE)}</tr>{rows}</table>
{figures}
<p>Details per merchant and stratum: <a href="metrics.json">metrics.json</a>, <a href="summary.md">summary.md</a>.</p>
</body></html>
"""
    (out / "index.html").write_text(page)
    return out / "index.html"

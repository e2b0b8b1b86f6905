"""An experiment's outputs: effects.parquet and effects.json (tidy rows), report.html with one forest
plot per outcome (PNG, as engine/report.py draws them), and the console summary."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from engine.experiment_effects import ALL, effects_frame  # noqa: E402
from engine.experiment_outcomes import METRICS  # noqa: E402
from envs.render import PRICE_CELLS  # noqa: E402

EFFECTS_PARQUET = "effects.parquet"
EFFECTS_JSON = "effects.json"
REPORT_HTML = "report.html"
LABEL_CHARS = 48
HIGHLIGHTS = 5
"""Type-level effects listed per treatment in the console summary."""


def type_name(code: int | None, descriptions: dict[int, str], short: bool = False) -> str:
    """ "type 3: converts at 2.1x the average (45%); ..." (short: the description's first clause),
    "type 3" without a description, "all buyers" for the whole population."""
    if code is None:
        return "all buyers"
    text = descriptions.get(int(code), "")
    if not text:
        return f"type {code}"
    return f"type {code}: {text.split(';')[0] if short else text}"


def _descriptions(result: dict[str, Any]) -> dict[int, str]:
    return {int(code): t["description"] for code, t in result["types"].items() if t.get("description")}


def _num(x: float | None, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x == 0:
        return "0"
    return f"{x:+.3g}" if sign else f"{x:.3g}"


def interval(row: dict[str, Any], prefix: str = "") -> str:
    return f"[{_num(row[prefix + 'low'], True)}, {_num(row[prefix + 'high'], True)}]"


def pairing_text(ratio: float | None) -> str:
    """What pairing did to the variance: "x0.25 (4.0x fewer visits)"."""
    if ratio is None:
        return "–"
    if ratio <= 0:
        return "x0 (every paired difference is 0)"
    fewer = 1 / ratio
    return (
        f"x{ratio:.2g} ({fewer:,.0f}x fewer visits)"
        if fewer >= 10
        else f"x{ratio:.2g} ({fewer:.2g}x fewer visits)"
    )


def _overall(result: dict[str, Any], treatment: str) -> list[dict[str, Any]]:
    rows = [
        r
        for r in result["rows"]
        if r["treatment"] == treatment and r["merchant"] == ALL and r["type"] is None
    ]
    return sorted(rows, key=lambda r: METRICS.index(r["metric"]))


def _treatments(result: dict[str, Any]) -> list[str]:
    return [a["name"] for a in result["arms"] if a["name"] != result["control"]]


def fit_text(result: dict[str, Any]) -> str:
    """How the intervals carry the agent's price-response fit (engine/experiment_fit.py), if they do."""
    draws = result.get("fit_draws")
    if not draws:
        return ""
    return (
        f" widened by the spread over {draws['draws']} posterior draws of the agent's price response"
        f" ({draws['buyers_per_merchant']:,} visits per merchant and arm each)"
    )


def noise_line(rows: list[dict[str, Any]]) -> str:
    """How many type-level cells' spread over the draws exceeds the draws' own simulation noise."""
    typed = [r for r in rows if r["type"] is not None and r.get("fit_sd") is not None]
    if not typed:
        return ""
    clear = sum(r["fit_sd"] > r["fit_noise"] for r in typed)
    return (
        f"fit draws: the effects' spread over the draws exceeds the draws' own standard error in {clear} of"
        f" {len(typed)} per-type cells; in the others it may be the draws' simulation noise, which only"
        " widens the intervals (a larger --fit-draw-buyers tells the two apart)"
    )


def summary_text(result: dict[str, Any]) -> str:
    """One line per treatment x outcome over every buyer, then each treatment's strongest type-level
    effects whose interval excludes 0."""
    descriptions = _descriptions(result)
    visits = result["arms"][0]["visits"]
    pairing = "common random numbers" if result["common_random_numbers"] else "independent arms"
    width = max(len("treatment"), *(len(t) for t in _treatments(result)))
    lines = [
        f"effects vs {result['control']} over {visits:,} visits per arm ({pairing}); 95% bootstrap"
        f" intervals{fit_text(result)}; MDE: smallest effect detected with 80% power at alpha 0.05",
        f"{'treatment':<{width}} {'outcome':<14} {'control':>9} {'treated':>9}  {'effect [95% interval]':<28}"
        f" {'MDE':>8}  pairing (variance vs independent arms)",
    ]
    for t in _treatments(result):
        for r in _overall(result, t):
            mark = "*" if r["significant"] else " "
            lines.append(
                f"{t:<{width}} {r['metric']:<14} {_num(r['control']):>9} {_num(r['treated']):>9}  "
                f"{_num(r['effect'], True) + ' ' + interval(r) + mark:<28} {_num(r['mde']):>8}  "
                f"{pairing_text(r['variance_ratio'])}"
            )
    lines += changed_lines(result)
    lines += [line for line in [noise_line(result["rows"])] if line]
    lines += price_lines(result)
    lines.append("per type (* above and below: the interval excludes 0):")
    for t in _treatments(result):
        typed = [
            r
            for r in result["rows"]
            if r["treatment"] == t and r["merchant"] == ALL and r["type"] is not None and r["significant"]
        ]
        typed.sort(key=lambda r: -abs(r["effect"]) / r["se"] if r["se"] > 0 else -math.inf)
        if not typed:
            lines.append(f"  {t}: no type-level effect excludes 0")
        for r in typed[:HIGHLIGHTS]:
            name = type_name(r["type"], descriptions, short=True)
            lines.append(
                f"  {t} · {r['metric']} · {name} ({r['visits']} visits): {_num(r['effect'], True)} {interval(r)}"
                f" (control {_num(r['control'])})"
            )
    return "\n".join(lines)


def _changed(result: dict[str, Any], treatment: str) -> dict[int | None, float | None]:
    """The treatment's ``changed`` share per type (None: every buyer), from its rows over every merchant."""
    return {
        r["type"]: r.get("changed")
        for r in result["rows"]
        if r["treatment"] == treatment and r["merchant"] == ALL and r["metric"] == METRICS[0]
    }


UNTOUCHED = (
    "did exactly the same in both arms: the policy did not respond to this change, so its effects are only what"
    " the change does by itself (revenue at the new prices) and say nothing about how real buyers respond"
)


def changed_lines(result: dict[str, Any]) -> list[str]:
    """Per treatment, the share of buyers whose visit took another path than in the control (common
    random numbers only), and the types none of whose visits did."""
    lines = []
    for t in _treatments(result):
        shares = _changed(result, t)
        share = shares.get(None)
        if share is None:
            continue
        still = sorted(c for c, x in shares.items() if c is not None and x == 0)
        text = f"{t}: {_share(share)} of buyers took another path than in {result['control']}"
        if share == 0:
            text += f"; every buyer {UNTOUCHED}"
        elif still:
            text += f"; type(s) {', '.join(map(str, still))} {UNTOUCHED}"
        lines.append(text)
    return lines


def _row_choice(choice: dict[str, float] | None) -> str:
    if not choice:
        return "–"
    return (
        f"a bestseller in {choice['bestseller_share']:.0%} of its opens ({choice['bestseller_rows']:.0%} of rows),"
        f" the first row in {choice['first_share']:.0%}; {choice['buyers']} buyers"
    )


def price_lines(result: dict[str, Any]) -> list[str]:
    """The agent's largest measured answers to a price cell, per type and cell (none without them)."""
    answers = [
        (c, cell, a) for c, t in result["types"].items() for cell, a in t.get("price_answers", {}).items()
    ]
    if not answers:
        return []
    top = sorted(answers, key=lambda ca: -abs(ca[2]["add_to_cart"]))[:HIGHLIGHTS]
    parts = ", ".join(f"type {c} on {cell} {_answer(a)}" for c, cell, a in top)
    return [
        "the agent's answer to a price, measured in its training (add to cart per product page of a price"
        f" cell against a regular one, ± the measurement's standard error): {parts}"
    ]


def plot_forest(result: dict[str, Any], metric: str, path: Path) -> None:
    """Types as rows (every buyer last), each treatment's effect with its paired interval (thick) and
    the unpaired one (thin, faint), a line at 0."""
    descriptions = _descriptions(result)
    treatments = _treatments(result)
    codes = sorted(int(c) for c in result["types"])
    labels = [
        f"{type_name(c, descriptions, short=True)[:LABEL_CHARS]} ({result['types'][str(c)]['visits']})"
        for c in codes
    ]
    labels.append(f"all buyers ({result['arms'][0]['visits']})")
    rows = {
        (r["treatment"], r["type"]): r
        for r in result["rows"]
        if r["metric"] == metric and r["merchant"] == ALL
    }
    fig, ax = plt.subplots(figsize=(8.5, 1.0 + 0.42 * len(labels) * max(1, len(treatments) / 2)))
    colours = plt.cm.tab10(np.arange(len(treatments)) % 10)
    step = 0.7 / max(len(treatments), 1)
    for j, (t, colour) in enumerate(zip(treatments, colours, strict=True)):
        offset = (j - (len(treatments) - 1) / 2) * step
        for i, code in enumerate([*codes, None]):
            r = rows.get((t, code))
            if r is None:
                continue
            y = i + offset
            ax.plot([r["unpaired_low"], r["unpaired_high"]], [y, y], color=colour, lw=1, alpha=0.35)
            ax.plot([r["low"], r["high"]], [y, y], color=colour, lw=3, solid_capstyle="butt")
            marker = "D" if code is None else "o"
            ax.plot(
                r["effect"], y, marker, color=colour, ms=6 if code is None else 5, label=t if i == 0 else None
            )
    ax.axvline(0, color="black", lw=0.8)
    ax.axhline(len(codes) - 0.5, color="#999", lw=0.6, ls=":")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"effect on {result['metrics'][metric]} (treated − {result['control']})", fontsize=8)
    ax.set_title(f"{metric}: paired 95% interval (thick) and unpaired (thin)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(head: list[str], body: list[list[str]], text: tuple[int, ...] = (0,)) -> str:
    """An HTML table of already escaped cells; the ``text`` columns are left-aligned, numbers right."""

    def cell(tag: str, i: int, content: str) -> str:
        return f'<{tag} class="text">{content}</{tag}>' if i in text else f"<{tag}>{content}</{tag}>"

    cells = "".join(cell("th", i, html.escape(h)) for i, h in enumerate(head))
    rows = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in body)
    return f"<table><tr>{cells}</tr>{rows}</table>"


def _answer(answer: dict[str, float] | None) -> str:
    if answer is None:
        return "–"
    return f"{answer['add_to_cart']:+.3f} (± {answer['stderr']:.3f}, {answer['buyers']} buyers)"


def _share(x: float | None) -> str:
    """A share as a percentage; one decimal below 1%, so a few changed visits do not read as none."""
    if x is None:
        return "–"
    return f"{x:.1%}" if 0 < x < 0.01 else f"{x:.0%}"


def _effect_cell(r: dict[str, Any]) -> str:
    text = html.escape(f"{_num(r['effect'], True)} {interval(r)}")
    return f"<b>{text}</b>" if r["significant"] else text


def _treatment_section(result: dict[str, Any], t: str) -> str:
    descriptions = _descriptions(result)
    overall = _table(
        [
            "outcome",
            "control",
            "treated",
            "effect [95% interval]",
            "relative",
            "unpaired interval",
            "MDE",
            "pairing: variance vs independent arms",
        ],
        [
            [
                html.escape(result["metrics"][r["metric"]]),
                _num(r["control"]),
                _num(r["treated"]),
                _effect_cell(r),
                "–" if r["relative"] is None else f"{r['relative']:+.1%}",
                html.escape(interval(r, "unpaired_")),
                _num(r["mde"]),
                html.escape(pairing_text(r["variance_ratio"])),
            ]
            for r in _overall(result, t)
        ],
    )
    by_type = {
        (r["type"], r["metric"]): r
        for r in result["rows"]
        if r["treatment"] == t and r["merchant"] == ALL and r["type"] is not None
    }
    codes = sorted(int(c) for c in result["types"])
    shares = _changed(result, t)
    typed = _table(
        ["type", "visits", "took another path", *METRICS],
        [
            [
                html.escape(type_name(c, descriptions, short=True)),
                str(result["types"][str(c)]["visits"]),
                _share(shares.get(c)),
                *(
                    f"{_effect_cell(by_type[c, m])}<br><small>MDE {_num(by_type[c, m]['mde'])}</small>"
                    for m in METRICS
                ),
            ]
            for c in codes
            if (c, METRICS[0]) in by_type
        ],
    )
    merchants = [
        r for r in result["rows"] if r["treatment"] == t and r["merchant"] != ALL and r["type"] is None
    ]
    per_merchant = ""
    if merchants:
        cells = {(r["merchant"], r["metric"]): r for r in merchants}
        names = sorted({r["merchant"] for r in merchants})
        per_merchant = "<h4>Per merchant (its own persona mix)</h4>" + _table(
            ["merchant", *METRICS],
            [[html.escape(m), *(_effect_cell(cells[m, k]) for k in METRICS)] for m in names],
        )
    arm = next(a for a in result["arms"] if a["name"] == t)
    share = shares.get(None)
    touched = (
        ""
        if share is None
        else f"<p>{_share(share)} of buyers took another path than in {html.escape(result['control'])} (same buyer,"
        " same random draws, some action different); a type at 0% "
        f"{html.escape(UNTOUCHED)}.</p>"
    )
    return (
        f"<h2>{html.escape(t)}: {html.escape(arm['description'])}</h2>{touched}<h4>Every buyer</h4>{overall}"
        f"<h4>Per buyer type (bold: the interval excludes 0)</h4>{typed}{per_merchant}"
    )


def report_html(result: dict[str, Any], plots: dict[str, str]) -> str:
    """The page: what was run, how to read it, each treatment's tables, the forest plots, the types."""
    descriptions = _descriptions(result)
    visits = result["arms"][0]["visits"]
    crn = (
        "Every arm plays the same simulated buyers (merchant, persona code, seeds: common random numbers), so "
        "each effect is a mean of per-buyer paired differences."
        if result["common_random_numbers"]
        else "Arms are independent populations (common_random_numbers: false); pairs are matched by merchant, "
        "type and rank only, so pairing saves nothing."
    )
    arms = _table(
        ["arm", "storefront", "env", "visits", "steps", "invalid steps", "simulated (s)"],
        [
            [
                html.escape(a["name"]) + (" (control)" if a["name"] == result["control"] else ""),
                html.escape(a["description"]),
                html.escape(a["env_id"]),
                f"{a['visits']:,}",
                f"{a['steps']:,}",
                f"{a['invalid_steps']:,}",
                f"{a['simulated_s']:.1f}",
            ]
            for a in result["arms"]
        ],
        text=(0, 1, 2),
    )
    cells = [c for c in PRICE_CELLS if any(c in t.get("price_answers", {}) for t in result["types"].values())]
    rows_fitted = any("row_choice" in t for t in result["types"].values())
    types = _table(
        ["type", "visits per arm", "share", "what it is (VQ-VAE type report)"]
        + [f"add to cart on {c} pages against regular ones (measured in training)" for c in cells]
        + (["which listed product it opens (in the training logs)"] if rows_fitted else []),
        [
            [
                str(c),
                str(t["visits"]),
                f"{t['share']:.1%}",
                html.escape(descriptions.get(int(c), f"type {c} (no description in the personas run)")),
            ]
            + [_answer(t.get("price_answers", {}).get(c)) for c in cells]
            + ([_row_choice(t.get("row_choice"))] if rows_fitted else [])
            for c, t in sorted(result["types"].items(), key=lambda kv: int(kv[0]))
        ],
        text=(0, 3),
    )
    figures = "".join(
        f'<figure><img src="{f}" alt="{html.escape(m)} forest plot"><figcaption>{html.escape(result["metrics"][m])}'
        "</figcaption></figure>"
        for m, f in plots.items()
    )
    sections = "".join(_treatment_section(result, t) for t in _treatments(result))
    config = yaml.safe_dump(result["config"], sort_keys=False)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SimPersona what-if experiment</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right;font-size:13px}}
.text{{text-align:left}}figure{{margin:1em 0}}img{{max-width:100%}}
pre{{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}}</style></head>
<body><h1>What-if experiment: {html.escape(", ".join(_treatments(result)))} vs {html.escape(result["control"])}</h1>
<p>{len(result["merchants"])} merchant(s) ({html.escape(", ".join(result["merchants"][:12]))}), {visits:,} simulated
visits per arm, drawn from each merchant's own persona mix. {crn}</p>
<p><b>How to read it.</b> An effect is treated − control per visit, in the outcome's unit (conversion 0.02 = two
more buying visits in a hundred). Its 95% interval comes from a bootstrap over buyers ({result["bootstrap"]}
replicates, within merchant × type cells){fit_text(result)}; an interval that excludes 0 (bold) is an effect this run
supports. {html.escape(noise_line(result["rows"]))}
<i>MDE</i> is the smallest true effect this run would detect with 80% power (two-sided, alpha 0.05): a
treatment whose interval covers 0 may still have an effect smaller than that. The unpaired interval is what
two independent populations of the same size would give; the pairing column says how much of that variance
the pairing removed (and so how many times more visits an ordinary A/B test would need). "All buyers" weights
the types by the population's own mix. <code>simpersona experiment CONFIG --plan --mde 0.02</code> sizes a
run for a chosen effect.</p>
{sections}
<h2>Forest plots</h2>{figures}
<h2>Buyer types</h2>{types}
<h2>Arms</h2>{arms}
<h2>Run</h2><pre>{html.escape(result["command"] or "(not recorded)")}</pre><pre>{html.escape(config)}</pre>
<p>Every row: <a href="{EFFECTS_JSON}">{EFFECTS_JSON}</a>, <a href="{EFFECTS_PARQUET}">{EFFECTS_PARQUET}</a>;
visits: <code>arms/&lt;arm&gt;/outcomes.parquet</code>, rollouts: <code>arms/&lt;arm&gt;/rollouts/</code>.
{result["elapsed_s"]} s.</p>
</body></html>
"""


def write_report(result: dict[str, Any], out: str | Path) -> Path:
    """Write OUT/effects.parquet, effects.json, the forest plots and report.html; returns the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    effects_frame(result["rows"]).write_parquet(out / EFFECTS_PARQUET)
    (out / EFFECTS_JSON).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plots = {}
    for metric in METRICS:
        name = f"forest-{metric}.png"
        plot_forest(result, metric, out / name)
        plots[metric] = name
    page = out / REPORT_HTML
    page.write_text(report_html(result, plots), encoding="utf-8")
    return page

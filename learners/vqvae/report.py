"""What the learned buyer types are: RUN/report.md, RUN/report.html, RUN/metrics.json and PNG plots.

Per type: share of buyers, conversion rate, events per buyer, funnel rates, time-gap profile, top
categories and a generated one-line description; then the codebook usage histogram, a type x
behaviour heatmap, a few merchants' mixtures, and the k-means baseline's metrics side by side.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from learners.data.schema import FEATURE_NAMES, TABLE_FILES  # noqa: E402
from learners.vqvae.assign import CodeAssigner, buyer_visits, merchant_distributions  # noqa: E402
from learners.vqvae.dataset import BuyerRows, buyers_path, read_buyers, rows_from_table  # noqa: E402
from learners.vqvae.kmeans_baseline import run_baseline  # noqa: E402
from learners.vqvae.metrics import coherence_per_type, event_distributions, type_metrics  # noqa: E402

FUNNEL = ("product_view", "favorite", "add_to_cart", "checkout", "purchase")
GAP_BINS = (
    ("< 1 min", 0.0, np.log1p(60)),
    ("1-30 min", np.log1p(60), np.log1p(1800)),
    ("30 min-1 day", np.log1p(1800), np.log1p(86400)),
    ("> 1 day", np.log1p(86400), np.inf),
)
HEATMAP_FEATURES = (
    "log_n_events",
    "log_n_sessions",
    "share_search",
    "share_product_view",
    "share_favorite",
    "share_add_to_cart",
    "share_purchase",
    "log_mean_gap_s",
    "repeat_view_share",
    "cart_per_view",
    "purchase_per_view",
    "log_mean_price",
    "price_index",
    "markdown_share",
    "depth_frac",
)


_PRICE_WORDS = 0.2
"""A type's mean price_index beyond +-this (prices about a fifth off their categories' usual) reads as
picking cheap (dear) products."""
_SALE_WORDS = 1.25
"""A type whose mean markdown_share is at least this times the population's reads as seeking sales. A
share of events on sale cannot pass the share of the catalogue on sale for long, so the types' ratios
stay close to 1: on the truth benchmark's log (session 13) the two codes that hold most deal hunters
had 1.42 and 1.49 times the population's share, the others 0.80-1.07."""


def _col(name: str) -> int:
    return FEATURE_NAMES.index(name)


@dataclass
class TypeProfile:
    code: int
    buyers: int
    share: float
    conversion: float
    events_per_buyer: float
    funnel: dict[str, float]
    """Share of the type's buyers with at least one event of each FUNNEL type."""
    gap_profile: dict[str, float]
    """Share of the type's within-history gaps in each GAP_BINS bin."""
    median_gap_s: float
    coherence: float
    top_categories: list[str]
    price_index: float = 0.0
    """Mean of the type's buyers' ``price_index``: below 0, they pick what is cheap in its category."""
    markdown_share: float = 0.0
    """Mean of the type's buyers' ``markdown_share``: how many of their product events were on sale."""
    description: str = ""


def type_profiles(rows: BuyerRows, codes: np.ndarray, categories: dict[int, list[str]]) -> list[TypeProfile]:
    feats = rows.features
    n_events = np.expm1(feats[:, _col("log_n_events")])
    coh = coherence_per_type(event_distributions(feats), codes)
    positions = np.arange(rows.gaps.shape[1])
    valid_gap = (positions >= 1) & (positions < rows.lengths[:, None])
    profiles = []
    for code in np.unique(codes):
        m = codes == code
        gaps = rows.gaps[m][valid_gap[m]]
        gap_profile = {
            name: float(((gaps >= lo) & (gaps < hi)).mean()) if gaps.size else 0.0
            for name, lo, hi in GAP_BINS
        }
        profiles.append(
            TypeProfile(
                code=int(code),
                buyers=int(m.sum()),
                share=float(m.mean()),
                conversion=float(rows.converted[m].mean()),
                events_per_buyer=float(n_events[m].mean()),
                funnel={t: float((feats[m, _col(f"log_n_{t}")] > 0).mean()) for t in FUNNEL},
                gap_profile=gap_profile,
                median_gap_s=float(np.expm1(np.median(feats[m, _col("log_mean_gap_s")]))),
                coherence=coh[int(code)],
                top_categories=categories.get(int(code), []),
                price_index=float(feats[m, _col("price_index")].mean()),
                markdown_share=float(feats[m, _col("markdown_share")].mean()),
            )
        )
    population = TypeProfile(
        code=-1,
        buyers=len(codes),
        share=1.0,
        conversion=float(rows.converted.mean()),
        events_per_buyer=float(n_events.mean()),
        funnel={t: float((feats[:, _col(f"log_n_{t}")] > 0).mean()) for t in FUNNEL},
        gap_profile={},
        median_gap_s=float(np.expm1(np.median(feats[:, _col("log_mean_gap_s")]))),
        coherence=0.0,
        top_categories=[],
        price_index=float(feats[:, _col("price_index")].mean()),
        markdown_share=float(feats[:, _col("markdown_share")].mean()),
    )
    for p in profiles:
        p.description = describe(p, population)
    return profiles


def _ratio_words(ratio: float) -> str:
    if ratio >= 1.5:
        return f"{ratio:.1f}x the average"
    if ratio <= 0.67:
        return f"{ratio:.2f}x the average"
    return "about the average"


def describe(p: TypeProfile, population: TypeProfile) -> str:
    """A one-line reading of a type relative to the whole population."""
    conv = p.conversion / population.conversion if population.conversion > 0 else 0.0
    deepest = next((t for t in reversed(FUNNEL) if p.funnel[t] >= 0.5), None)
    reach = f"most reach {deepest.replace('_', ' ')}" if deepest else "most leave before viewing a product"
    activity = p.events_per_buyer / max(population.events_per_buyer, 1e-9)
    pace = ""
    if population.median_gap_s > 0 and p.median_gap_s > 0:
        speed = p.median_gap_s / population.median_gap_s
        pace = "; fast pace" if speed < 0.67 else ("; slow, deliberate pace" if speed > 1.5 else "")
    converts = (
        "never converts" if p.conversion == 0 else f"converts at {_ratio_words(conv)} ({p.conversion:.0%})"
    )
    prices = (
        "; picks cheap products"
        if p.price_index < -_PRICE_WORDS
        else ("; picks dear products" if p.price_index > _PRICE_WORDS else "")
    )
    sales = (
        f"; seeks sales ({p.markdown_share:.0%} of its product events on sale)"
        if population.markdown_share > 0 and p.markdown_share >= _SALE_WORDS * population.markdown_share
        else ""
    )
    return (
        f"{converts}; {reach}; {p.events_per_buyer:.1f} events per buyer ({_ratio_words(activity)})"
        f"{pace}{prices}{sales}"
    )


def top_categories(data_dir: Path, codes: pa.Table, k: int = 3) -> dict[int, list[str]]:
    """The ``k`` most frequent categories in each type's product events (empty without events)."""
    path = data_dir / TABLE_FILES["events"]
    if not path.exists():
        return {}
    events = pl.scan_parquet(path).select("merchant_id", "buyer_id", "category_id").drop_nulls("category_id")
    code_frame = pl.from_arrow(codes)
    assert isinstance(code_frame, pl.DataFrame)
    counts = (
        events.join(code_frame.lazy(), on=["merchant_id", "buyer_id"])
        .group_by("code", "category_id")
        .len()
        .sort(["code", "len", "category_id"], descending=[False, True, False])
        .group_by("code", maintain_order=True)
        .head(k)
        .collect()
    )
    out: dict[int, list[str]] = {}
    for code, cat in zip(counts["code"].to_list(), counts["category_id"].to_list(), strict=True):
        out.setdefault(int(code), []).append(str(cat))
    return out


def truth_labels(truth_path: Path, codes: pa.Table) -> np.ndarray:
    """Planted type per assigned buyer, in codes order; a clear error if any buyer has none."""
    truth = pl.read_parquet(truth_path, columns=["merchant_id", "buyer_id", "type_id"])
    frame = pl.from_arrow(codes.select(["merchant_id", "buyer_id"]))
    assert isinstance(frame, pl.DataFrame)
    joined = frame.join(truth, on=["merchant_id", "buyer_id"], how="left", maintain_order="left")
    missing = int(joined["type_id"].null_count())
    if missing:
        raise ValueError(
            f"{truth_path}: {missing} assigned buyers have no planted type; is it this data's truth?"
        )
    return joined["type_id"].to_numpy().astype(np.int64)


def _plots(run: Path, rows: BuyerRows, codes: np.ndarray, k: int, dist: pl.DataFrame) -> dict[str, str]:
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    files = {}
    counts = np.bincount(codes, minlength=k)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(np.arange(k), counts)
    ax.set(xlabel="code", ylabel="buyers", title="Codebook usage")
    fig.tight_layout()
    fig.savefig(plots / "usage.png", dpi=90)
    plt.close(fig)
    files["usage"] = "plots/usage.png"

    used = np.flatnonzero(counts)
    cols = [_col(f) for f in HEATMAP_FEATURES]
    feats = rows.features[:, cols]
    z = (feats - feats.mean(0)) / np.where(feats.std(0) > 0, feats.std(0), 1.0)
    heat = np.array([z[codes == c].mean(0) for c in used])
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(used) + 2))
    im = ax.imshow(np.clip(heat, -2.5, 2.5), cmap="RdBu_r", vmin=-2.5, vmax=2.5, aspect="auto")
    ax.set_xticks(range(len(cols)), HEATMAP_FEATURES, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(used)), [f"type {c}" for c in used], fontsize=7)
    fig.colorbar(im, ax=ax, label="mean z-score")
    ax.set_title("Type x behaviour")
    fig.tight_layout()
    fig.savefig(plots / "heatmap.png", dpi=90)
    plt.close(fig)
    files["heatmap"] = "plots/heatmap.png"

    top = (
        dist.group_by("merchant_id")
        .agg(pl.col("n").sum())
        .sort(["n", "merchant_id"], descending=[True, False])
        .head(6)
    )
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, merchant in enumerate(top["merchant_id"].to_list()):
        mix = dist.filter(pl.col("merchant_id") == merchant).sort("code")
        bottom = 0.0
        for code, p in zip(mix["code"].to_list(), mix["buyer_share"].to_list(), strict=True):
            ax.bar(i, p, bottom=bottom, color=plt.cm.tab20(code % 20))
            bottom += p
    ax.set_xticks(
        range(top.height), [str(m)[:12] for m in top["merchant_id"].to_list()], rotation=30, fontsize=7
    )
    ax.set(ylabel="share of buyers", title="Merchant type mixtures (largest merchants; colour = code)")
    fig.tight_layout()
    fig.savefig(plots / "merchants.png", dpi=90)
    plt.close(fig)
    files["merchants"] = "plots/merchants.png"
    return files


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _tables(profiles: list[TypeProfile], vq: dict[str, float], km: dict[str, float]) -> list[list[list[str]]]:
    keys = [k for k in vq if k in km]
    side = [["metric", "VQ-VAE", "k-means"]] + [[k, _fmt(vq[k]), _fmt(km[k])] for k in keys]
    head = [
        "type",
        "share",
        "conversion",
        "events/buyer",
        *(f"reach {t}" for t in FUNNEL),
        *(f"gaps {n}" for n, _, _ in GAP_BINS),
        "coherence",
        "top categories",
    ]
    body = [
        [
            str(p.code),
            f"{p.share:.1%}",
            f"{p.conversion:.1%}",
            f"{p.events_per_buyer:.1f}",
            *(f"{p.funnel[t]:.0%}" for t in FUNNEL),
            *(f"{p.gap_profile[n]:.0%}" for n, _, _ in GAP_BINS),
            f"{p.coherence:.3f}",
            ", ".join(p.top_categories),
        ]
        for p in profiles
    ]
    return [side, [head, *body]]


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    run_dir: str | Path, data_dir: str | Path, truth: str | Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Assign the training buyers, measure VQ-VAE and k-means, write the report; returns metrics.json."""
    run, data = Path(run_dir), Path(data_dir)
    assigner = CodeAssigner(run)
    table = read_buyers(buyers_path(data))
    rows = rows_from_table(table, assigner.max_seq_len)
    codes_table, _ = assigner.codes_of(table)
    codes = codes_table.column("code").to_numpy().astype(np.int64)
    labels = truth_labels(Path(truth), codes_table) if truth else None
    k = assigner.codes
    standardised = assigner.stats.apply(rows.features)
    vq = type_metrics(codes, k, standardised, rows.features, rows.converted, labels)
    km = run_baseline(rows, assigner.stats, k, seed=seed, truth=labels).metrics
    dist = pl.from_arrow(merchant_distributions(codes_table, buyer_visits(buyers_path(data))))
    assert isinstance(dist, pl.DataFrame)
    profiles = type_profiles(rows, codes, top_categories(data, codes_table))
    plots = _plots(run, rows, codes, k, dist)
    metrics = {
        **vq,
        "buyers": len(codes),
        "kmeans": km,
        "types": {
            str(p.code): {"share": p.share, "conversion": p.conversion, "description": p.description}
            for p in profiles
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    side, per_type = _tables(profiles, vq, km)
    # fit-personas' epoch lines count the codes an epoch's training batches hit, which can differ.
    counted = f"codes_in_use and perplexity count the codes of this assignment of all {len(codes):,} buyers."
    descriptions = [f"- **type {p.code}** ({p.share:.1%} of buyers): {p.description}" for p in profiles]
    md = [
        f"# Buyer types of {run.name}",
        "",
        f"{len(codes):,} buyers of `{data}`, K = {k}.",
        "",
        "## VQ-VAE vs k-means baseline (same features, same K)",
        "",
        _markdown_table(side),
        "",
        counted,
        "",
        "## Types",
        "",
        *descriptions,
        "",
        _markdown_table(per_type),
        "",
        *(f"![{name}]({path})" for name, path in plots.items()),
        "",
    ]
    (run / "report.md").write_text("\n".join(md))
    body = (
        f"<h1>Buyer types of {html.escape(run.name)}</h1><p>{len(codes):,} buyers, K = {k}.</p>"
        f"<h2>VQ-VAE vs k-means baseline</h2>{_html_table(side)}<p>{html.escape(counted)}</p>"
        "<h2>Types</h2><ul>"
        + "".join(
            f"<li><b>type {p.code}</b> ({p.share:.1%}): {html.escape(p.description)}</li>" for p in profiles
        )
        + f"</ul>{_html_table(per_type)}"
        + "".join(f'<h3>{name}</h3><img src="{path}" alt="{name}">' for name, path in plots.items())
    )
    (run / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Buyer types</title><style>"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
        f"</style></head><body>{body}</body></html>"
    )
    return metrics

"""Compare simulated buyers with real ones, per merchant and overall (metrics in engine/metrics.py).

Real side: a prepared directory (events, sessions). Simulated side: a rollouts directory written by
``simpersona simulate`` (one row per simulated step). A simulated buyer is one episode, a single
visit to the storefront, so by default a real "buyer" is one session too (``unit="session"``):
conversion is the share of visits that buy, and action rates are shares of visits. With
``unit="buyer"`` a real buyer is one user's whole history at the merchant, several visits, whose
conversion a one-visit episode cannot be expected to match.

Action types are compared only over the kinds the real source records: a source without search or
cart events cannot say how often real buyers search, so simulated navigation of that kind is left out
of JS and session lengths (it still counts for the invalid-action rate). Page views (``NAVIGATION``)
are never compared: how many pages a buyer passes through depends on the site's layout, and the
simulated storefront's pages are not the real site's (a synthetic log records only home-page views,
while every simulated category page, next page or back is one), so counting them made every simulator
look far from real buyers and the pooled real sessions of other merchants look close.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from engine import metrics as M

NAVIGATION = ("page_view",)
"""Event kinds left out of the compared kinds and session lengths (module docstring)."""
UNITS = ("session", "buyer")
"""What one real buyer is when compared with one simulated episode: a visit, or a whole history."""


@dataclass
class MerchantStats:
    """What the metrics need about one merchant's buyers, real or simulated."""

    buyers: int
    converted: int
    took: dict[str, int]
    """Buyers who took each action kind at least once."""
    kind_counts: dict[str, int]
    """Events (real) or valid steps (simulated) of each kind."""
    lengths: list[int] = field(default_factory=list)
    """Events per session (real) or kept steps per episode (simulated)."""

    @property
    def conversion_rate(self) -> float:
        return self.converted / self.buyers if self.buyers else 0.0


def _read(path: Path, columns: list[str]) -> pl.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is this a prepared/rollouts directory?")
    return pl.read_parquet(path, columns=columns)


def _real_frames(
    data_dir: str | Path, merchants: list[str] | None, unit: str, since: datetime | None
) -> tuple[pl.DataFrame, list[str]]:
    """The real events of ``merchants`` in sessions from ``since`` on, and the columns of one unit."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    data = Path(data_dir)
    key = ["merchant_id", "buyer_id", "session_id"]
    events = _read(data / "events.parquet", [*key, "event_type"])
    sessions = _read(data / "sessions.parquet", [*key, "start"])
    if merchants is not None:
        keep = pl.Series(merchants, dtype=pl.String)
        events = events.filter(pl.col("merchant_id").is_in(keep))
        sessions = sessions.filter(pl.col("merchant_id").is_in(keep))
    if since is not None:
        sessions = sessions.filter(pl.col("start") >= since)
        events = events.join(sessions.select(key), on=key, how="semi")
    return events, key if unit == "session" else key[:2]


def real_stats(
    data_dir: str | Path,
    merchants: list[str] | None = None,
    unit: str = "session",
    since: datetime | None = None,
) -> dict[str, MerchantStats]:
    """Per-merchant statistics of real buyers from a prepared directory.

    ``unit="session"`` counts each visit as one buyer (a simulated episode is one visit);
    ``unit="buyer"`` counts a user's whole history at the merchant. ``since`` keeps the sessions that
    start at or after it (the later window of the strict protocol).
    """
    events, per = _real_frames(data_dir, merchants, unit, since)
    buyers = (
        events.group_by(per)
        .agg((pl.col("event_type") == "purchase").any().alias("converted"))
        .group_by("merchant_id")
        .agg(pl.len().alias("buyers"), pl.col("converted").sum())
    )
    acts = _behaviour(events)
    took = acts.unique([*per, "event_type"]).group_by("merchant_id", "event_type").len()
    kinds = acts.group_by("merchant_id", "event_type").len()
    sessions = acts.group_by(["merchant_id", "buyer_id", "session_id"]).len()
    lengths = sessions.group_by("merchant_id").agg(pl.col("len").alias("lengths"))
    return _assemble(buyers, took, kinds, lengths, kind_col="event_type")


def _behaviour(events: pl.DataFrame) -> pl.DataFrame:
    """The events that are compared: all but ``NAVIGATION``."""
    return events.filter(~pl.col("event_type").is_in(pl.Series(NAVIGATION, dtype=pl.String)))


def rollout_parts(rollouts_dir: str | Path) -> list[Path]:
    """The Parquet parts of a simulation run (``OUT/rollouts/*.parquet``, or a folder of parts)."""
    root = Path(rollouts_dir)
    parts = sorted((root / "rollouts").glob("*.parquet")) or sorted(root.glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(
            f"no rollout parts under {root}: run `simpersona simulate --out {root}` first"
        )
    return parts


def sim_stats(rollouts_dir: str | Path, real_kinds: set[str] | None = None) -> dict[str, MerchantStats]:
    """Per-merchant statistics of simulated buyers; ``real_kinds`` restricts the kinds compared."""
    columns = ["sim_buyer_id", "merchant_id", "action_kind", "valid"]
    steps = pl.concat([pl.read_parquet(p, columns=columns) for p in rollout_parts(rollouts_dir)])
    buyers = steps.group_by("merchant_id").agg(
        pl.col("sim_buyer_id").n_unique().alias("buyers"),
        pl.col("sim_buyer_id")
        .filter(pl.col("valid") & (pl.col("action_kind") == "purchase"))
        .n_unique()
        .alias("converted"),
    )
    kept = steps.filter(
        pl.col("valid") & ~pl.col("action_kind").is_in(pl.Series(NAVIGATION, dtype=pl.String))
    )
    if real_kinds is not None:
        kept = kept.filter(pl.col("action_kind").is_in(pl.Series(sorted(real_kinds), dtype=pl.String)))
    took = (
        kept.unique(["merchant_id", "sim_buyer_id", "action_kind"])
        .group_by("merchant_id", "action_kind")
        .len()
    )
    kinds = kept.group_by("merchant_id", "action_kind").len()
    lengths = (
        kept.group_by("merchant_id", "sim_buyer_id")
        .len()
        .group_by("merchant_id")
        .agg(pl.col("len").alias("lengths"))
    )
    return _assemble(buyers, took, kinds, lengths, kind_col="action_kind")


def _assemble(buyers, took, kinds, lengths, kind_col: str) -> dict[str, MerchantStats]:
    out = {
        r["merchant_id"]: MerchantStats(int(r["buyers"]), int(r["converted"]), {}, {})
        for r in buyers.iter_rows(named=True)
    }
    for r in took.iter_rows(named=True):
        out[r["merchant_id"]].took[r[kind_col]] = int(r["len"])
    for r in kinds.iter_rows(named=True):
        out[r["merchant_id"]].kind_counts[r[kind_col]] = int(r["len"])
    for r in lengths.iter_rows(named=True):
        out[r["merchant_id"]].lengths = [int(x) for x in r["lengths"] if x > 0]
    return out


def fidelity(sim: Mapping[str, MerchantStats], real: Mapping[str, MerchantStats]) -> dict:
    """All sim-vs-real metrics of one system over the merchants both sides have."""
    merchants = sorted(set(sim) & set(real))
    if not merchants:
        raise ValueError(f"no merchant in common: simulated {sorted(sim)[:5]}..., real {sorted(real)[:5]}...")
    cr_sim = {m: sim[m].conversion_rate for m in merchants}
    cr_real = {m: real[m].conversion_rate for m in merchants}
    cra_per, cra = M.conversion_rate_alignment(cr_sim, cr_real)
    sim_counts = {m: M.ActionCounts(sim[m].buyers, sim[m].took) for m in merchants}
    real_counts = {m: M.ActionCounts(real[m].buyers, real[m].took) for m in merchants}
    cells, ara = M.action_rate_alignment(sim_counts, real_counts)
    strata = M.conversion_strata(cr_real)
    shares = {}
    for stratum, row in cells.items():
        members = [m for m in merchants if strata[m] == stratum]
        sim_share = M.stratum_action_shares(sim_counts, members, list(row))
        real_share = M.stratum_action_shares(real_counts, members, list(row))
        shares[stratum] = {a: {"sim": sim_share[a], "real": real_share[a]} for a in row}
    js_action = [
        M.categorical_js(sim[m].kind_counts, real[m].kind_counts)
        for m in merchants
        if sum(sim[m].kind_counts.values()) and sum(real[m].kind_counts.values())
    ]
    js_length = [
        M.length_js(sim[m].lengths, real[m].lengths) for m in merchants if sim[m].lengths and real[m].lengths
    ]
    return {
        "merchants": len(merchants),
        "cra": cra,
        "cra_per_merchant": cra_per,
        "cr_sim": cr_sim,
        "cr_real": cr_real,
        "cr_corr": M.conversion_correlation(cr_sim, cr_real),
        "ara": ara,
        "ara_cells": cells,
        "ara_shares": shares,
        "js_action": float(np.mean(js_action)) if js_action else float("nan"),
        "js_length": float(np.mean(js_length)) if js_length else float("nan"),
    }


LENGTH_CAP = 30
"""Session lengths above this share the last bin of the length histogram (``metrics.length_js``)."""


@dataclass
class Units:
    """Each merchant's units (real sessions or buyers, simulated visits) as rows of features.

    A row is ``[1, converted, took[a] for a in actions, count[a] for a in actions, sessions of length
    1..LENGTH_CAP]``, so a weighted sum of rows is everything the fidelity metrics need of a merchant
    (``engine/batch_metrics.py``): the bootstrap resamples rows, never events.
    """

    actions: list[str]
    """Action kinds of the took/count columns, shared by the real and simulated side."""
    rows: dict[str, np.ndarray]
    """Merchant -> (units, 2 + 2 * len(actions) + LENGTH_CAP) float matrix."""

    def counts(self) -> dict[str, int]:
        return {m: len(r) for m, r in self.rows.items()}


def _unit_rows(
    units: pl.DataFrame, kinds: pl.DataFrame, lengths: pl.DataFrame, actions: list[str], key: list[str]
) -> dict[str, np.ndarray]:
    """Feature rows from one row per unit (key, converted), its (key, kind, n) counts and its (key, length)."""
    units = units.sort(key).with_row_index("u")
    n, a = units.height, len(actions)
    rows = np.zeros((n, 2 + 2 * a + LENGTH_CAP), dtype=np.float64)
    rows[:, 0] = 1.0
    rows[:, 1] = units["converted"].cast(pl.Float64).to_numpy()
    code = pl.Series(actions, dtype=pl.String)
    counted = kinds.join(units.select([*key, "u"]), on=key).filter(pl.col("kind").is_in(code))
    if counted.height:
        k = counted["kind"].replace_strict(actions, list(range(a)), return_dtype=pl.Int64).to_numpy()
        u = counted["u"].to_numpy()
        flat = np.bincount(u * a + k, weights=counted["n"].to_numpy().astype(float), minlength=n * a)
        rows[:, 2 + a : 2 + 2 * a] = flat.reshape(n, a)
        rows[:, 2 : 2 + a] = rows[:, 2 + a : 2 + 2 * a] > 0
    sized = lengths.join(units.select([*key, "u"]), on=key).filter(pl.col("length") > 0)
    if sized.height:
        b = np.clip(sized["length"].to_numpy(), 1, LENGTH_CAP) - 1
        flat = np.bincount(sized["u"].to_numpy() * LENGTH_CAP + b, minlength=n * LENGTH_CAP)
        rows[:, 2 + 2 * a :] = flat.reshape(n, LENGTH_CAP)
    merchants = units["merchant_id"].to_numpy()
    cuts = np.flatnonzero(merchants[1:] != merchants[:-1]) + 1
    starts = np.r_[0, cuts]
    return {str(merchants[s]): block for s, block in zip(starts, np.split(rows, cuts), strict=True)}


def real_units(
    data_dir: str | Path,
    merchants: list[str] | None = None,
    unit: str = "session",
    since: datetime | None = None,
    actions: list[str] | None = None,
) -> Units:
    """``real_stats``'s buyers as feature rows (same unit, merchants and window); ``actions`` defaults
    to the kinds these buyers took, and events of other kinds are left out of the kind columns."""
    events, per = _real_frames(data_dir, merchants, unit, since)
    acts = _behaviour(events)
    if actions is None:
        actions = sorted(acts["event_type"].unique().to_list())
    units = events.group_by(per).agg((pl.col("event_type") == "purchase").any().alias("converted"))
    kinds = acts.group_by([*per, "event_type"]).len().rename({"event_type": "kind", "len": "n"})
    lengths = acts.group_by(per).len().rename({"len": "length"})
    return Units(actions, _unit_rows(units, kinds, lengths, actions, per))


def sim_units(rollouts_dir: str | Path, actions: list[str]) -> Units:
    """``sim_stats``'s visits as feature rows; only valid steps of ``actions`` (the real kinds) count."""
    columns = ["sim_buyer_id", "merchant_id", "action_kind", "valid"]
    steps = pl.concat([pl.read_parquet(p, columns=columns) for p in rollout_parts(rollouts_dir)])
    key = ["merchant_id", "sim_buyer_id"]
    units = steps.group_by(key).agg(
        (pl.col("valid") & (pl.col("action_kind") == "purchase")).any().alias("converted")
    )
    kept = steps.filter(pl.col("valid") & pl.col("action_kind").is_in(pl.Series(actions, dtype=pl.String)))
    kinds = kept.group_by([*key, "action_kind"]).len().rename({"action_kind": "kind", "len": "n"})
    lengths = kept.group_by(key).len().rename({"len": "length"})
    return Units(actions, _unit_rows(units, kinds, lengths, actions, key))


def step_quality(rollouts_dir: str | Path) -> dict:
    """Invalid-action rate, goal success (with a CI over seeds) and variation of behaviour across types."""
    steps = pl.concat([pl.read_parquet(p) for p in rollout_parts(rollouts_dir)], how="diagonal_relaxed")
    out: dict = {"invalid_rate": M.invalid_action_rate(steps["valid"].to_numpy()), "steps": steps.height}
    if "goal" in steps.columns and steps["goal"].is_not_null().any():
        goals = steps.filter(pl.col("goal").is_not_null())
        seed_col = "seed" if "seed" in goals.columns else None
        per_buyer = goals.group_by(["sim_buyer_id", *([seed_col] if seed_col else [])]).agg(
            (pl.col("reward").max() > 0).alias("success")
        )
        seeds = {}
        if seed_col and per_buyer[seed_col].n_unique() > 1:
            by_seed = per_buyer.group_by(seed_col).agg(pl.col("success").mean()).sort(seed_col)
            seeds = {str(k): v for k, v in by_seed.iter_rows()}
            ci = M.success_rate_ci(list(seeds.values()))
        else:
            ci = M.wilson_interval(int(per_buyer["success"].sum()), per_buyer.height)
        # Per-seed rates let two systems given the same tasks be compared seed by seed (study_report.py).
        out["goal_success"] = {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n, "seeds": seeds}
    if "code" in steps.columns and steps["code"].is_not_null().any():
        per_buyer = steps.group_by("sim_buyer_id").agg(
            pl.col("code").first(),
            pl.len().alias("steps"),
            (pl.col("valid") & (pl.col("action_kind") == "product_view")).sum().alias("product_views"),
            (pl.col("valid") & (pl.col("action_kind") == "purchase"))
            .any()
            .cast(pl.Float64)
            .alias("converted"),
        )
        variation = {}
        for metric in ("steps", "product_views", "converted"):
            groups = {int(k): g[metric].to_list() for (k,), g in per_buyer.group_by("code")}
            try:
                v = M.variation_across_types(groups)
            except ValueError:
                continue
            variation[metric] = {
                "kruskal_h": v.statistic,
                "p_value": v.p_value,
                "largest_pair": list(v.largest_pair),
                "cliffs_delta": v.cliffs_delta,
                "cohens_d": v.cohens_d,
            }
        out["variation_across_types"] = variation
        buyers_per_code = per_buyer.group_by("code").len()
        took = (
            steps.filter(pl.col("valid"))
            .unique(["sim_buyer_id", "action_kind"])
            .group_by("code", "action_kind")
            .len()
            .join(buyers_per_code, on="code", suffix="_buyers")
        )
        profile: dict[str, dict[str, float]] = {}
        for r in took.iter_rows(named=True):
            profile.setdefault(str(r["code"]), {})[r["action_kind"]] = r["len"] / r["len_buyers"]
        out["type_profile"] = profile
    return out

"""The prepare steps written the way a pandas user would: the baseline of benchmarks/pipeline.py.

  python benchmarks/pandas_prepare.py INPUT... --mapping FILE --out DIR

Reads every input whole (pandas has no streaming group-by), maps event codes, quarantines unusable rows
with a reason, orders each buyer's events, sessionizes (the source's session id, else a 30-minute gap),
and writes events, sessions, buyers, catalogs, merchants and quarantine Parquet files plus counts.json.

Buyer features computed (a representative subset of schema.FEATURE_NAMES): per event type log counts
and shares, log n_events / n_sessions / events per session / n_products / n_categories / active days /
mean in-session gap / span days, cart_per_view, purchase_per_view, purchase_per_cart, log mean price,
depth; plus event_seq and gap_seq (the last --max-seq-len events). Not computed: repeat_view_share.
CSV rows with too many fields are skipped by pandas (on_bad_lines="skip") and counted as quarantined.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from learners.data.catalogs import REGULAR_PRICE_SHARE
from learners.data.mapping import SourceMapping, load_mapping
from learners.data.schema import EVENT_TYPES, FUNNEL_DEPTH, FUNNEL_STAGES, SESSION_GAP_SECONDS

FIELDS = ("merchant_id", "buyer_id", "session_id", "ts", "product_id", "category_id", "price", "query")


def read_inputs(inputs: list[Path], mapping: SourceMapping) -> tuple[pd.DataFrame, int]:
    """All rows as text columns, plus the number of CSV lines pandas skipped as malformed."""
    frames, skipped = [], 0
    for path in inputs:
        if path.suffix == ".parquet" or mapping.format == "parquet":
            parquet = pd.read_parquet(path)
            df = parquet.astype(str).mask(parquet.isna(), "")  # text like the CSV path; "" = missing
        else:
            header = 0 if mapping.csv.header else None
            names = list(mapping.csv.columns) if mapping.csv.columns else None
            with open(path, "rb") as fh:
                lines = sum(1 for _ in fh) - (1 if mapping.csv.header else 0)
            df = pd.read_csv(
                path,
                sep=mapping.csv.delimiter or ",",
                header=header,
                names=names,
                dtype=str,
                keep_default_na=False,
                on_bad_lines="skip",
            )
            skipped += lines - len(df)
        df["_file"] = str(path)
        df["_line"] = np.arange(len(df)) + (2 if mapping.csv.header else 1)
        frames.append(df)
    return pd.concat(frames, ignore_index=True), skipped


def parse_ts(raw: pd.Series, mapping: SourceMapping) -> pd.Series:
    spec = mapping.timestamp
    if spec.format in ("unix_s", "unix_ms"):
        ts = pd.to_datetime(
            pd.to_numeric(raw, errors="coerce"), unit="s" if spec.format == "unix_s" else "ms", utc=True
        )
    elif spec.format == "iso":
        ts = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
    elif spec.year is not None:
        ts = pd.to_datetime(str(spec.year) + "-" + raw, format="%Y-" + spec.format, errors="coerce")
    else:
        ts = pd.to_datetime(raw, format=spec.format, errors="coerce")
    if ts.dt.tz is None:
        ts = ts.dt.tz_localize(spec.timezone, ambiguous="NaT", nonexistent="NaT")
    local = ts.dt.tz_convert(spec.timezone)
    bad_range = pd.Series(False, index=raw.index)
    if spec.min is not None:
        bad_range |= local < pd.Timestamp(spec.min).tz_localize(spec.timezone)
    if spec.max is not None:
        bad_range |= local > pd.Timestamp(spec.max).tz_localize(spec.timezone)
    if spec.resolution == "day":
        ts = local.dt.tz_localize(None).dt.normalize().dt.tz_localize("UTC")
    return ts.dt.tz_convert("UTC"), bad_range


def canonical(df: pd.DataFrame, mapping: SourceMapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = pd.DataFrame(index=df.index)
    for name in FIELDS:
        src = mapping.fields.get(name)
        if src is None:
            out[name] = None
        elif src.column is not None:
            out[name] = df[src.column].replace("", None)
        else:
            out[name] = src.constant
    out["event_type"] = df[mapping.event_type.column].map(mapping.event_type.map)
    out["ts"], bad_range = parse_ts(df[mapping.fields["ts"].column], mapping)
    out["price"] = pd.to_numeric(out["price"], errors="coerce") if out["price"].notna().any() else np.nan
    raw_price = df[mapping.fields["price"].column] if "price" in mapping.fields else None

    reason = pd.Series(None, index=df.index, dtype="object")
    checks = [
        (out["merchant_id"].isna(), "missing merchant_id"),
        (out["buyer_id"].isna(), "missing buyer_id"),
        (out["ts"].isna(), "unparseable timestamp"),
        (bad_range, "timestamp outside valid range"),
        (out["event_type"].isna(), "unknown event code"),
    ]
    if raw_price is not None:
        checks.append((((raw_price != "") & out["price"].isna()) | (out["price"] < 0), "bad price"))
    for mask, text in checks:
        reason = reason.where(reason.notna() | ~mask, text)
    bad = reason.notna()
    quarantine = pd.DataFrame({"file": df["_file"][bad], "line": df["_line"][bad], "reason": reason[bad]})
    out["src_order"] = np.arange(len(out))
    return out[~bad].reset_index(drop=True), quarantine


def sessionize(ev: pd.DataFrame, day_resolution: bool) -> pd.DataFrame:
    ev = ev.sort_values(["merchant_id", "buyer_id", "ts", "src_order"], kind="stable").reset_index(drop=True)
    new_buyer = (ev["merchant_id"] != ev["merchant_id"].shift()) | (ev["buyer_id"] != ev["buyer_id"].shift())
    gap = ev["ts"].diff().dt.total_seconds()
    if ev["session_id"].notna().all():
        new_session = new_buyer | (ev["session_id"] != ev["session_id"].shift())
    else:
        new_session = new_buyer | (gap > SESSION_GAP_SECONDS)
        ev["session_id"] = new_session.cumsum().astype(str)
    ev["gap_s"] = np.where(new_session | day_resolution, 0.0, gap)
    ev["seq"] = ev.groupby(["merchant_id", "buyer_id"]).cumcount()
    ev["depth"] = ev["event_type"].map(FUNNEL_DEPTH)
    return ev


def sessions_table(ev: pd.DataFrame) -> pd.DataFrame:
    g = ev.assign(
        is_view=ev["event_type"] == "product_view",
        is_cart=ev["event_type"] == "add_to_cart",
        is_buy=ev["event_type"] == "purchase",
    ).groupby(["merchant_id", "buyer_id", "session_id"], sort=False)
    s = g.agg(
        start=("ts", "min"),
        end=("ts", "max"),
        n_events=("ts", "size"),
        n_product_views=("is_view", "sum"),
        n_carts=("is_cart", "sum"),
        n_purchases=("is_buy", "sum"),
        depth=("depth", "max"),
    ).reset_index()
    s["converted"] = s["n_purchases"] > 0
    return s


def buyers_table(ev: pd.DataFrame, max_seq_len: int) -> pd.DataFrame:
    keys = ["merchant_id", "buyer_id"]
    counts = pd.crosstab([ev["merchant_id"], ev["buyer_id"]], ev["event_type"]).reindex(
        columns=list(EVENT_TYPES), fill_value=0
    )
    g = ev.groupby(keys, sort=False)
    b = g.agg(
        n_events=("ts", "size"),
        n_sessions=("session_id", "nunique"),
        first_ts=("ts", "min"),
        last_ts=("ts", "max"),
        n_products=("product_id", "nunique"),
        n_categories=("category_id", "nunique"),
        mean_price=("price", "mean"),
        depth=("depth", "max"),
        mean_gap_s=("gap_s", "mean"),
    )
    b["active_days"] = ev.assign(day=ev["ts"].dt.floor("D")).groupby(keys, sort=False)["day"].nunique()
    b = b.join(counts)
    n = b["n_events"]
    for t in EVENT_TYPES:
        b[f"log_n_{t}"] = np.log1p(b[t])
        b[f"share_{t}"] = b[t] / n
    b["log_events_per_session"] = np.log1p(n / b["n_sessions"])
    b["log_span_days"] = np.log1p((b["last_ts"] - b["first_ts"]).dt.total_seconds() / 86400)
    b["cart_per_view"] = b["add_to_cart"] / b["product_view"].clip(lower=1)
    b["purchase_per_view"] = b["purchase"] / b["product_view"].clip(lower=1)
    b["purchase_per_cart"] = b["purchase"] / b["add_to_cart"].clip(lower=1)
    b["log_mean_price"] = np.log1p(b["mean_price"].fillna(0))
    b["depth_frac"] = b["depth"] / 5
    b["n_purchases"] = b["purchase"]
    b["converted"] = b["purchase"] > 0
    tail = ev.groupby(keys, sort=False).tail(max_seq_len)
    seqs = tail.assign(
        code=tail["event_type"].map({t: i for i, t in enumerate(EVENT_TYPES)}), lgap=np.log1p(tail["gap_s"])
    ).groupby(keys, sort=False)
    b["event_seq"] = seqs["code"].agg(list)
    b["gap_seq"] = seqs["lgap"].agg(list)
    return b.reset_index()


def catalogs_table(ev: pd.DataFrame) -> pd.DataFrame:
    prod = ev[ev["product_id"].notna()]
    c = (
        prod.assign(
            is_view=prod["event_type"] == "product_view",
            is_cart=prod["event_type"] == "add_to_cart",
            is_buy=prod["event_type"] == "purchase",
        )
        .groupby(["merchant_id", "product_id"])
        .agg(
            category_id=("category_id", "first"),
            n_events=("event_type", "size"),
            n_views=("is_view", "sum"),
            n_carts=("is_cart", "sum"),
            n_purchases=("is_buy", "sum"),
        )
        .reset_index()
    )
    # The regular price: the highest price a REGULAR_PRICE_SHARE of the product's priced events logged.
    key = ["merchant_id", "product_id"]
    w = prod.dropna(subset=["price"]).groupby([*key, "price"]).size().rename("w").reset_index()
    w = w[w["w"] >= REGULAR_PRICE_SHARE * w.groupby(key)["w"].transform("sum")]
    c = c.merge(w.groupby(key)["price"].max().reset_index(), on=key, how="left")
    c["popularity"] = c["n_events"] / c.groupby("merchant_id")["n_events"].transform("sum")
    return c.drop(columns="n_events")


def merchants_table(ev: pd.DataFrame, buyers: pd.DataFrame) -> pd.DataFrame:
    g = ev.groupby("merchant_id")
    m = pd.DataFrame(
        {
            "buyers": buyers.groupby("merchant_id").size(),
            "sessions": g["session_id"].nunique(),
            "events": g.size(),
            "products": g["product_id"].nunique(),
            "conversion_rate": buyers.groupby("merchant_id")["converted"].mean(),
        }
    )
    for stage, depth in zip(FUNNEL_STAGES[1:], range(1, 6), strict=True):
        m[f"rate_{stage}"] = (buyers["depth"] >= depth).groupby(buyers["merchant_id"]).mean()
    return m.reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("--mapping", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-seq-len", type=int, default=256)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    mapping = load_mapping(args.mapping)
    raw, skipped = read_inputs(args.inputs, mapping)
    rows_read = len(raw) + skipped
    events, quarantine = canonical(raw, mapping)
    del raw
    events = sessionize(events, mapping.day_resolution)
    sessions = sessions_table(events)
    buyers = buyers_table(events, args.max_seq_len)
    catalogs = catalogs_table(events)
    merchants = merchants_table(events, buyers)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, df in [
        ("events", events),
        ("sessions", sessions),
        ("buyers", buyers),
        ("catalogs", catalogs),
        ("merchants", merchants),
        ("quarantine", quarantine),
    ]:
        df.to_parquet(args.out / f"{name}.parquet", index=False)
    counts = {
        "rows_read": rows_read,
        "events": len(events),
        "rows_quarantined": len(quarantine) + skipped,
        "buyers": len(buyers),
        "sessions": len(sessions),
        "merchants": len(merchants),
        "seconds": time.perf_counter() - began,
    }
    (args.out / "counts.json").write_text(json.dumps(counts, indent=2))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

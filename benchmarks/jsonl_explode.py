"""Reading nested JSON lines against the pandas way: OTTO's layout (``jsonl: {explode: events}``) and
a GA4 BigQuery export (``jsonl: {explode: items, keep_empty: true}``, parameters in key/value lists).

  .venv/bin/python -m benchmarks.jsonl_explode
  .venv/bin/python -m benchmarks.jsonl_explode --sessions 50000 --repeats 5
  .venv/bin/python -m benchmarks.jsonl_explode --layout ga4 --sessions 5000

Writes a seeded file and reads it to canonical events twice per repeat:

- OTTO: one session per line, 1-30 events of an article id, a unix time in milliseconds and a type;
- GA4: one event per line as BigQuery exports it (integers as strings, ``event_params`` as
  ``{key, value}`` objects, ``items`` listed, device and geo objects), 11-14 events per visit;
- ours: ``prepare --check``'s path (``check_rows`` through examples/mappings/otto.yaml or ga4.yaml):
  stream the lines, explode, map the codes, parse the times, quarantine what is unusable, count;
- pandas, as a user would write it: ``read_json(lines=True)``, ``explode``, ``json_normalize``, for
  GA4 the session id and search term looked up in each line's parameters and a listing's items kept
  once, the code map and ``to_datetime`` (no quarantine, no line numbers).

Prints events/s of each (min and median over the repeats) and the ratio ours / pandas of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from learners.data.adapters import MappingAdapter
from learners.data.mapping import mapping_from_dict
from learners.data.row_check import check_rows
from learners.data.schema import PRODUCT_EVENT_TYPES

MAPPINGS = Path(__file__).resolve().parents[1] / "examples" / "mappings"
TYPES = ("clicks", "carts", "orders")
GA4_MAP = yaml.safe_load((MAPPINGS / "ga4.yaml").read_text())["event_type"]["map"]
GA4_VISIT = (
    ("session_start", 0),
    ("page_view", 0),
    ("view_item_list", 8),
    ("select_item", 1),
    ("view_item", 1),
    ("scroll", 0),
    ("view_search_results", 0),
    ("view_item_list", 8),
    ("view_item", 1),
    ("user_engagement", 0),
    ("view_item", 1),
)
"""A GA4 visit's events and how many items each lists; some visits go on to buy (``GA4_BUY``)."""
GA4_BUY = (("add_to_cart", 1), ("begin_checkout", 2), ("purchase", 2))


def write_otto(path: Path, sessions: int, seed: int) -> int:
    """An OTTO-shaped JSON-lines file; returns its number of events."""
    rng = np.random.default_rng(seed)
    events = 0
    with path.open("w") as fh:
        for session in range(sessions):
            n = int(rng.integers(1, 31))
            ts = (
                1659304800000 + int(rng.integers(0, 28 * 86_400_000)) + np.cumsum(rng.integers(1, 600_000, n))
            )
            aids = rng.integers(0, 1_800_000, n)
            kinds = rng.choice(len(TYPES), size=n, p=(0.9, 0.08, 0.02))
            rows = [
                {"aid": int(a), "ts": int(t), "type": TYPES[k]}
                for a, t, k in zip(aids, ts, kinds, strict=True)
            ]
            fh.write(json.dumps({"session": session, "events": rows}) + "\n")
            events += n
    return events


def _param(key: str, value: str, kind: str) -> dict:
    values = {"string_value": None, "int_value": None, "float_value": None, "double_value": None}
    return {"key": key, "value": values | {kind: value}}


def write_ga4(path: Path, visits: int, seed: int) -> int:
    """A GA4-export-shaped JSON-lines file of ``visits`` visits; returns the canonical events it holds."""
    rng = np.random.default_rng(seed)
    events = 0
    with path.open("w") as fh:
        for visit in range(visits):
            user = f"{1_000_000_000 + int(rng.integers(visits // 2 + 1)) * 7919}.1609459200"
            start = 1_609_459_200_000_000 + int(rng.integers(0, 28 * 86_400)) * 1_000_000
            steps = GA4_VISIT + (GA4_BUY if rng.random() < 0.1 else ())
            products = rng.integers(0, 20_000, 8)
            for k, (name, listed) in enumerate(steps):
                params = [
                    _param("ga_session_id", str(start // 1_000_000), "int_value"),
                    _param("page_location", f"https://shop.example.com/p/{visit}/{k}", "string_value"),
                    _param("engagement_time_msec", str(int(rng.integers(10_000))), "int_value"),
                ]
                if name == "view_search_results":
                    params.append(_param("search_term", "water bottle", "string_value"))
                items = [
                    {"item_id": f"GG{int(p):06d}", "item_name": "Google Tee", "item_category": "Apparel"}
                    | {"price": float(16 + p % 40), "quantity": "1", "item_list_index": str(i + 1)}
                    for i, p in enumerate(products[:listed])
                ]
                row = {
                    "event_date": "20210101",
                    "event_timestamp": str(start + k * 20_000_000),
                    "event_name": name,
                    "event_params": params,
                    "user_id": None,
                    "user_pseudo_id": user,
                    "device": {"category": "desktop", "operating_system": "Web", "language": "en-us"},
                    "geo": {"continent": "Americas", "country": "United States", "city": "(not set)"},
                    "traffic_source": {"name": "(direct)", "medium": "(none)", "source": "(direct)"},
                    "platform": "WEB",
                    "items": items,
                }
                fh.write(json.dumps(row) + "\n")
                if name in GA4_MAP:
                    events += listed if GA4_MAP[name] in PRODUCT_EVENT_TYPES else 1
    return events


def ours(path: Path, layout: str) -> int:
    mapping = MAPPINGS / f"{layout}.yaml"
    adapter = MappingAdapter(mapping_from_dict(yaml.safe_load(mapping.read_text()), str(mapping)))
    return check_rows([path], adapter).counts["rows_kept"]


def _parameter(params: list[dict], key: str, kind: str) -> str | None:
    return next((p["value"][kind] for p in params if p["key"] == key), None)


def ga4_with_pandas(path: Path) -> int:
    lines = pd.read_json(path, lines=True, dtype=False)
    lines = lines[lines["event_name"].isin(list(GA4_MAP))]
    lines["session_id"] = lines["event_params"].map(lambda ps: _parameter(ps, "ga_session_id", "int_value"))
    lines["query"] = lines["event_params"].map(lambda ps: _parameter(ps, "search_term", "string_value"))
    lines["event_type"] = lines["event_name"].map(GA4_MAP)
    rows = lines.explode("items")
    # A listing's items are one page view; a purchase's are one row each.
    rows = rows[rows["event_type"].isin(PRODUCT_EVENT_TYPES) | ~rows.index.duplicated()]
    items = pd.json_normalize([i if isinstance(i, dict) else {} for i in rows["items"]])
    events = rows[["user_pseudo_id", "session_id", "query", "event_type"]].reset_index(drop=True)
    events[["product_id", "category_id", "price"]] = items[["item_id", "item_category", "price"]]
    events["ts"] = pd.to_datetime(rows["event_timestamp"].astype("int64").to_numpy(), unit="us", utc=True)
    return int(events["event_type"].notna().sum())


def with_pandas(path: Path) -> int:
    sessions = pd.read_json(path, lines=True)
    rows = sessions.explode("events", ignore_index=True)
    events = pd.json_normalize(rows["events"].tolist())
    events["session"] = rows["session"].to_numpy()
    events["event_type"] = events["type"].map(
        {"clicks": "product_view", "carts": "add_to_cart", "orders": "purchase"}
    )
    events["ts"] = pd.to_datetime(events["ts"], unit="ms", utc=True)
    return int(events["event_type"].notna().sum())


def timed(read: Callable[[Path], int], path: Path, repeats: int) -> tuple[list[float], int]:
    """Seconds of each of ``repeats`` reads, and the events the last kept."""
    seconds, kept = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        kept = read(path)
        seconds.append(time.perf_counter() - start)
    return seconds, kept


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layout", choices=("otto", "ga4"), default="otto", help="the file's layout")
    parser.add_argument(
        "--sessions", type=int, default=20_000, help="sessions of the generated file (OTTO: lines)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed reads of each way")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        write = write_otto if args.layout == "otto" else write_ga4
        events = write(path, args.sessions, args.seed)
        lines = sum(1 for _ in path.open("rb"))
        print(
            f"{args.layout}: {args.sessions:,} sessions, {lines:,} lines, {events:,} events,"
            f" {path.stat().st_size / 1e6:.1f} MB"
        )
        results = {}
        baseline = with_pandas if args.layout == "otto" else ga4_with_pandas
        for name, read in (
            ("ours (prepare --check)", lambda p: ours(p, args.layout)),
            ("pandas", baseline),
        ):
            seconds, kept = timed(read, path, args.repeats)
            if kept != events:
                raise SystemExit(f"{name} kept {kept:,} of {events:,} events")
            results[name] = statistics.median(seconds)
            print(
                f"{name:<22} min {min(seconds):6.2f} s  median {results[name]:6.2f} s"
                f"  ({events / results[name]:,.0f} events/s at the median)"
            )
        ratio = results["pandas"] / results["ours (prepare --check)"]
        print(f"speed ours / pandas (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()

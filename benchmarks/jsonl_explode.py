"""Reading nested JSON lines (OTTO's layout, ``jsonl: {explode: events}``) against the pandas way.

  .venv/bin/python -m benchmarks.jsonl_explode
  .venv/bin/python -m benchmarks.jsonl_explode --sessions 50000 --repeats 5

Writes an OTTO-shaped file (seeded: one session per line, 1-30 events of an article id, a unix time in
milliseconds and a type) and reads it to canonical events twice per repeat:

- ours: ``prepare --check``'s path (``check_rows`` through examples/mappings/otto.yaml): stream the
  lines, explode, map the codes, parse the times, quarantine what is unusable, count;
- pandas, as a user would write it: ``read_json(lines=True)``, ``explode("events")``,
  ``json_normalize``, the code map and ``to_datetime(unit="ms")`` (no quarantine, no line numbers).

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
from learners.data.prepare import check_rows

MAPPING = Path(__file__).resolve().parents[1] / "examples" / "mappings" / "otto.yaml"
TYPES = ("clicks", "carts", "orders")


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


def ours(path: Path) -> int:
    adapter = MappingAdapter(mapping_from_dict(yaml.safe_load(MAPPING.read_text()), str(MAPPING)))
    return check_rows([path], adapter).counts["rows_kept"]


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
    parser.add_argument("--sessions", type=int, default=20_000, help="lines (sessions) of the generated file")
    parser.add_argument("--repeats", type=int, default=3, help="timed reads of each way")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        events = write_otto(path, args.sessions, args.seed)
        print(f"{args.sessions:,} sessions, {events:,} events, {path.stat().st_size / 1e6:.1f} MB")
        results = {}
        for name, read in (("ours (prepare --check)", ours), ("pandas", with_pandas)):
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

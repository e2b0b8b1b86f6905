"""`mapping draft`: a mapping proposed from a sample of the logs.

On the four real samples, the draft with what it leaves TODO filled in from the shipped mapping
(examples/mappings) prepares the same tables as the shipped mapping; the same log as gzip CSV, TSV,
Parquet and JSON lines drafts the same mapping; timestamps, zone hints, stray days and event codes
are read from the values.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import zoneinfo
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from learners.data import schema
from learners.data.adapters import MappingAdapter
from learners.data.mapping import load_mapping, mapping_from_dict
from learners.data.mapping_draft import DraftConfig, draft_mapping, event_word, sniff_csv, stray_range
from learners.data.prepare import PrepareConfig, prepare
from learners.data.readers import MISSING_WORDS
from learners.data.row_check import check_rows

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"
SAMPLE_ROWS = 5000
COMPARED = ("events", "sessions", "buyers", "catalogs", "merchants")
# What each draft must leave to the user: the meaning of numeric codes, a year the dates lack.
EXPECTED_TODO = {
    "tmall-ijcai15": {"timestamp.year", "event_type.map"},
    "tmall-brand": {"event_type.map"},
    "rees46": set(),
    "taobao": set(),
}


def draft_values(paths: list[Path], tmp: Path, name: str, rows: int = SAMPLE_ROWS) -> tuple[dict, object]:
    draft = draft_mapping(paths, DraftConfig(rows=rows), tmp / f"{name}.yaml")
    (tmp / f"{name}.yaml").write_text(draft.text, encoding="utf-8")
    return yaml.safe_load(draft.text), draft


def prepared(paths: list[Path], values: dict, out: Path) -> tuple[dict, dict[str, pa.Table]]:
    adapter = MappingAdapter(mapping_from_dict(values, source=str(out)))
    manifest = prepare(paths, adapter, PrepareConfig(), out)
    return manifest, {name: pq.read_table(out / schema.TABLE_FILES[name]) for name in COMPARED}


@pytest.mark.parametrize("name", ["tmall-ijcai15", "tmall-brand", "rees46", "taobao"])
def test_filled_in_draft_prepares_the_shipped_mappings_tables(real_file, tmp_path: Path, name: str) -> None:
    path = real_file(name)
    values, draft = draft_values([path], tmp_path, name)
    shipped = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8"))
    assert draft.sample.table.num_rows == SAMPLE_ROWS
    assert {item.split(" ")[0] for item in draft.todo} == EXPECTED_TODO[name]
    # Every code the draft maps by itself means what the shipped mapping says.
    guessed = {code: event for code, event in (values["event_type"]["map"] or {}).items() if event != "TODO"}
    assert all(shipped["event_type"]["map"][code] == event for code, event in guessed.items())
    if draft.todo:  # an unfinished draft does not load, and says which key to fill in
        with pytest.raises(ValueError, match="timestamp.year|event_type.map"):
            load_mapping(tmp_path / f"{name}.yaml")
    values["event_type"]["map"] = shipped["event_type"]["map"]
    if "year" in values["timestamp"] and values["timestamp"]["year"] is None:
        values["timestamp"]["year"] = shipped["timestamp"]["year"]

    ours, tables = prepared([path], values, tmp_path / "draft")
    theirs, expected = prepared([path], shipped, tmp_path / "shipped")
    for table in COMPARED:
        assert tables[table].equals(expected[table]), table
    for key in ("rows_read", "rows_kept", "rows_quarantined", "rows_dropped", "buyers", "sessions"):
        assert ours["counts"][key] == theirs["counts"][key], key
    assert ours["adapter"] == theirs["adapter"] == name  # the name comes from the output file

    # `prepare --check` counts exactly what prepare wrote.
    check = check_rows([path], MappingAdapter(mapping_from_dict(values)))
    assert check.counts == {k: ours["counts"][k] for k in check.counts}
    assert check.quarantine_by_reason == ours["quarantine_by_reason"]
    assert check.rows_dropped_by_code == ours["rows_dropped_by_code"] == {}


def test_numeric_codes_are_left_to_the_user_with_their_counts(real_file, tmp_path: Path) -> None:
    path = real_file("tmall-brand")
    values, draft = draft_values([path], tmp_path, "brand")
    with open(path, newline="") as fh:
        rows = [row["type"] for _, row in zip(range(SAMPLE_ROWS), csv.DictReader(fh), strict=False)]
    for code, n in Counter(rows).items():
        line = next(line for line in draft.text.splitlines() if line.strip().startswith(f'"{code}": TODO'))
        assert f"# {n:,} rows; numeric code" in line
    assert values["event_type"] == {"column": "type", "map": dict.fromkeys(Counter(rows), "TODO")}
    assert values["timestamp"]["year"] == 2014  # from the folder name tmall-brand-2014
    assert values["fields"]["merchant_id"] == "brand_id"  # no product column: the brand is the storefront


def test_headerless_taobao_gets_column_names_guessed_from_content(real_file, tmp_path: Path) -> None:
    values, draft = draft_values([real_file("taobao")], tmp_path, "taobao")
    assert values["csv"] == {
        "delimiter": ",",
        "header": False,
        "columns": ["buyer_id", "product_id", "category_id", "event_type", "ts"],
    }
    assert values["fields"]["merchant_id"] == {"constant": "taobao"}
    assert values["timestamp"]["format"] == "unix_s"
    assert values["timestamp"]["timezone"] == "Asia/Shanghai"  # the hint from the quiet hours
    assert values["timestamp"]["min"] == "2017-11-25" and "max" not in values["timestamp"]
    assert values["event_type"]["map"] == {
        "pv": "product_view",
        "cart": "add_to_cart",
        "fav": "favorite",
        "buy": "purchase",
    }
    assert "guessed from the values" in draft.text


# --- formats: the same rows as gzip CSV, TSV, Parquet (typed) and JSON lines --------------------------


@pytest.fixture(scope="module")
def rees46_head(real_file, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """The first 3000 data rows of the REES46 sample as a CSV in a temp dir, and the rows."""
    source = real_file("rees46")
    folder = tmp_path_factory.mktemp("rees46")
    with open(source, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [row for _, row in zip(range(3000), reader, strict=False)]
    path = folder / "head.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, rows


def write_variant(kind: str, path: Path, rows: list[dict[str, str]], folder: Path) -> Path:
    if kind == "csv.gz":
        target = folder / "head.csv.gz"
        target.write_bytes(gzip.compress(path.read_bytes()))
    elif kind == "tsv":
        target = folder / "head.tsv"
        with open(target, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        target = folder / "head.parquet"
        when = [dt.datetime.strptime(r["event_time"], "%Y-%m-%d %H:%M:%S UTC") for r in rows]
        table = pa.table(
            {
                "event_time": pa.array(when, pa.timestamp("s", "UTC")),
                "event_type": [r["event_type"] for r in rows],
                "product_id": pa.array([int(r["product_id"]) for r in rows], pa.int64()),
                "category_id": pa.array([int(r["category_id"]) for r in rows], pa.int64()),
                "category_code": [r["category_code"] or None for r in rows],
                "brand": [r["brand"] or None for r in rows],
                "price": pa.array([r["price"] for r in rows]).cast(pa.float64()),
                "user_id": pa.array([int(r["user_id"]) for r in rows], pa.int64()),
                "user_session": [r["user_session"] for r in rows],
            }
        )
        pq.write_table(table, target)
    else:
        target = folder / "head.jsonl"
        with open(target, "w") as fh:
            for r in rows:
                item = {**r, "price": float(r["price"]), "user_id": int(r["user_id"])}
                fh.write(json.dumps(item) + "\n")
    return target


@pytest.mark.parametrize("kind", ["csv.gz", "tsv", "parquet", "jsonl"])
def test_every_format_drafts_the_same_mapping_and_events(rees46_head, tmp_path: Path, kind: str) -> None:
    path, rows = rees46_head
    plain, plain_draft = draft_values([path], tmp_path, "rees46")
    other = write_variant(kind, path, rows, tmp_path)
    values, draft = draft_values([other], tmp_path, "rees46-" + kind.replace(".", "-"))
    assert draft.todo == [] and plain_draft.todo == []
    assert values["format"] == {"csv.gz": "csv", "tsv": "csv"}.get(kind, kind)
    assert values["fields"] == {
        **plain["fields"],
        "merchant_id": {"constant": "rees46-" + kind.replace(".", "-")},
    }
    assert values["event_type"] == plain["event_type"]
    if kind == "tsv":
        assert values["csv"]["delimiter"] == "\t"
    if kind == "parquet":  # a native timestamp column
        assert values["timestamp"]["format"] == "iso"
    values["fields"]["merchant_id"] = plain["fields"]["merchant_id"]
    _, ours = prepared([other], values, tmp_path / "other")
    _, theirs = prepared([path], plain, tmp_path / "plain")
    assert ours["events"].equals(theirs["events"])


# --- timestamps, zones and stray days from synthetic logs (seeded) ----------------------------------


def write_log(tmp: Path, times: list[str], header: str = "user,action,when", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["view", "view", "view", "cart", "order"], size=len(times))
    users = np.sort(rng.integers(0, 60, size=len(times)))
    path = tmp / "log.csv"
    lines = [header] + [f"u{u},{k},{t}" for u, k, t in zip(users, kinds, times, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def instants(n: int, seed: int = 0) -> list[dt.datetime]:
    rng = np.random.default_rng(seed)
    start = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    return sorted(start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 20 * 86_400, size=n))


@pytest.mark.parametrize(
    ("render", "fmt", "resolution"),
    [
        (lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"), "iso", "second"),
        (lambda t: t.strftime("%Y-%m-%d"), "iso", "day"),
        (lambda t: str(int(t.timestamp() * 1000)), "unix_ms", "second"),
        (lambda t: str(int(t.timestamp())), "unix_s", "second"),
        (lambda t: str(int(t.timestamp()) * 10**6 + 123_456), "unix_us", "second"),
        (lambda t: str(int(t.timestamp()) * 10**9 + 5), "unix_ns", "second"),
        (lambda t: t.strftime("%d/%m/%Y %H:%M"), "%d/%m/%Y %H:%M", "second"),
        (lambda t: t.strftime("%Y/%m/%d %H:%M:%S"), "%Y/%m/%d %H:%M:%S", "second"),
        (
            lambda t: f"{t.month}/{t.day}/{t:%y} {t.hour}:{t:%M}",
            "%m/%d/%y %H:%M",
            "second",
        ),  # UCI Online Retail
        (lambda t: t.strftime("%d-%m-%Y %H:%M"), "%d-%m-%Y %H:%M", "second"),
        (lambda t: f"{t.month}-{t.day}", "%m-%d", "day"),
        (lambda t: t.strftime("%m%d"), "%m%d", "day"),
    ],
)
def test_timestamp_formats_are_detected_and_read_every_row(tmp_path: Path, render, fmt, resolution) -> None:
    times = instants(1500)
    path = write_log(tmp_path, [render(t) for t in times])
    values, draft = draft_values([path], tmp_path, "shop")
    assert values["fields"]["ts"] == "when" and values["fields"]["buyer_id"] == "user"
    assert (values["timestamp"]["format"], values["timestamp"]["resolution"]) == (fmt, resolution)
    if "year" in values["timestamp"]:  # the dates carry none: left to the user
        assert values["timestamp"]["year"] is None and "timestamp.year" in draft.todo
        values["timestamp"]["year"] = 2024
    check = check_rows([path], MappingAdapter(mapping_from_dict(values)))
    assert check.counts["rows_kept"] == 1500 and check.counts["rows_quarantined"] == 0


def test_day_month_order_that_the_values_cannot_tell_is_flagged(tmp_path: Path) -> None:
    times = [t for t in instants(600) if t.day <= 12]
    path = write_log(tmp_path, [t.strftime("%d/%m/%Y %H:%M") for t in times])
    values, draft = draft_values([path], tmp_path, "shop")
    assert values["timestamp"]["format"] == "%d/%m/%Y %H:%M"
    assert (
        draft.timestamp is not None
        and "'%m/%d/%Y %H:%M' reads these values too" in draft.timestamp.format_note
    )
    assert "ambiguous" in draft.text


def test_zone_hint_and_stray_days(tmp_path: Path) -> None:
    """Shoppers in New York, quiet around 04:00 local; five rows carry stamps from months before."""
    rng = np.random.default_rng(7)
    zone = zoneinfo.ZoneInfo("America/New_York")
    local_hours = np.arange(24)
    weights = 1.0 + 9.0 * (np.abs(local_hours - 4) > 3)
    times = []
    for _ in range(4000):
        day = dt.date(2024, 3, 4) + dt.timedelta(days=int(rng.integers(0, 14)))
        hour = int(rng.choice(local_hours, p=weights / weights.sum()))
        local = dt.datetime(day.year, day.month, day.day, hour, int(rng.integers(60)), tzinfo=zone)
        times.append(str(int(local.timestamp())))
    stray = [str(int(dt.datetime(2023, 12, d, 12, tzinfo=dt.UTC).timestamp())) for d in (1, 2, 9, 20, 21)]
    path = write_log(tmp_path, times[:2000] + stray + times[2000:])
    values, draft = draft_values([path], tmp_path, "shop", rows=10_000)
    spec = values["timestamp"]
    assert spec["format"] == "unix_s" and spec["timezone"] == "America/New_York"
    assert spec["min"] == "2024-03-04" and "max" not in spec
    assert "5 of 4,005 sampled rows lie on 5 days between 2023-12-01 and 2023-12-21" in draft.text
    check = check_rows([path], MappingAdapter(mapping_from_dict(values)))
    assert check.counts["rows_quarantined"] == 5
    (reason,) = check.quarantine_by_reason
    assert reason.startswith("timestamp before 2024-03-04T00:00:00 (America/New_York, timestamp.min/max)")


def test_stray_range_leaves_a_continuous_log_alone() -> None:
    rng = np.random.default_rng(1)
    sparse = rng.integers(0, 180, size=3000)  # half a year, some days quiet: no range
    assert stray_range(sparse) == (None, None, "")
    bulk = rng.integers(1000, 1010, size=3000)
    low, high, note = stray_range(np.concatenate([bulk, [900, 1100, 1101]]))
    assert (low, high) == (1000, 1009) and "3 of 3,003 sampled rows" in note


def test_header_detection(tmp_path: Path) -> None:
    rows = "alice,view,shoe\nbob,view,hat\nalice,buy,shoe\n"
    (tmp_path / "bare.csv").write_text(rows)
    (tmp_path / "named.csv").write_text("customer;kind;sku\n" + rows.replace(",", ";"))
    bare, named = sniff_csv(tmp_path / "bare.csv"), sniff_csv(tmp_path / "named.csv")
    assert (bare.header, bare.columns, bare.delimiter) == (False, ("column_1", "column_2", "column_3"), ",")
    assert (named.header, named.columns, named.delimiter) == (True, None, ";")
    values, _ = draft_values([tmp_path / "named.csv"], tmp_path, "named")
    assert values["fields"]["buyer_id"] == "customer" and values["fields"]["product_id"] == "sku"
    assert values["event_type"] == {"column": "kind", "map": {"view": "product_view", "buy": "purchase"}}


@pytest.mark.parametrize(
    ("code", "event"),
    [
        ("view", "product_view"),
        ("pv", "product_view"),
        ("click", "product_view"),
        ("Add To Cart", "add_to_cart"),
        ("cart", "add_to_cart"),
        ("buy", "purchase"),
        ("order", "purchase"),
        ("fav", "favorite"),
        ("remove_from_cart", "remove_from_cart"),
        ("search", "search"),
        ("clicks", "product_view"),  # OTTO's codes: plural forms of known words
        ("carts", "add_to_cart"),
        ("orders", "purchase"),
        ("purchases", "purchase"),
        ("carted", "add_to_cart"),
        ("added_to_cart", "add_to_cart"),
        ("removed", "remove_from_cart"),
        ("add", "add_to_cart"),  # Coveo's product_action, beside remove
        ("detail", "product_view"),
        ("6", None),
        ("impression", None),
        ("impressions", None),
        ("event_product", None),
    ],
)
def test_obvious_event_names_are_mapped(code: str, event: str | None) -> None:
    assert event_word(code) == event


def test_unreadable_inputs_fail_with_a_clear_message(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.csv: the file holds no rows; fix:"):
        draft_mapping([empty], DraftConfig())
    with pytest.raises(ValueError, match="--rows must be at least 1"):
        draft_mapping([empty], DraftConfig(rows=0))


def test_a_log_of_anonymous_views_drafts_sessions_as_buyers_and_prepares_with_a_constant_type(
    tmp_path: Path,
) -> None:
    """Diginetica's item views: `;`, a userId empty in most rows, no event column."""
    rng = np.random.default_rng(3)
    path = tmp_path / "train-item-views.csv"
    rows = ["sessionId;userId;itemId;timeframe;eventdate"]
    for session in range(1, 121):
        user = str(int(rng.integers(1, 40))) if rng.random() < 0.3 else ""
        day = f"2016-05-{int(rng.integers(9, 23)):02d}"
        for step in range(int(rng.integers(1, 6))):
            rows.append(f"{session};{user};{int(rng.integers(1000, 1040))};{step * 9000};{day}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    values, draft = draft_values([path], tmp_path, "views")
    assert values["csv"]["delimiter"] == ";" and values["fields"]["buyer_id"] == "sessionId"
    assert "'userId' is empty in" in draft.notes["buyer_id"]
    assert values["event_type"]["column"] is None and "# constant: product_view" in draft.text
    assert any(t.startswith("event_type (column and map, or constant") for t in draft.todo)
    values["event_type"] = {"constant": "product_view"}
    manifest, tables = prepared([path], values, tmp_path / "out")
    assert manifest["counts"]["rows_kept"] == len(rows) - 1 == tables["events"].num_rows
    assert set(tables["events"]["event_type"].to_pylist()) == {"product_view"}
    assert tables["buyers"].num_rows == 120 == tables["sessions"].num_rows


# --- public logs the draft once misread (hand-written rows shaped like the real files, seeded) ------


def write_rows(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("product", ["aid", "ref"])
def test_otto_log_without_a_user_column_drafts_sessions_as_buyers_and_plural_codes(
    tmp_path: Path, product: str
) -> None:
    """OTTO: session, aid, ts (unix ms), type in clicks/carts/orders; an aid is often clicked then carted,
    so rows repeat it, yet a product named by no known word (ref) is still no buyer."""
    rng = np.random.default_rng(11)
    rows = []
    ts = 1_659_304_800_000
    for session in range(150):
        for _ in range(int(rng.integers(1, 30))):
            aid = int(rng.integers(1, 1_800_000))
            ts += int(rng.integers(1_000, 600_000))
            rows.append(f"{session},{aid},{ts},clicks")
            if rng.random() < 0.3:
                ts += int(rng.integers(1_000, 60_000))
                rows.append(f"{session},{aid},{ts},{'orders' if rng.random() < 0.3 else 'carts'}")
    path = write_rows(tmp_path / "otto.csv", f"session,{product},ts,type", rows)
    values, draft = draft_values([path], tmp_path, "otto")
    fields = values["fields"]
    assert (fields["buyer_id"], fields["session_id"], fields["product_id"]) == ("session", "session", product)
    assert "no user column found: each session is a buyer" in draft.notes["buyer_id"]
    assert values["timestamp"]["format"] == "unix_ms"
    assert values["event_type"]["map"] == {
        "clicks": "product_view",
        "carts": "add_to_cart",
        "orders": "purchase",
    }
    assert draft.todo == []
    check = check_rows([path], MappingAdapter(mapping_from_dict(values)))
    assert check.counts["rows_kept"] == len(rows) and check.counts["rows_quarantined"] == 0


@pytest.mark.parametrize("token", sorted(MISSING_WORDS))
def test_missing_value_tokens_count_as_empty_user_ids(tmp_path: Path, token: str) -> None:
    """A user column holding a missing-value token in most rows makes each session a buyer."""
    rng = np.random.default_rng(5)
    rows = []
    for session in range(100):
        user = token if session % 10 < 7 else str(int(rng.integers(1, 30)))
        for step in range(int(rng.integers(1, 5))):
            rows.append(f"{session};{user};{int(rng.integers(1000, 1400))};2016-05-{9 + step:02d}")
    path = write_rows(tmp_path / "views.csv", "sessionId;userId;itemId;eventdate", rows)
    values, draft = draft_values([path], tmp_path, "views")
    assert values["fields"]["buyer_id"] == "sessionId"
    assert f"'userId' is empty or {token} in" in draft.notes["buyer_id"]


def test_diginetica_purchases_na_users_are_noted_and_timeframe_is_no_category(tmp_path: Path) -> None:
    """Diginetica's train-purchases.csv: `;`, userId NA in about half the rows, timeframe a millisecond
    offset and ordernumber, both one value per order; an order holds one item or a few."""
    rng = np.random.default_rng(8)
    rows = []
    order = 10_000
    for session in range(150, 1500, 3):
        user = "NA" if rng.random() < 0.45 else str(int(rng.integers(1, 30_000)))
        day = f"2016-{int(rng.integers(1, 6)):02d}-{int(rng.integers(1, 29)):02d}"
        timeframe = int(rng.integers(10_000, 5_000_000))
        order += int(rng.integers(1, 20))
        for _ in range(int(rng.choice([1, 1, 1, 1, 1, 1, 1, 2, 2, 3]))):
            rows.append(f"{session};{user};{timeframe};{day};{order};{int(rng.integers(1, 180_000))}")
    path = write_rows(
        tmp_path / "train-purchases.csv", "sessionId;userId;timeframe;eventdate;ordernumber;itemId", rows
    )
    values, draft = draft_values([path], tmp_path, "purchases")
    fields = values["fields"]
    empty = sum(row.split(";")[1] == "NA" for row in rows) / len(rows)
    assert 0.4 < empty < 0.5  # under the share that makes sessions buyers: kept, with a note
    assert fields["buyer_id"] == "userId" and fields["session_id"] == "sessionId"
    assert draft.notes["buyer_id"] == (
        f"empty or NA in {empty:.0%} of sampled rows: those rows would be quarantined;"
        " for anonymous visits write buyer_id: sessionId"
    )
    assert fields["product_id"] == "itemId" and fields["ts"] == "eventdate"
    assert "category_id" not in fields  # neither timeframe nor ordernumber
    assert "# not used: timeframe, ordernumber" in draft.text


def coveo_hash(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list("0123456789abcdef"), size=64))


def test_coveo_browsing_hashed_log_takes_the_sku_not_the_action_or_the_url(tmp_path: Path) -> None:
    """Coveo's browsing_train.csv: every id hashed; product_action and product_sku_hash are empty on
    page views; consecutive rows often share a page (hashed_url)."""
    rng = np.random.default_rng(2)
    skus = [coveo_hash(rng) for _ in range(400)]
    rows = []
    ts = 1_550_885_210_881
    for _ in range(120):
        session = coveo_hash(rng)
        for _ in range(int(rng.integers(2, 20))):
            url = coveo_hash(rng)
            ts += int(rng.integers(500, 90_000))
            if rng.random() < 0.6:
                rows.append(f"{session},pageview,,,{ts},{url}")
                continue
            sku = skus[int(rng.integers(len(skus)))]
            for action in (
                "detail",
                *rng.choice(["add", "remove", "purchase", "click"], size=int(rng.integers(0, 2))),
            ):
                rows.append(f"{session},event_product,{action},{sku},{ts},{url}")
    header = "session_id_hash,event_type,product_action,product_sku_hash,server_timestamp_epoch_ms,hashed_url"
    path = write_rows(tmp_path / "browsing_train.csv", header, rows)
    values, draft = draft_values([path], tmp_path, "coveo")
    fields = values["fields"]
    assert fields["product_id"] == "product_sku_hash"
    assert fields["buyer_id"] == fields["session_id"] == "session_id_hash"
    assert "no user column found" in draft.notes["buyer_id"]
    assert "hashed_url" not in fields.values() and "category_id" not in fields
    assert values["timestamp"]["format"] == "unix_ms"
    # The actions, not the page kinds, are the events; page views have no action: the empty code.
    assert values["event_type"]["column"] == "product_action"
    assert values["event_type"]["map"] == {
        "detail": "product_view",
        "add": "add_to_cart",
        "remove": "remove_from_cart",
        "purchase": "purchase",
        "click": "product_view",
        "": "TODO",
    }
    values["event_type"]["map"][""] = "page_view"
    check = check_rows([path], MappingAdapter(mapping_from_dict(values)))
    assert check.counts["rows_quarantined"] == 0 and check.kept_by_event_type["page_view"] > 0


def test_coveo_search_query_vector_is_no_query(tmp_path: Path) -> None:
    """Coveo's search_train.csv: the query comes as a list of 50 numbers, the skus as lists (a clicked
    one often alone: no spaces)."""
    rng = np.random.default_rng(4)
    rows = []
    ts = 1_550_885_210_881
    for _ in range(300):
        vector = "[" + ", ".join(f"{x:.6g}" for x in rng.normal(0, 0.1, size=50)) + "]"
        shown = [coveo_hash(rng)[:12] for _ in range(int(rng.integers(1, 5)))]
        clicked = str(shown[:1]) if rng.random() < 0.5 else ""  # Python lists, as in the real file
        ts += int(rng.integers(500, 90_000))
        rows.append(f'{coveo_hash(rng)},"{vector}","{clicked}","{shown}",{ts}')
    header = "session_id_hash,query_vector,clicked_skus_hash,product_skus_hash,server_timestamp_epoch_ms"
    path = write_rows(tmp_path / "search_train.csv", header, rows)
    values, draft = draft_values([path], tmp_path, "search")
    assert "query" not in values["fields"] and "# query: none found" in draft.text
    assert "product_id" not in values["fields"]  # lists of skus are no product id
    assert values["fields"]["buyer_id"] == "session_id_hash"


def test_a_transactions_log_drafts_invoices_as_sessions_and_hints_purchases_and_returns(
    tmp_path: Path,
) -> None:
    """UCI Online Retail's shape: invoices of several lines, a quantity (negative on cancellations)."""
    rng = np.random.default_rng(3)
    lines = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"]
    for invoice in range(120):
        cancelled = invoice % 17 == 0
        when = f"12/{1 + invoice // 20}/10 {8 + invoice % 9}:{invoice % 60:02d}"
        for _ in range(int(rng.integers(1, 6))):
            quantity = -int(rng.integers(1, 5)) if cancelled else int(rng.choice([1, 2, 3, 6, 12, 24]))
            code = f"{rng.integers(20000, 23000)}{rng.choice(['', 'A', 'B'])}"
            lines.append(
                f"{'C' if cancelled else ''}{536365 + invoice},{code},A THING,{quantity},{when},"
                f"{rng.integers(1, 900) / 100:.2f},{17850 + invoice % 30},United Kingdom"
            )
    path = tmp_path / "online_retail.csv"
    path.write_text("\n".join(lines) + "\n")
    values, draft = draft_values([path], tmp_path, "uci")
    fields = values["fields"]
    assert (fields["session_id"], fields["product_id"], fields["price"]) == (
        "InvoiceNo",
        "StockCode",
        "UnitPrice",
    )
    assert "category_id" not in fields  # not Quantity
    assert "# constant: purchase" in draft.text
    assert "# drop_rows: [{column: Quantity, below: 0}]" in draft.text

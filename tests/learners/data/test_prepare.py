"""The prepare pipeline: accounting, partition-independent and byte-identical outputs, real samples."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from learners.data import schema
from learners.data.adapter import CanonicalChunk
from learners.data.partitions import BuyerPartitions, assign_buckets
from learners.data.prepare import PrepareConfig, prepare, read_ahead
from tests.learners.data.test_features import random_events


class CanonicalParquetAdapter:
    """Test source: Parquet files already in CANONICAL_EVENTS; rows with a null buyer are quarantined."""

    name = "canonical-parquet"

    def __init__(self, day_resolution: bool = False, chunk_rows: int = 700) -> None:
        self.day_resolution = day_resolution
        self.chunk_rows = chunk_rows

    def read(self, inputs: Sequence[Path]) -> Iterator[CanonicalChunk]:
        for index, path in enumerate(inputs):
            table = pq.read_table(path)
            for start in range(0, table.num_rows, self.chunk_rows):
                part = table.slice(start, self.chunk_rows)
                bad = part["buyer_id"].is_null()
                lines = np.arange(start + 1, start + 1 + part.num_rows)
                events = part.filter(pa.compute.invert(bad))
                events = events.set_column(
                    events.schema.get_field_index("src_order"),
                    "src_order",
                    pa.array((index << 40) | lines[~bad.to_numpy(zero_copy_only=False)], pa.int64()),
                )
                quarantined = part.filter(bad)
                quarantine = pa.table(
                    {
                        "file": [str(path)] * quarantined.num_rows,
                        "line": lines[bad.to_numpy(zero_copy_only=False)],
                        "column": ["buyer_id"] * quarantined.num_rows,
                        "reason": ["missing buyer_id"] * quarantined.num_rows,
                        "raw": [str(r) for r in quarantined.to_pylist()],
                    },
                    schema=schema.QUARANTINE,
                )
                yield CanonicalChunk(
                    events=events.cast(schema.CANONICAL_EVENTS),
                    quarantine=quarantine,
                    rows_read=part.num_rows,
                )


def write_inputs(tmp: Path, day_resolution: bool = False) -> list[Path]:
    """Two canonical input files; a few rows lack a buyer id."""
    paths = []
    for i, seed in enumerate((5, 6)):
        table = random_events(seed, day_resolution, n=1500)
        loose = schema.CANONICAL_EVENTS.field("buyer_id").with_nullable(True)
        table = table.cast(schema.CANONICAL_EVENTS.set(1, loose))
        buyer = table["buyer_id"].to_pylist()
        for j in range(3, len(buyer), 400):
            buyer[j] = None
        table = table.set_column(1, loose, pa.array(buyer, pa.string()))
        path = tmp / f"part-{i}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


def read_outputs(out: Path) -> dict[str, pa.Table]:
    return {name: pq.read_table(out / file) for name, file in schema.TABLE_FILES.items()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def test_counts_balance_and_manifest_describes_the_run(inputs: list[Path], tmp_path: Path) -> None:
    config = PrepareConfig(partition_rows=500, n_buckets=8, max_seq_len=16)
    manifest = prepare(inputs, CanonicalParquetAdapter(), config, tmp_path)
    counts = manifest["counts"]
    assert counts["rows_read"] == 3000
    assert counts["rows_quarantined"] == 2 * 4
    assert counts["rows_read"] == counts["rows_kept"] + counts["rows_quarantined"]
    assert manifest["quarantine_by_reason"] == {"missing buyer_id": 8}
    assert manifest == json.loads((tmp_path / schema.MANIFEST_FILE).read_text())
    assert [i["path"] for i in manifest["inputs"]] == [str(p) for p in inputs]
    assert all(len(i["sha256"]) == 64 and i["bytes"] > 0 for i in manifest["inputs"])
    assert manifest["config"]["max_seq_len"] == 16 and manifest["ts_resolution"] == "second"
    assert set(manifest["versions"]) == {"python", "pyarrow", "polars", "simpersona"}

    tables = read_outputs(tmp_path)
    for name, table_schema in {
        "events": schema.EVENTS,
        "sessions": schema.SESSIONS,
        "buyers": schema.BUYERS,
        "catalogs": schema.CATALOGS,
        "merchants": schema.MERCHANTS,
        "quarantine": schema.QUARANTINE,
    }.items():
        assert tables[name].schema.equals(table_schema), name
    assert tables["events"].num_rows == counts["events"] == counts["rows_kept"]
    assert tables["buyers"].num_rows == counts["buyers"]
    assert sum(tables["buyers"]["n_events"].to_pylist()) == counts["events"]
    assert sum(tables["sessions"]["n_events"].to_pylist()) == counts["events"]
    assert sum(tables["buyers"]["n_sessions"].to_pylist()) == counts["sessions"]
    assert sum(tables["merchants"]["buyers"].to_pylist()) == counts["buyers"]
    assert max(len(s) for s in tables["buyers"]["event_seq"].to_pylist()) == 16
    assert sorted(tables["quarantine"]["line"].to_pylist()) == sorted([4, 404, 804, 1204] * 2)
    ts = tables["events"]["ts"]
    first, last = (dt.datetime.fromisoformat(manifest["time_range"][k]) for k in ("first", "last"))
    assert (first, last) == (pc.min(ts).as_py(), pc.max(ts).as_py())


def test_outputs_do_not_depend_on_partition_size(inputs: list[Path], tmp_path: Path) -> None:
    adapter = CanonicalParquetAdapter()
    prepare(inputs, adapter, PrepareConfig(partition_rows=10**9, n_buckets=8), tmp_path / "one")
    prepare(inputs, adapter, PrepareConfig(partition_rows=1, n_buckets=8), tmp_path / "many")
    # Spills held back until a quarter of partition_rows has arrived, several per partition.
    prepare(inputs, adapter, PrepareConfig(partition_rows=700, n_buckets=8), tmp_path / "batched")
    one = read_outputs(tmp_path / "one")
    for other in ("many", "batched"):
        tables = read_outputs(tmp_path / other)
        for name in schema.TABLE_FILES:
            assert one[name].equals(tables[name]), (other, name)


def test_every_buyer_lives_in_one_bucket_and_buckets_are_stable(inputs: list[Path]) -> None:
    table = pq.read_table(inputs[0]).drop_null()
    a = assign_buckets(table, 16)
    b = assign_buckets(table.take(np.arange(table.num_rows)[::-1]), 16)
    pairs = {
        (m, u, k)
        for m, u, k in zip(*(a[c].to_pylist() for c in ("merchant_id", "buyer_id", "_bucket")), strict=True)
    }
    assert len({(m, u) for m, u, _ in pairs}) == len(pairs)
    assert sorted(a["_bucket"].to_pylist()) == sorted(b["_bucket"].to_pylist())
    assert all(0 <= k < 16 for _, _, k in pairs)


def test_spill_files_go_as_their_partition_is_read(inputs: list[Path], tmp_path: Path) -> None:
    events = pq.read_table(inputs[0])
    for field in schema.CANONICAL_EVENTS:
        if not field.nullable:  # the inputs hold bad rows, which prepare would have quarantined
            events = events.filter(pc.is_valid(events[field.name]))
    events = assign_buckets(events, 8)
    assert events.num_rows >= 400

    def spilled() -> list[Path]:
        return list(tmp_path.rglob("bucket-*.arrow"))

    with BuyerPartitions(8, partition_rows=events.num_rows // 4, spill_dir=str(tmp_path)) as partitions:
        for start in range(0, events.num_rows, 100):
            partitions.add(events.slice(start, 100))
        assert partitions.spilled and len(partitions) > 1
        rows, left = 0, []
        for table in partitions.partitions():
            rows += table.num_rows
            left.append(len(spilled()))
        assert rows == events.num_rows
        assert left == sorted(left, reverse=True) and left[0] > left[-1] and not spilled()
    assert not list(tmp_path.iterdir())


def test_two_runs_write_byte_identical_files(inputs: list[Path], tmp_path: Path) -> None:
    config = PrepareConfig(partition_rows=700, n_buckets=8)
    for run in ("a", "b"):
        prepare(inputs, CanonicalParquetAdapter(), config, tmp_path / run)
    for file in schema.TABLE_FILES.values():
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_merchant_filters_can_skip_row_groups(inputs: list[Path], tmp_path: Path) -> None:
    """Readers filter prepared tables by merchant: every streamed table keeps merchant_id min/max
    statistics (the writer drops those of the near-unique ids to save time)."""
    prepare(inputs, CanonicalParquetAdapter(), PrepareConfig(partition_rows=700, n_buckets=8), tmp_path)
    for name in ("events", "sessions", "buyers"):
        metadata = pq.ParquetFile(tmp_path / schema.TABLE_FILES[name]).metadata
        columns = [metadata.row_group(0).column(i) for i in range(metadata.num_columns)]
        stats = {c.path_in_schema: c.statistics is not None and c.statistics.has_min_max for c in columns}
        assert stats["merchant_id"], name
        assert not stats["buyer_id"], name
    events = pq.read_table(tmp_path / schema.TABLE_FILES["events"])
    merchant = events["merchant_id"][0].as_py()
    filtered = pq.read_table(
        tmp_path / schema.TABLE_FILES["events"], filters=[("merchant_id", "=", merchant)]
    )
    assert filtered.equals(events.filter(pc.equal(events["merchant_id"], merchant)))


def test_a_chunk_that_loses_rows_is_a_bug(inputs: list[Path], tmp_path: Path) -> None:
    class Lossy(CanonicalParquetAdapter):
        def read(self, inputs: Sequence[Path]) -> Iterator[CanonicalChunk]:
            for chunk in super().read(inputs):
                yield CanonicalChunk(chunk.events, chunk.quarantine, chunk.rows_read + 1)

    with pytest.raises(RuntimeError, match="lost rows"):
        prepare(inputs, Lossy(), PrepareConfig(), tmp_path)


def test_a_failed_run_leaves_an_earlier_output_as_it_was(inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    prepare(inputs, CanonicalParquetAdapter(), PrepareConfig(), out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    class Lossy(CanonicalParquetAdapter):
        def read(self, inputs: Sequence[Path]) -> Iterator[CanonicalChunk]:
            for i, chunk in enumerate(super().read(inputs)):
                yield CanonicalChunk(chunk.events, chunk.quarantine, chunk.rows_read + (i == 2))

    with pytest.raises(RuntimeError, match="lost rows"):
        prepare(inputs, Lossy(), PrepareConfig(), out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging directory left


def test_a_run_that_keeps_no_row_fails_with_the_reasons_and_writes_nothing(tmp_path: Path) -> None:
    table = random_events(7, False, n=50)
    loose = schema.CANONICAL_EVENTS.field("buyer_id").with_nullable(True)
    table = table.cast(schema.CANONICAL_EVENTS.set(1, loose))
    table = table.set_column(1, loose, pa.nulls(table.num_rows, pa.string()))
    path = tmp_path / "anonymous.parquet"
    pq.write_table(table, path)
    with pytest.raises(ValueError) as err:
        prepare([path], CanonicalParquetAdapter(), PrepareConfig(), tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"prepare: no row of {path} was kept (50 read, 50 quarantined")
    assert "50 rows: missing buyer_id" in message and f"e.g. {path}:1 column 'buyer_id'" in message
    assert "fix:" in message and message.endswith("nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anonymous.parquet"]


def test_read_ahead_keeps_order_and_raises_the_producers_error() -> None:
    assert list(read_ahead(iter(range(7)), depth=3)) == list(range(7))
    assert list(read_ahead(iter([]))) == []

    def broken() -> Iterator[int]:
        yield 1
        raise ValueError("bad file")

    seen = []
    with pytest.raises(ValueError, match="bad file"):
        for item in read_ahead(broken()):
            seen.append(item)
    assert seen == [1]


def test_no_inputs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no input files"):
        prepare([], CanonicalParquetAdapter(), PrepareConfig(), tmp_path)


# --- the real samples (../shared/data), expected figures from ../shared/data/DATA.md -----------------


def physical_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (not data.endswith(b"\n"))


@pytest.fixture(scope="module")
def prepared_real(real_file, tmp_path_factory: pytest.TempPathFactory):
    """Prepare a real sample once per module: (manifest, tables, path of the input)."""
    from learners.data.adapters import get_adapter

    cache: dict[str, tuple[dict, dict[str, pa.Table], Path]] = {}

    def get(name: str) -> tuple[dict, dict[str, pa.Table], Path]:
        if name not in cache:
            path = real_file(name)
            out = tmp_path_factory.mktemp(name)
            manifest = prepare([path], get_adapter(name), PrepareConfig(), out)
            cache[name] = (manifest, read_outputs(out), path)
        return cache[name]

    return get


def event_counts(events: pa.Table) -> dict[str, int]:
    return {r["values"]: r["counts"] for r in events["event_type"].value_counts().to_pylist()}


def test_tmall_ijcai15_matches_the_documented_counts(prepared_real) -> None:
    manifest, tables, _ = prepared_real("tmall-ijcai15")
    counts = manifest["counts"]
    assert counts["rows_read"] == 100_000 and counts["rows_quarantined"] == 0
    assert counts["buyers"] == 23_469 and counts["merchants"] == 4_115
    assert len(set(tables["events"]["buyer_id"].to_pylist())) == 710
    assert event_counts(tables["events"]) == {
        "product_view": 88_033,
        "add_to_cart": 70,
        "purchase": 6_928,
        "favorite": 4_969,
    }
    converted = sum(tables["buyers"]["converted"].to_pylist()) / counts["buyers"]
    assert round(converted, 3) == 0.183
    assert sum(b >= 30 for b in tables["merchants"]["buyers"].to_pylist()) == 90
    assert manifest["ts_resolution"] == "day"
    # Day resolution: a session is a buyer's day.
    sessions = tables["sessions"]
    assert all(
        s == e for s, e in zip(sessions["start"].to_pylist(), sessions["end"].to_pylist(), strict=True)
    )


def test_tmall_brand_matches_the_documented_counts(prepared_real) -> None:
    manifest, tables, _ = prepared_real("tmall-brand")
    counts = manifest["counts"]
    assert counts["rows_read"] == 182_880 and counts["rows_quarantined"] == 0
    assert counts["buyers"] == 57_655 and counts["merchants"] == 9_531
    assert event_counts(tables["events"]) == {
        "product_view": 174_539,
        "purchase": 6_984,
        "favorite": 1_204,
        "add_to_cart": 153,
    }
    assert round(sum(tables["buyers"]["converted"].to_pylist()) / counts["buyers"], 3) == 0.078
    assert sum(b >= 30 for b in tables["merchants"]["buyers"].to_pylist()) == 342
    assert tables["catalogs"].num_rows == 0  # the source names no products


@pytest.mark.parametrize("name", ["rees46", "taobao"])
def test_truncated_last_row_is_quarantined_and_counts_balance(prepared_real, name: str) -> None:
    manifest, tables, path = prepared_real(name)
    counts = manifest["counts"]
    has_header = name == "rees46"
    last_line = physical_lines(path)
    assert counts["rows_read"] == last_line - has_header
    assert counts["rows_read"] == counts["rows_kept"] + counts["rows_quarantined"]
    assert (
        tables["quarantine"].num_rows
        == counts["rows_quarantined"]
        == sum(manifest["quarantine_by_reason"].values())
    )
    last = [r for r in tables["quarantine"].to_pylist() if r["line"] == last_line]
    assert len(last) == 1 and last[0]["reason"] and last[0]["raw"]
    assert tables["events"].num_rows == counts["rows_kept"]


def test_rees46_keeps_source_sessions_and_prices(prepared_real) -> None:
    _, tables, _ = prepared_real("rees46")
    sessions = set(tables["events"]["session_id"].to_pylist())
    assert not any(s.startswith("s") and s[1:].isdigit() for s in sessions)  # all ids from the source
    catalog_prices = [p for p in tables["catalogs"]["price"].to_pylist() if p is not None]
    assert catalog_prices and min(catalog_prices) >= 0


def test_real_sample_outputs_are_byte_identical_across_runs(real_file, tmp_path: Path) -> None:
    from learners.data.adapters import get_adapter

    path = real_file("tmall-ijcai15")
    config = PrepareConfig(partition_rows=30_000)  # spills, several partitions
    for run in ("a", "b"):
        prepare([path], get_adapter("tmall-ijcai15"), config, tmp_path / run)
    for file in schema.TABLE_FILES.values():
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_a_wrong_delimiter_is_named_with_the_one_to_write(tmp_path: Path) -> None:
    from learners.data.adapters import MappingAdapter
    from learners.data.mapping import mapping_from_dict

    rows = ["1;2014-04-07T10:51:09Z;214536502;view", "2;2014-04-07T10:54:09Z;214536500;view"]
    spec = {
        "fields": {"merchant_id": {"constant": "shop"}, "buyer_id": "session", "ts": "ts"},
        "timestamp": {"format": "iso"},
        "event_type": {"column": "kind", "map": {"view": "product_view"}},
    }
    with_header = tmp_path / "with-header.csv"
    with_header.write_text("session;ts;item;kind\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"header splits on ';', not ',': write csv: \{delimiter: \";\"\}"):
        prepare(
            [with_header], MappingAdapter(mapping_from_dict(spec, "m.yaml")), PrepareConfig(), tmp_path / "a"
        )
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("\n".join(rows) + "\n")
    bare = spec | {"csv": {"header": False, "columns": ["session", "ts", "item", "kind"]}}
    with pytest.raises(ValueError) as err:
        prepare(
            [headerless], MappingAdapter(mapping_from_dict(bare, "m.yaml")), PrepareConfig(), tmp_path / "b"
        )
    assert "2 rows: too few columns: expected 4, found 1" in str(err.value)
    assert 'is the delimiter right? (write csv: {delimiter: ";"} in the mapping)' in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["headerless.csv", "with-header.csv"]

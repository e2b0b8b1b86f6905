"""Merchant-disjoint splits of a prepared directory, on the real Tmall IJCAI-15 sample."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from learners.data.merchant_split import (
    MERCHANT_TABLES,
    eligible_merchants,
    filter_prepared,
    heldout_merchants,
)
from learners.data.schema import MANIFEST_FILE, TABLE_FILES


@pytest.fixture(scope="module")
def prepared(real_file, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from learners.data.adapters import get_adapter
    from learners.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("tmall")
    prepare([real_file("tmall-ijcai15")], get_adapter("tmall-ijcai15"), PrepareConfig(), out)
    return out


def merchant_ids(directory: Path, table: str) -> list[str]:
    return (
        pq.read_table(directory / TABLE_FILES[table], columns=["merchant_id"])
        .column("merchant_id")
        .to_pylist()
    )


def test_eligible_merchants_match_the_documented_count_and_a_naive_buyer_count(prepared: Path) -> None:
    eligible = eligible_merchants(prepared, 30)
    assert len(eligible) == 90  # ../shared/data/DATA.md: 90 sellers with >= 30 buyers
    buyers_per_merchant: dict[str, int] = {}
    for m in merchant_ids(prepared, "buyers"):
        buyers_per_merchant[m] = buyers_per_merchant.get(m, 0) + 1
    assert eligible == sorted(m for m, n in buyers_per_merchant.items() if n >= 30)


def test_heldout_draw_is_seeded_among_eligible_merchants(prepared: Path) -> None:
    eligible = set(eligible_merchants(prepared, 30))
    first = heldout_merchants(prepared, 20, 30, seed=3)
    assert first == heldout_merchants(prepared, 20, 30, seed=3)
    assert len(set(first)) == 20 and set(first) <= eligible
    assert first != heldout_merchants(prepared, 20, 30, seed=4)


def test_too_many_heldout_merchants_is_a_clear_error(prepared: Path) -> None:
    with pytest.raises(ValueError, match="90 have >= 30 buyers"):
        heldout_merchants(prepared, 91, 30, seed=0)


def test_filtered_copy_drops_exactly_the_heldout_merchants(prepared: Path, tmp_path: Path) -> None:
    held = heldout_merchants(prepared, 20, 30, seed=0)
    kept = filter_prepared(prepared, tmp_path / "train", held)
    only = filter_prepared(prepared, tmp_path / "held", held, keep=True)
    for table in MERCHANT_TABLES:
        source = merchant_ids(prepared, table)
        train = merchant_ids(tmp_path / "train", table)
        heldout = merchant_ids(tmp_path / "held", table)
        assert not set(train) & set(held)
        assert set(heldout) <= set(held)
        assert sorted(train) == sorted(m for m in source if m not in set(held))
        assert kept[table] + only[table] == len(source)
    manifest = json.loads((tmp_path / "train" / MANIFEST_FILE).read_text())
    assert manifest["counts"]["buyers"] == kept["buyers"]
    assert manifest["merchant_filter"]["merchants"] == held
    assert manifest["merchant_filter"]["rows_removed"]["buyers"] == only["buyers"]
    # The held-out sellers have >= 30 buyers each, so at least 20 * 30 buyers left the training copy.
    assert only["buyers"] >= 20 * 30


def test_filtered_copy_reads_as_a_prepared_directory(prepared: Path, tmp_path: Path) -> None:
    from learners.vqvae.dataset import load_rows

    held = heldout_merchants(prepared, 5, 30, seed=1)
    kept = filter_prepared(prepared, tmp_path / "train", held)
    rows = load_rows(tmp_path / "train", max_seq_len=16)
    assert rows.rows_read == kept["buyers"] == len(rows.lengths) + sum(rows.quarantine.values())


def test_filtering_into_the_source_is_refused(prepared: Path) -> None:
    with pytest.raises(ValueError, match="another directory"):
        filter_prepared(prepared, prepared, ["x"])

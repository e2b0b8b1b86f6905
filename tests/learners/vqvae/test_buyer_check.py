"""Too few kept buyers for the codes: refused before anything is trained or written; thin codes
warned about; the epoch line's codes labelled as the epoch's."""

from __future__ import annotations

import pyarrow as pa
import pytest

from learners.vqvae.dataset import rows_from_table
from learners.vqvae.fit import VQVAEConfig, check_buyers, fit_codebook, progress_line
from tests.learners.vqvae.conftest import TINY, make_buyers, write_prepared


def with_nan_features(table: pa.Table, rows: list[int]) -> pa.Table:
    """``table`` with non-finite features in ``rows`` (quarantined when read)."""
    features = table.column("features").to_pylist()
    for i in rows:
        features[i] = [float("nan")] * len(features[i])
    index = table.column_names.index("features")
    return table.set_column(
        index, table.schema.field(index), pa.array(features, table.schema.field(index).type)
    )


def test_fewer_kept_buyers_than_codes_are_refused_with_the_numbers_and_the_fix():
    table, _ = make_buyers(3, seed=0)
    rows = rows_from_table(with_nan_features(table, [0]), max_seq_len=16)
    with pytest.raises(
        ValueError,
        match=r"^2 buyers kept \(1 of 3 quarantined\), fewer than --codes 4: fix: --codes 2 or fewer, or more data$",
    ):
        check_buyers(rows, 4)
    # The same three buyers all kept would do for 3 codes, thinly.
    assert check_buyers(rows_from_table(table, max_seq_len=16), 3) is not None


def test_thin_codes_warn_with_buyers_per_code():
    table, _ = make_buyers(25, seed=0)
    rows = rows_from_table(table, max_seq_len=16)
    warning = check_buyers(rows, 4)
    assert warning is not None and warning.startswith(
        "warning: 25 buyers kept for --codes 4: 6.2 buyers per code"
    )
    assert "thin" in warning
    assert check_buyers(rows, 2) is None  # 12.5 buyers per code


def test_fit_codebook_refuses_before_writing_anything(tmp_path):
    table, _ = make_buyers(2, seed=0)
    data = write_prepared(tmp_path / "data", table)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"2 buyers kept, fewer than --codes 4"):
        fit_codebook(data, VQVAEConfig(**{**TINY, "codes": 4}), out)
    assert not out.exists()


def test_epoch_line_says_its_codes_are_those_hit_this_epoch():
    metrics = dict(
        epoch=3.0,
        recon_loss=0.5,
        commit_loss=0.1,
        perplexity=3.2,
        codes_in_use=4.0,
        restarts=0.0,
        buyers_per_s=100.0,
    )
    line = progress_line(metrics, 3, 4)
    assert "codes hit this epoch 4/4" in line and "codes in use" not in line

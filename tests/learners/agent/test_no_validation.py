"""A run without validation merchants says so on the console: why, and what it goes without."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from learners.agent.train import no_validation_line

from .conftest import make_traces

SKIPPED = "no early stopping, no best-epoch restore"


def test_one_merchant_cli_run_prints_that_it_has_no_validation(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces, _ = make_traces(merchants=("m1",), buyers=4, sessions=1, seed=2)
    # Two steps the page could not perform: left out of the examples with their reason.
    valid = pa.array([i >= 2 for i in range(traces.num_rows)])
    traces = traces.set_column(traces.column_names.index("valid"), "valid", valid)
    pq.write_table(traces, tmp_path / "traces.parquet")
    argv = ["train-agent", str(tmp_path), "--no-persona", "--out", str(tmp_path / "agent"), "--workers", "0"]
    tiny = ["--stage2-epochs", "1", "--batch-size", "8", "--max-observation-tokens", "96"]
    assert main([*argv, *tiny]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("no validation")]
    assert len(lines) == 1
    assert lines[0].startswith("no validation: the traces hold one merchant, and validation holds out whole")
    assert SKIPPED in lines[0]
    # The rows left out of the examples are counted by reason in the manifest, as on the console.
    rows = json.loads((tmp_path / "agent" / "manifest.json").read_text())["rows"]
    assert rows["quarantined"] >= 2 and sum(rows["quarantine_by_reason"].values()) == rows["quarantined"]


def test_several_merchants_without_a_validation_share_name_the_flag():
    line = no_validation_line(0.0, merchants=3)
    assert line.startswith("no validation (--validation-share 0): ")
    assert SKIPPED in line and line.endswith("for them: e.g. --validation-share 0.1")
    assert no_validation_line(0.2, merchants=1).startswith("no validation: the traces hold one merchant")

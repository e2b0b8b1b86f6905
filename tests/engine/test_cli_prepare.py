"""`simpersona prepare` and `simpersona inspect` end to end on the real samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.cli import main
from learners.data import schema


def test_prepare_then_inspect_shows_counts_quarantine_and_merchants(
    real_file, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = real_file("rees46")
    out = tmp_path / "rees46"
    assert main(["prepare", str(path), "--format", "rees46", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / schema.MANIFEST_FILE).read_text())
    counts = manifest["counts"]
    assert f"{counts['events']:,} events of {counts['rows_read']:,} rows" in printed
    assert f"quarantined {counts['rows_quarantined']:,} rows" in printed
    (reason,) = manifest["quarantine_by_reason"]
    assert reason in printed

    assert main(["inspect", str(out), "--top", "3"]) == 0
    shown = capsys.readouterr().out
    quarantined = pq.read_table(out / schema.TABLE_FILES["quarantine"]).to_pylist()
    assert f"{path}:{quarantined[0]['line']}" in shown  # an example row with file:line
    assert "rees46" in shown and f"{counts['buyers']:,}" in shown
    assert all(name in shown for name in schema.FEATURE_NAMES)


def test_config_flags_and_config_file_reach_the_pipeline(real_file, tmp_path: Path) -> None:
    path = real_file("tmall-ijcai15")
    config = tmp_path / "prepare.yaml"
    config.write_text("max_seq_len: 5\nsession_gap_s: 60\n")
    out = tmp_path / "out"
    argv = ["prepare", str(path), "--format", "tmall-ijcai15", "--out", str(out), "--no-progress"]
    assert main([*argv, "--config", str(config), "--max-seq-len", "4"]) == 0
    manifest = json.loads((out / schema.MANIFEST_FILE).read_text())
    assert manifest["config"]["max_seq_len"] == 4 and manifest["config"]["session_gap_s"] == 60
    seqs = pq.read_table(out / schema.TABLE_FILES["buyers"], columns=["event_seq"])["event_seq"].to_pylist()
    assert max(len(s) for s in seqs) == 4


def test_a_separate_process_writes_the_same_bytes(real_file, tmp_path: Path) -> None:
    path = real_file("tmall-ijcai15")
    argv = ["prepare", str(path), "--format", "tmall-ijcai15", "--no-progress", "--partition-rows", "40000"]
    assert main([*argv, "--out", str(tmp_path / "here")]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv, "--out", str(tmp_path / "there")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for file in schema.TABLE_FILES.values():
        assert (tmp_path / "here" / file).read_bytes() == (tmp_path / "there" / file).read_bytes(), file


def test_bad_invocations_fail_with_a_message(
    real_file, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(real_file("taobao"))
    assert main(["prepare", path, "--format", "no-such-format", "--out", str(tmp_path)]) == 2
    assert "no-such-format" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing.csv"), "--format", "taobao", "--out", str(tmp_path)]) == 2
    assert "missing.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", path, "--format", "taobao", "--mapping", "m.yaml", "--out", str(tmp_path)])
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "manifest.json" in capsys.readouterr().err

"""`simpersona prepare` and `simpersona inspect` end to end on the real samples."""

from __future__ import annotations

import json
import re
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


def simpersona(*argv: str) -> subprocess.CompletedProcess[str]:
    """`simpersona ARGV...` in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True, check=False
    )


def test_prepare_help_lists_every_canonical_event_type() -> None:
    done = simpersona("prepare", "--help")
    assert done.returncode == 0, done.stderr
    listed = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in done.stdout.splitlines()[-20:]
        if line.startswith("  ") and line.split()
    }
    for name, meaning in schema.EVENT_MEANINGS.items():
        assert listed.get(name) == " ".join(meaning.split()), name
    assert "drop" in done.stdout and "--check" in done.stdout


def test_draft_check_then_prepare_agree_on_every_count(real_file, tmp_path: Path) -> None:
    """Draft a mapping for the header-less Taobao sample, drop one code, check it, then prepare."""
    path = str(real_file("taobao"))
    mapping = tmp_path / "taobao.yaml"
    done = simpersona("mapping", "draft", path, "--out", str(mapping), "--rows", "3000")
    assert done.returncode == 0, done.stderr
    assert f"wrote {mapping} from 3,000 sampled rows (csv)" in done.stdout
    assert "buyer_id     <- column 'buyer_id'  (guessed from the values)" in done.stdout
    assert f"next: simpersona prepare INPUT... --mapping {mapping} --check" in done.stdout
    again = simpersona("mapping", "draft", path, "--out", str(mapping))
    assert again.returncode == 2 and "already exists; fix:" in again.stderr

    text = mapping.read_text()
    assert "    fav: favorite" in text
    mapping.write_text(text.replace("    fav: favorite", "").replace("  # drop: []", '  drop: ["fav"]'))
    out = tmp_path / "data"
    check = simpersona("prepare", path, "--mapping", str(mapping), "--check")
    assert check.returncode == 0, check.stderr
    assert not out.exists()
    head = re.search(
        r"checked ([\d,]+) rows: prepare would keep ([\d,]+), quarantine ([\d,]+) and drop ([\d,]+)",
        check.stdout,
    )
    assert head is not None, check.stdout
    read, kept, quarantined, dropped = (int(g.replace(",", "")) for g in head.groups())

    done = simpersona("prepare", path, "--mapping", str(mapping), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / schema.MANIFEST_FILE).read_text())
    counts = manifest["counts"]
    assert (read, kept, quarantined, dropped) == (
        counts["rows_read"],
        counts["rows_kept"],
        counts["rows_quarantined"],
        counts["rows_dropped"],
    )
    assert read == kept + quarantined + dropped and dropped == manifest["rows_dropped_by_code"]["fav"] > 0
    for reason, n in manifest["quarantine_by_reason"].items():
        assert f"{n:>10,}  {reason}" in check.stdout
        assert f"{n:>10,}  {reason}" in done.stdout
    assert f"{dropped:>10,}  code 'fav'" in check.stdout
    assert (
        f"dropped on purpose {dropped:,} rows" in done.stdout and f"{dropped:>10,}  code 'fav'" in done.stdout
    )


def test_prepare_without_out_or_check_is_a_clear_error(real_file, tmp_path: Path) -> None:
    done = simpersona("prepare", str(real_file("taobao")), "--format", "taobao")
    assert done.returncode == 2 and "--out is missing; fix:" in done.stderr

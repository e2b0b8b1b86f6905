"""The README's "Bring your own logs" walkthrough, command by command, on the fixture it ships."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "examples" / "logs" / "my-shop.csv"
EDIT = {
    "map": '  map: {"1": product_view, "2": add_to_cart, "3": remove_from_cart, "4": favorite, "5": purchase}\n',
    "drop": '  drop: ["6"]\n',
}


def simpersona(*args: str, cwd: Path) -> str:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_draft_edit_check_prepare_inspect(tmp_path: Path) -> None:
    codes = Counter(row["action"] for row in csv.DictReader(FIXTURE.open()))
    draft = simpersona("mapping", "draft", str(FIXTURE), "--out", "my-shop.yaml", cwd=tmp_path)
    assert "TODO" in draft and "event_type.map" in draft
    text = (tmp_path / "my-shop.yaml").read_text()
    assert all(f'"{code}": TODO' in text for code in codes)
    # The edit the README shows: the five codes mapped, the generic click dropped on purpose.
    text = re.sub(r"  map:\n(    .*\n)+", EDIT["map"], text).replace(
        "  # drop: []", EDIT["drop"].rstrip("\n")
    )
    (tmp_path / "my-shop.yaml").write_text(text)

    check = simpersona("prepare", str(FIXTURE), "--mapping", "my-shop.yaml", "--check", cwd=tmp_path)
    kept = sum(n for code, n in codes.items() if code != "6")
    assert (
        f"checked {sum(codes.values())} rows: prepare would keep {kept}, quarantine 0 and drop {codes['6']}"
        in check
    )
    assert not (tmp_path / "my-shop-data").exists()

    simpersona("prepare", str(FIXTURE), "--mapping", "my-shop.yaml", "--out", "my-shop-data", cwd=tmp_path)
    counts = json.loads((tmp_path / "my-shop-data" / "manifest.json").read_text())["counts"]
    assert (counts["rows_read"], counts["rows_kept"], counts["rows_dropped"]) == (
        sum(codes.values()),
        kept,
        codes["6"],
    )
    assert counts["rows_read"] == counts["rows_kept"] + counts["rows_quarantined"] + counts["rows_dropped"]

    inspect = simpersona("inspect", "my-shop-data", cwd=tmp_path)
    purchases = codes["5"]
    assert (
        f"session conv. = share of sessions with a purchase ({purchases} of {counts['sessions']} overall)"
        in inspect
    )
    assert "rows_dropped" in inspect and str(codes["6"]) in inspect

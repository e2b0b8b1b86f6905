"""Shared fixtures: the real clickstream samples in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

REAL_FILES = {
    "tmall-ijcai15": SHARED_DATA / "tmall-ijcai15-head100k" / "user_log_format1_head100k.csv",
    "tmall-brand": SHARED_DATA / "tmall-brand-2014" / "t_alibaba_data.csv",
    "rees46": SHARED_DATA / "rees46-multicat-head" / "2019-Oct_head.csv",
    "taobao": SHARED_DATA / "taobao-userbehavior-head" / "UserBehavior_head.csv",
}


@pytest.fixture(scope="session")
def real_file():
    """Return the path of a real sample by format name; skip when ../shared/data is absent."""

    def get(name: str) -> Path:
        path = REAL_FILES[name]
        if not path.exists():
            pytest.skip(f"real sample {path} not present (../shared/data is missing beside the checkout)")
        return path

    return get

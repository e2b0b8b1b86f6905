"""The Ray Data path gives the same tables as the local path (local Ray instance, 2 CPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from learners.data import schema
from learners.data.adapter import Adapter
from learners.data.prepare import PrepareConfig, prepare
from tests.learners.data.test_drop_codes import write_log, write_mapping
from tests.learners.data.test_prepare import CanonicalParquetAdapter, read_outputs, write_inputs

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def assert_same_outputs(inputs: list[Path], adapter: Adapter, config: PrepareConfig, tmp_path: Path) -> dict:
    local = prepare(inputs, adapter, config, tmp_path / "local")
    distributed = prepare(
        inputs, adapter, PrepareConfig(**{**vars(config), "use_ray": True}), tmp_path / "ray"
    )
    assert distributed["counts"] == local["counts"]
    assert distributed["quarantine_by_reason"] == local["quarantine_by_reason"]
    assert distributed["rows_dropped_by_code"] == local["rows_dropped_by_code"]
    assert distributed["inputs"] == local["inputs"]
    a, b = read_outputs(tmp_path / "local"), read_outputs(tmp_path / "ray")
    for name in schema.TABLE_FILES:
        assert a[name].equals(b[name]), name
    return local


def test_ray_path_equals_local_path_on_two_files(local_ray: object, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    config = PrepareConfig(partition_rows=900, n_buckets=8, max_seq_len=32)
    manifest = assert_same_outputs(inputs, CanonicalParquetAdapter(), config, tmp_path)
    assert manifest["counts"]["rows_quarantined"] == 8


def test_ray_path_equals_local_path_on_a_real_sample(local_ray: object, real_file, tmp_path: Path) -> None:
    from learners.data.adapters import get_adapter

    manifest = assert_same_outputs([real_file("rees46")], get_adapter("rees46"), PrepareConfig(), tmp_path)
    assert manifest["counts"]["rows_quarantined"] == 1


def test_ray_path_counts_dropped_codes_like_the_local_path(local_ray: object, tmp_path: Path) -> None:
    from learners.data.adapters import get_adapter

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    log, expected = write_log(tmp_path / "a")
    second, _ = write_log(tmp_path / "b", seed=1)
    adapter = get_adapter(mapping=write_mapping(tmp_path))
    manifest = assert_same_outputs([log, second], adapter, PrepareConfig(n_buckets=8), tmp_path)
    counts = manifest["counts"]
    assert counts["rows_read"] == counts["rows_kept"] + counts["rows_quarantined"] + counts["rows_dropped"]
    assert manifest["rows_dropped_by_code"]["6"] > expected["dropped"]["6"]  # both files counted

import pytest

from learners.worker_cpus import scaling_config, spread_cpus, worker_cpus


@pytest.mark.parametrize(
    ("nodes", "workers", "each"),
    [
        ([2], 1, 2),  # one worker takes the whole laptop
        ([2], 2, 1),
        ([16], 3, 5),
        ([8, 8], 2, 8),  # one worker per node
        ([8, 8], 3, 4),  # 5 each would fit only one worker per node
        ([8, 2], 2, 4),  # both on the larger node
        ([1], 2, 1),  # more workers than CPUs: Ray waits for them, each asks for one
        ([], 1, 1),
    ],
)
def test_spread_cpus_is_the_most_every_worker_can_take(nodes, workers, each):
    assert spread_cpus(nodes, workers) == each
    if each > 1:  # one more CPU each and some worker finds no node
        assert sum(n // (each + 1) for n in nodes) < workers


def test_scaling_config_asks_each_worker_for_its_cpus():
    assert scaling_config(2, False, cpus_per_worker=3).num_cpus_per_worker == 3
    gpu = scaling_config(1, True, cpus_per_worker=4)
    assert (gpu.num_cpus_per_worker, gpu.num_gpus_per_worker) == (4, 1)


def test_worker_cpus_reads_the_running_cluster():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        assert worker_cpus(1) == 3
        assert worker_cpus(2) == 1
        assert worker_cpus(2, requested=2) == 2
    finally:
        ray.shutdown()

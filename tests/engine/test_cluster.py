"""cluster.yaml passes Ray's own launcher validation; a simulation across a multi-node Ray cluster
on this machine puts env runners on env-runner nodes and the policy server on the policy node."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.cluster_utils import Cluster

from engine.simulation import simulate
from tests.engine.sim_fixtures import tiny_simulation

ROOT = Path(__file__).resolve().parents[2]


def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    prepared = prepare_config(cluster_config())
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types["policy_gpu"]["resources"] == {"GPU": 1, "policy_node": 1}
    assert types["env_runner_cpu"]["resources"] == {"env_runner": 1}
    assert prepared["head_node_type"] == "head"
    assert any("pip install -q -e ~/simpersona" in cmd for cmd in prepared["setup_commands"])
    # The names the simulate command is told to use in cluster.yaml's header exist as resources.
    header = (ROOT / "cluster.yaml").read_text(encoding="utf-8").split("cluster_name")[0]
    assert "--runner-resource env_runner" in header and "--policy-resource policy_node" in header


def test_validation_rejects_a_broken_cluster_yaml():
    broken = copy.deepcopy(cluster_config())
    broken["available_node_types"]["env_runner_cpu"]["resourcez"] = {"env_runner": 1}
    with pytest.raises(Exception, match="resourcez"):
        validate_config(prepare_config(broken))


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    policy = c.add_node(num_cpus=1, resources={"policy_node": 1})
    runners = c.add_node(num_cpus=2, resources={"env_runner": 1})
    ray.init(address=c.address, log_to_driver=False)
    yield c, policy, runners
    ray.shutdown()
    c.shutdown()


def test_simulation_places_actors_by_node_resources(cluster, tmp_path):
    c, policy_node, runner_node = cluster
    config = tiny_simulation(
        tmp_path,
        buyers_per_merchant=8,
        max_steps=4,
        policy="random",
        policy_placement="server",  # runner actors and a policy server, each on its own node type
        runners=2,
        runner_num_cpus=1,
        runner_resource="env_runner",
        policy_num_cpus=1,
        policy_resource="policy_node",
        chunk_size=4,
        call_timeout_s=60,
        progress=False,
    )
    seen: dict[str, set] = {"runners": set(), "policy": set()}

    def record(sim):
        seen["runners"] |= {ray.get(s.handle.ping.remote(), timeout=30)["node_id"] for s in sim.pool.slots}
        seen["policy"] |= set(ray.get(sim.pool.router.ready.remote(), timeout=30))

    manifest = simulate(config, on_chunk=record)
    assert manifest["buyers_completed"] == 16
    assert seen["runners"] == {runner_node.node_id}
    assert seen["policy"] == {policy_node.node_id}
    assert pq.read_table(tmp_path / "out" / "rollouts").num_rows == manifest["steps"]

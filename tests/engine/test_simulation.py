"""simulate(): Parquet parts + manifest, exactly-once, same rollouts with 1 or 3 runners and whatever
the policy placement, resume, goal tasks over several seeds."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.evaluate import step_quality
from engine.population import buyer_seed, goal_product
from engine.rollout_store import format_summary
from engine.simulation import simulate
from envs.catalog import PreparedCatalogs
from learners.agent.markov_policy import MarkovPolicy
from tests.engine.sim_fixtures import GoalSeekingPolicy, tiny_simulation

BUYERS_PER_MERCHANT = 15


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    return tiny_simulation(
        root,
        out=str(root / "unused"),
        buyers_per_merchant=BUYERS_PER_MERCHANT,
        seed=3,
        max_steps=6,
        policy="random",
        runners=1,
        envs_per_runner=8,
        chunk_size=7,
        call_timeout_s=30,
        driver_plays=False,  # the runners play every chunk, unless a test says otherwise
    )


@pytest.fixture(scope="module")
def markov_json(tmp_path_factory):
    """A Markov chain that on the home page opens products, then adds to cart, checks out and buys."""
    counts = {
        "home": {"product_view": 9, "exit": 1},
        "product": {"add_to_cart": 8, "exit": 2},
        "cart": {"checkout": 9, "exit": 1},
        "checkout": {"purchase": 9, "exit": 1},
    }
    path = tmp_path_factory.mktemp("markov") / "markov.json"
    return MarkovPolicy(counts, {}, smoothing=0.1).save(path)


def rollouts(out):
    table = pq.read_table(f"{out}/rollouts")
    return table.sort_by([("sim_buyer_id", "ascending"), ("step", "ascending")])


def test_one_and_three_runners_give_identical_rollouts(ray_local, base, tmp_path):
    one = simulate(replace(base, out=str(tmp_path / "one"), runners=1))
    three = simulate(replace(base, out=str(tmp_path / "three"), runners=3, chunks_per_runner=1))
    a, b = rollouts(tmp_path / "one"), rollouts(tmp_path / "three")
    assert a.to_pylist() == b.to_pylist()
    n = 2 * BUYERS_PER_MERCHANT
    for manifest in (one, three):
        assert manifest["buyers_requested"] == manifest["buyers_completed"] == n
        assert manifest["steps"] == a.num_rows
        assert manifest["invalid_steps"] == a.num_rows - pc.sum(a["valid"]).as_py()
        assert manifest["chunks_done"] == list(range(-(-n // base.chunk_size)))
    assert json.loads((tmp_path / "one" / "manifest.json").read_text()) == one
    assert one["startup_s"] == 0.0 < one["elapsed_s"]  # random runs in task runners: no actor to start
    assert a["goal"].null_count == a.num_rows and set(a["seed"].to_pylist()) == {base.seed}  # no goals asked
    # Exactly once: every buyer's steps are 0..k-1, no buyer missing or repeated.
    ids = a["sim_buyer_id"].to_pylist()
    steps = a["step"].to_pylist()
    assert sorted(set(ids)) == list(range(n))
    for i in range(n):
        mine = [s for b, s in zip(ids, steps, strict=True) if b == i]
        assert mine == list(range(len(mine)))


def test_policy_placement_does_not_change_the_rollouts(ray_local, base, markov_json, tmp_path):
    markov = replace(base, policy="markov", policy_path=str(markov_json), runners=2)
    runs = {
        "server": replace(markov, policy_placement="server"),
        "runner": replace(markov, policy_placement="auto"),  # markov runs in the runners by default
        "driver": replace(markov, policy_placement="runner", driver_plays=True),
    }
    busy_slots: list[int] = []

    def watch(sim):  # after every written chunk: which runner slots have a chunk in flight
        busy_slots.extend(i for i, slot in enumerate(sim.pool.slots) if slot.in_flight)

    manifests = {
        name: simulate(replace(c, out=str(tmp_path / name)), on_chunk=watch if name == "driver" else None)
        for name, c in runs.items()
    }
    reference = rollouts(tmp_path / "server").to_pylist()
    for name, manifest in manifests.items():
        assert rollouts(tmp_path / name).to_pylist() == reference, name
        assert manifest["policy_placement"] == ("runner" if name == "driver" else name)
        assert manifest["buyers_completed"] == 2 * BUYERS_PER_MERCHANT
        assert manifest["chunks_done"] == list(range(manifest["chunks"]))
    # Start-up is the wait for the runner actors and the policy server; task runners have none.
    assert 0 < manifests["server"]["startup_s"] < manifests["server"]["elapsed_s"]
    assert manifests["runner"]["startup_s"] == 0.0
    # No runner has returned a chunk when the loop starts, so the driver plays at least one itself;
    # a chunk both it and a runner played is written once (chunks_done above, rollouts equal).
    assert manifests["driver"]["driver_chunks"] >= 1
    # The driver stands in for the last runner: only the other one is sent chunks.
    assert busy_slots and set(busy_slots) == {0}
    assert manifests["server"]["driver_chunks"] == manifests["runner"]["driver_chunks"] == 0


def test_columns_and_per_merchant_summary(ray_local, base, markov_json, tmp_path):
    manifest = simulate(replace(base, out=str(tmp_path / "o"), policy="markov", policy_path=str(markov_json)))
    table = rollouts(tmp_path / "o")
    for col in (
        "sim_buyer_id",
        "merchant_id",
        "code",
        "step",
        "action",
        "action_kind",
        "valid",
        "converted",
        "page",
        "reward",
    ):
        assert col in table.column_names
    # Per merchant conversion = share of its buyers whose last row says converted (naive recount).
    for m in ("m1", "m2"):
        rows = table.filter(pc.equal(table["merchant_id"], m)).to_pylist()
        last = {r["sim_buyer_id"]: r["converted"] for r in rows}
        summary = manifest["merchants"][m]
        assert summary["buyers"] == len(last) == BUYERS_PER_MERCHANT
        assert summary["conversion_rate"] == pytest.approx(sum(last.values()) / len(last))
        viewed = {r["sim_buyer_id"] for r in rows if r["action_kind"] == "product_view"}
        assert summary["action_rates"].get("product_view", 0.0) == pytest.approx(len(viewed) / len(last))
    text = format_summary(manifest["merchants"])
    assert "m1" in text.splitlines()[1] and "conv" in text.splitlines()[0]
    # Codes follow the merchants' distributions (stratified quotas of 15 over p ∝ 1..4 and 4..1).
    codes_m1 = {
        r["sim_buyer_id"]: r["code"] for r in table.filter(pc.equal(table["merchant_id"], "m1")).to_pylist()
    }
    counts = [list(codes_m1.values()).count(c) for c in range(4)]
    assert sum(counts) == 15 and all(abs(c - 15 * (k + 1) / 10) < 1 for k, c in enumerate(counts))


def test_resume_plays_only_missing_chunks(ray_local, base, tmp_path):
    out = tmp_path / "r"
    full = simulate(replace(base, out=str(out)))
    reference = rollouts(out)
    # Lose two parts, as if the run had stopped before writing them.
    (out / "rollouts" / "part-000001.parquet").unlink()
    (out / "rollouts" / "part-000003.parquet").unlink()
    with pytest.raises(ValueError, match="--resume"):
        simulate(replace(base, out=str(out)))
    with pytest.raises(ValueError, match="different"):
        simulate(replace(base, out=str(out), resume=True, seed=4))
    resumed = simulate(replace(base, out=str(out), resume=True, runners=2))
    assert rollouts(out).to_pylist() == reference.to_pylist()
    assert resumed["buyers_completed"] == full["buyers_completed"] and resumed["steps"] == full["steps"]


def test_missing_distributions_is_a_clear_error(base, tmp_path):
    with pytest.raises(ValueError, match="distributions"):
        simulate(replace(base, out=str(tmp_path / "x"), distributions=None))


def test_goal_tasks_give_each_buyer_its_target_and_per_seed_success(ray_local, base, tmp_path):
    out = tmp_path / "goals"
    config = replace(base, out=str(out), goal_tasks=True, replicates=3, max_steps=30, runners=2)
    manifest = simulate(config, policy=partial(GoalSeekingPolicy, wander=0.4))
    table = rollouts(out)
    n = 2 * BUYERS_PER_MERCHANT
    assert manifest["buyers_completed"] == 3 * n
    catalogs = PreparedCatalogs(base.data)
    buyers: dict[int, list[dict]] = {}
    for row in table.to_pylist():
        buyers.setdefault(row["sim_buyer_id"], []).append(row)
    success: dict[int, list[bool]] = {}
    for buyer_id, steps in buyers.items():
        replicate, index = divmod(buyer_id, n)
        assert {r["seed"] for r in steps} == {base.seed + replicate}
        expected_goal = goal_product(
            catalogs.get(steps[0]["merchant_id"]), buyer_seed(base.seed + replicate, index)
        )
        assert {r["goal"] for r in steps} == {expected_goal}
        bought = sum(r["reward"] for r in steps)
        if bought:  # open the goal, buy now, place order: rewarded once, on the last step
            assert [r["action"] for r in steps] == [f"open product {expected_goal}", "buy now", "place order"]
            assert [r["reward"] for r in steps] == [0.0, 0.0, 1.0]
        else:  # goal tasks stop after 20 steps although max_steps is 30
            assert len(steps) == 20 and steps[-1]["truncated"]
        success.setdefault(base.seed + replicate, []).append(bought > 0)
    rates = [sum(v) / len(v) for _, v in sorted(success.items())]
    assert len(rates) == 3 and all(0 < r < 1 for r in rates)
    quality = step_quality(out)["goal_success"]
    assert quality["n"] == 3 and quality["mean"] == pytest.approx(sum(rates) / 3)
    assert quality["low"] <= quality["mean"] <= quality["high"]
    assert quality["seeds"] == pytest.approx({str(base.seed + i): r for i, r in enumerate(rates)})


def test_goal_tasks_need_the_prepared_catalogs(base, tmp_path):
    with pytest.raises(ValueError, match="goal_tasks needs `data`"):
        simulate(replace(base, out=str(tmp_path / "g"), goal_tasks=True, data=None))

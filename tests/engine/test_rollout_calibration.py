"""Rollout calibration: real rates per visit are cut as the env cuts a visit, simulated rates are
counted in expectation, and the rounds carry a real tiny agent's simulated rates toward the real ones."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.rollout_calibration import (
    CALIBRATED,
    CODE_PRIOR,
    DEPTH,
    LOG_PRIOR_EVENTS,
    MAX_STEP,
    REFERENCE,
    KindTally,
    RolloutCalibration,
    bias_step,
    calibrate_rollouts,
    code_visit_rates,
    log_rates,
    prepared_of,
    round_sizes,
    session_buyers,
    shrunk,
    visit_codes,
    visit_rates,
    with_log_prior,
)
from learners.agent.llm_policy import LLMPolicy
from learners.agent.policy import ActRequest, ActResult
from learners.agent.scoring import CALIBRATION_FILE

from .sim_fixtures import write_prepared, write_tiny_agent


def _traces(sessions: dict[tuple[str, str, str], list[str]]) -> pa.Table:
    rows = [
        {"merchant_id": m, "buyer_id": b, "session_id": s, "step": i, "action": a}
        for (m, b, s), actions in sessions.items()
        for i, a in enumerate(actions)
    ]
    return pa.Table.from_pylist(rows)


def test_real_rates_count_real_events_up_to_the_first_purchase_and_the_step_cap():
    traces = _traces(
        {
            ("m1", "u1", "s1"): [
                "open product p1",
                "add to cart",
                "go to cart",
                "checkout",
                "place order",
                "open product p2",
                "exit",
            ],  # fmt: skip
            ("m1", "u2", "s2"): [
                'search "p2"',
                "open product p2",
                "favorite",
                "open product p1",
                "favorite",
                "exit",
            ],  # fmt: skip
        }
    )
    inserted = [True] * traces.num_rows
    inserted[7] = False  # s2's search is the replay's route to p2, not the buyer's
    traces = traces.append_column("real_event", pa.array(inserted))
    rates, sessions = visit_rates(traces, max_steps=3)
    assert sessions == 2 and set(rates) == set(CALIBRATED)
    # s1 keeps view, cart and a navigation step (not calibrated); s2 its route, view and favourite.
    assert {k: v for k, v in rates.items() if v} == {"product_view": 1.0, "add_to_cart": 0.5, "favorite": 0.5}
    rates, _ = visit_rates(traces, max_steps=30)
    assert rates["purchase"] == rates["checkout"] == 0.5 and rates["search"] == 0.0
    assert rates["favorite"] == 0.5  # s2 favourites twice: the share of visits that favourite
    assert DEPTH == ("product_view",) and rates["product_view"] == 1.5  # uses: s1's view after its
    # purchase is cut, as the env ends the visit, and s2 views two products


class _FixedScores:
    def act(self, requests: list[ActRequest]) -> list[ActResult]:
        return [ActResult(r.valid_actions[0], info={"scores": [0.0, np.log(3.0)]}) for r in requests]


def test_the_tally_adds_each_kinds_probability_until_the_visit_takes_it():
    tally = KindTally(_FixedScores(), temperature=1.0)
    request = ActRequest(observation="page", valid_actions=("exit", "favorite"))
    tally([request, request])
    assert tally.total == pytest.approx({"exit": 0.5, "favorite": 1.5})
    sharp = KindTally(_FixedScores(), temperature=0.5)
    sharp([request])
    assert sharp.total["favorite"] == pytest.approx(0.9)  # softmax of (0, 2 ln 3): 9 / 10
    later = KindTally(_FixedScores(), temperature=1.0)
    later([ActRequest(observation="page", valid_actions=("exit", "favorite"), history=("favorite",))])
    assert later.total == pytest.approx({"exit": 0.25})  # this visit has favourited already
    views = KindTally(_FixedScores(), temperature=1.0)
    viewed = ("open product p1", "open product p2")
    views([ActRequest(observation="page", valid_actions=viewed, history=("open product p1",))])
    assert views.total == pytest.approx({"product_view": 1.0})  # views count at every step (DEPTH)


def test_rounds_carry_simulated_rates_toward_the_real_ones(tmp_path):
    data = write_prepared(tmp_path / "data", merchants=("m1", "m2"))
    agent = write_tiny_agent(tmp_path / "agent", data, num_codes=4)
    step_bias = {"favorite": 0.0, "exit": 0.25}
    (agent / CALIBRATION_FILE).write_text(json.dumps({"bias": step_bias}))
    # Most real buyers (m1's) favourite twice a visit; m2's never do.
    favourites = ["open product p0", "favorite", "open product p1", "favorite", "exit"]
    sessions = {("m1", f"u{i}", f"s{i}"): favourites for i in range(30)}
    sessions |= {("m2", f"v{i}", f"t{i}"): ["open product p0", "exit"] for i in range(10)}
    codes = pa.Table.from_pylist(
        [{"merchant_id": m, "buyer_id": b, "code": i % 4} for i, (m, b, _) in enumerate(sessions)]
    )
    policy = LLMPolicy.from_pretrained(agent, temperature=1.0)
    record = calibrate_rollouts(
        policy, data, _traces(sessions), codes, visits=24, rounds=3, max_steps=10, seed=0
    )

    assert record.visits == 24 and record.merchants == 2 and len(record.rounds) == 3
    assert record.real["favorite"] == pytest.approx(30 / 40)  # the share of visits that favourite
    assert record.real["product_view"] == pytest.approx((2 * 30 + 10) / 40)  # views per visit

    def error(simulated: dict[str, float]) -> float:
        kinds = [k for k in CALIBRATED if record.real[k] > 0]
        return float(np.mean([abs(np.log(simulated.get(k, 1e-6) / record.real[k])) for k in kinds]))

    assert error(record.rounds[-1]["simulated"]) < 0.5 * error(record.rounds[0]["simulated"])
    assert record.rounds[-1]["simulated"]["favorite"] > 2 * record.rounds[0]["simulated"]["favorite"]
    assert record.rounds[-1]["simulated"]["favorite"] <= 1.0  # a share of visits, not uses
    assert record.bias[REFERENCE] == step_bias[REFERENCE] and policy.kind_bias == record.bias

    record.save(agent)
    saved = json.loads((agent / CALIBRATION_FILE).read_text())
    assert saved["bias"] == record.bias and saved["step_bias"] == step_bias
    assert LLMPolicy.from_pretrained(agent).kind_bias == record.bias
    assert [r["visits"] for r in record.rounds] == [12, 24, 24]  # round_sizes
    assert (
        "rollout-calibrated on simulated visits of 2 merchants under unseen ids, 3 rounds of 12/24/24"
        in record.line()
    )
    assert RolloutCalibration(**saved["rollouts"]).bias == record.bias  # the record round-trips


def test_per_code_rounds_part_two_codes_that_the_pooled_bias_treats_alike(tmp_path):
    data = write_prepared(tmp_path / "data", merchants=("m1", "m2"))
    agent = write_tiny_agent(tmp_path / "agent", data, num_codes=4)
    # Code 1's buyers favourite in every visit, code 2's in none; the pooled share is one half.
    favourites = ["open product p0", "favorite", "exit"]
    sessions = {("m1", f"u{i}", "s"): favourites if i % 2 else ["open product p0", "exit"] for i in range(40)}
    codes = pa.Table.from_pylist(
        [{"merchant_id": "m1", "buyer_id": f"u{i}", "code": 2 - i % 2} for i in range(40)]
    )
    real = code_visit_rates(_traces(sessions), 30, visit_codes(_traces(sessions), codes))
    assert real[2] == ({k: 0.0 for k in CALIBRATED} | {"product_view": 1.0}, 20)
    assert real[1][0]["favorite"] == 1.0 and visit_rates(_traces(sessions), 30)[0]["favorite"] == 0.5

    def favourite_share(policy, code: int) -> float:
        tally = KindTally(policy, 1.0)
        request = ActRequest("page", ("favorite", "exit"), persona=code)
        tally([request])
        return tally.total["favorite"]

    policy = LLMPolicy.from_pretrained(agent, temperature=1.0)
    record = calibrate_rollouts(policy, data, _traces(sessions), codes, visits=40, rounds=3, max_steps=10)
    assert set(record.code_bias) == {"1", "2"} and policy.code_bias == {
        1: record.code_bias["1"],
        2: record.code_bias["2"],
    }
    assert record.code_bias["1"]["favorite"] > record.code_bias["2"]["favorite"] + 1.0
    assert len(record.code_error) == 3 and record.code_error[-1] < record.code_error[0]
    assert "per code, mean abs log(real / simulated)" in record.line()
    record.save(agent)
    served = LLMPolicy.from_pretrained(agent, temperature=1.0)
    assert served.code_bias == policy.code_bias
    assert favourite_share(served, 1) > favourite_share(served, 2)
    # Without per-code biases the two codes share the pooled ones.
    pooled = LLMPolicy.from_pretrained(write_tiny_agent(tmp_path / "pooled", data, num_codes=4))
    plain = calibrate_rollouts(pooled, data, _traces(sessions), codes, visits=40, rounds=1, per_code=False)
    assert plain.code_bias == {} and plain.code_error == [] and pooled.code_bias == {}


def test_visits_are_walked_on_the_stores_under_ids_the_agent_never_saw_unless_turned_off(tmp_path):
    data = write_prepared(tmp_path / "data", merchants=("m1", "m2"))
    agent = write_tiny_agent(tmp_path / "agent", data, num_codes=4)
    sessions = {
        (m, f"u{i}", "s"): ["open product p0", "favorite", "exit"] for m in ("m1", "m2") for i in range(6)
    }
    codes = pa.Table.from_pylist([{"merchant_id": m, "buyer_id": b, "code": 1} for m, b, _ in sessions])

    class Seeing(LLMPolicy):
        pages: list[str] = []

        def act(self, requests):
            self.pages.extend(r.observation for r in requests)
            return super().act(requests)

    shops = {}
    for unseen in (True, False):
        Seeing.pages = []
        policy = Seeing.from_pretrained(agent, temperature=1.0)
        record = calibrate_rollouts(
            policy, data, _traces(sessions), codes, visits=12, rounds=1, unseen_ids=unseen
        )
        shops[unseen] = {
            line for page in Seeing.pages for line in page.splitlines() if line.startswith("Shop ")
        }
        assert record.unseen_ids is unseen and ("under unseen ids" in record.line()) is unseen
        products = {w for page in Seeing.pages for w in page.split() if w.startswith("p") and w[1:].isdigit()}
        assert products and (products.isdisjoint({f"p{i}" for i in range(6)}) is unseen)
    assert {s.split()[1] for s in shops[False]} == {"m1", "m2"}
    assert {s.split()[1] for s in shops[True]} == {"m3", "m4"}  # new names, the same two stores


def test_the_early_rounds_play_part_of_the_visits():
    assert round_sizes(1600, 4) == [400, 800, 1600, 1600]
    assert round_sizes(1600, 1) == [1600] and round_sizes(5, 2) == [5, 5]
    assert round_sizes(3, 5) == [1, 1, 1, 3, 3]  # never an empty round


def test_a_codes_rates_are_pulled_to_the_pooled_ones_by_the_prior():
    pooled = {"favorite": 0.5, "purchase": 0.1}
    assert shrunk({"favorite": 1.0}, 0, pooled) == pytest.approx(pooled)
    few = shrunk({"favorite": 1.0, "purchase": 0.0}, CODE_PRIOR, pooled)
    assert few == pytest.approx({"favorite": 0.75, "purchase": 0.05})
    assert shrunk({"favorite": 1.0}, 1e9, pooled)["favorite"] == pytest.approx(1.0)


def test_buyers_are_the_replayed_sessions_with_their_codes_and_a_seeded_sample():
    sessions = {("m1", f"u{i}", "s"): ["exit"] for i in range(10)} | {("m2", "w", "s"): ["exit"]}
    codes = pa.Table.from_pylist(
        [{"merchant_id": "m1", "buyer_id": f"u{i}", "code": i % 3} for i in range(9)]
        + [{"merchant_id": "m2", "buyer_id": "w", "code": 2}]
    )
    buyers = session_buyers(_traces(sessions), visit_codes(_traces(sessions), codes), visits=100, seed=0)
    expected = [("m1", i % 3) for i in range(9)] + [("m2", 2)]  # u9 has no code
    assert [(b.merchant_id, b.code) for b in buyers] == expected
    sample = session_buyers(_traces(sessions), None, visits=4, seed=1)
    assert len(sample) == 4 and sample == session_buyers(_traces(sessions), None, visits=4, seed=1)
    assert len({b.seed for b in sample}) == 4


def test_the_prepared_directory_is_found_behind_traces(tmp_path):
    data = write_prepared(tmp_path / "data")
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "manifest.json").write_text(json.dumps({"inputs": {"prepared": str(data)}}))
    assert prepared_of(data) == data and prepared_of(traces) == data
    with pytest.raises(FileNotFoundError, match="--calibration-visits 0"):
        prepared_of(tmp_path)


def test_train_agent_refines_an_agent_unless_turned_off(tmp_path):
    from engine.stage_configs import TrainAgentStage
    from engine.stages import _calibrate_rollouts
    from learners.agent.train_config import AgentTrainConfig

    data = write_prepared(tmp_path / "data", merchants=("m1", "m2"))
    agent = write_tiny_agent(tmp_path / "agent", data, num_codes=4)
    (agent / CALIBRATION_FILE).write_text(json.dumps({"bias": {"exit": 0.1}}))
    traces = _traces({("m1", f"u{i}", "s"): ["open product p0", "favorite", "exit"] for i in range(8)})

    def stage(**agent_fields) -> TrainAgentStage:
        settings = AgentTrainConfig(no_persona=True, calibration_rounds=2, **agent_fields)
        return TrainAgentStage(str(data), str(agent), agent=settings)

    assert _calibrate_rollouts(stage(calibration_visits=0), traces, None) is None
    assert "rollouts" not in json.loads((agent / CALIBRATION_FILE).read_text())
    line = _calibrate_rollouts(stage(calibration_visits=8), traces, None)
    saved = json.loads((agent / CALIBRATION_FILE).read_text())
    assert line.startswith(
        "rollout-calibrated on simulated visits of 1 merchants under unseen ids, 2 rounds of 8/8"
    )
    assert saved["rollouts"]["visits"] == 8 and saved["step_bias"] == {"exit": 0.1}
    assert saved["bias"]["exit"] == 0.1 and saved["bias"]["favorite"] != 0.0
    assert saved["code_bias"] == {}  # a no-persona agent's buyers have no code to bias
    # An agent without per-step biases (no validation merchants) is refined from none.
    (agent / CALIBRATION_FILE).unlink()
    _calibrate_rollouts(stage(calibration_visits=8), traces, None)
    saved = json.loads((agent / CALIBRATION_FILE).read_text())
    assert saved["step_bias"] == {} and saved["bias"]["favorite"] != 0.0
    line = _calibrate_rollouts(stage(calibration_visits=8, calibration_unseen_ids=False), traces, None)
    assert line.startswith("rollout-calibrated on simulated visits of 1 merchants, 2 rounds")
    # Traces with no prepared directory behind them: the trained agent is kept, and the line says why.
    bare = TrainAgentStage(
        str(tmp_path), str(agent), agent=AgentTrainConfig(no_persona=True, calibration_visits=8)
    )
    skipped = _calibrate_rollouts(bare, traces, None)
    assert skipped.startswith("not rollout-calibrated:") and "--calibration-visits 0" in skipped


def test_the_price_response_is_fitted_again_on_the_refined_agent(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from engine.stage_configs import TrainAgentStage
    from engine.stages import _calibrate_rollouts
    from learners.agent import train
    from learners.agent.price_response import PriceResponse
    from learners.agent.train_config import AgentTrainConfig

    data = write_prepared(tmp_path / "data", merchants=("m1", "m2"))
    agent = write_tiny_agent(tmp_path / "agent", data, num_codes=4)
    (agent / CALIBRATION_FILE).write_text(json.dumps({"bias": {"exit": 0.1}}))
    (agent / "data").mkdir()
    pq.write_table(pa.table({"observation": ["page"]}), agent / "data" / train.PRICE_ROWS_FILE)
    seen = []

    def fit(policy, rows, personas, draws, seed):
        seen.append(dict(policy.kind_bias))
        assert draws == settings.price_draws > 0  # the posterior draws are fitted again too
        return PriceResponse()

    monkeypatch.setattr(train, "fit_price_response", fit)
    traces = _traces({("m1", f"u{i}", "s"): ["open product p0", "favorite", "exit"] for i in range(8)})
    settings = AgentTrainConfig(no_persona=True, calibration_rounds=2, calibration_visits=8)
    line = _calibrate_rollouts(TrainAgentStage(str(data), str(agent), agent=settings), traces, None)
    refined = json.loads((agent / CALIBRATION_FILE).read_text())["bias"]
    assert seen == [refined] and refined != {"exit": 0.1}  # fitted on the biases the agent is served with
    assert line.splitlines()[1].endswith("(refitted after the rollout calibration)")
    seen.clear()
    off = AgentTrainConfig(no_persona=True, calibration_rounds=2, calibration_visits=8, price_rows=0)
    line = _calibrate_rollouts(TrainAgentStage(str(data), str(agent), agent=off), traces, None)
    assert seen == [] and len(line.splitlines()) == 1


def test_a_round_moves_logged_kinds_and_steers_unlogged_checkouts_by_purchases():
    target = dict.fromkeys(CALIBRATED, 0.0) | {"product_view": 2.0, "favorite": 0.1, "purchase": 0.05}
    simulated = {"product_view": 1.0, "favorite": 1.0, "purchase": 0.1, "checkout": 0.2, "search": 0.3}
    step = bias_step(target, simulated)
    # Tmall-like: no checkout is logged, so the purchases' ratio moves checkout, and place order stays.
    assert step == pytest.approx(
        {"product_view": np.log(2.0), "favorite": -MAX_STEP, "checkout": np.log(0.5)}
    )
    logged = bias_step(target | {"checkout": 0.05}, simulated)
    assert logged["purchase"] == pytest.approx(np.log(0.5)) and logged["checkout"] == pytest.approx(
        np.log(0.25)
    )
    assert "search" not in step  # no real search is logged: its bias stays


def test_no_replayed_session_with_a_code_is_a_clear_error(tmp_path):
    codes = pa.Table.from_pylist([{"merchant_id": "m", "buyer_id": "other", "code": 0}])
    with pytest.raises(ValueError, match="replayed sessions"):
        calibrate_rollouts(object(), tmp_path, _traces({("m", "u", "s"): ["exit"]}), codes)


def _write_events(data, sessions: dict[tuple[str, str, str], list[str]]) -> None:
    rows = [
        {"merchant_id": m, "buyer_id": b, "session_id": s, "ts": i, "seq": i, "event_type": e}
        for (m, b, s), events in sessions.items()
        for i, e in enumerate(events)
    ]
    pq.write_table(pa.Table.from_pylist(rows), data / "events.parquet")


def test_the_whole_logs_rates_count_each_session_up_to_its_first_purchase_and_the_cap(tmp_path):
    data = write_prepared(tmp_path / "data")
    assert log_rates(data, 30) == {}  # no events: no prior
    _write_events(
        data,
        {
            ("m1", "u1", "s1"): ["product_view", "add_to_cart", "purchase", "favorite"],  # cut after buying
            ("m1", "u2", "s1"): ["product_view", "product_view", "favorite", "favorite"],
            # The cart comes after the cap of 3 events.
            ("m2", "u1", "s1"): ["product_view", "product_view", "product_view", "add_to_cart"],
            ("m2", "u2", "s1"): ["search"],
        },
    )
    assert log_rates(data, 3) == pytest.approx(
        dict.fromkeys(CALIBRATED, 0.0)
        | {"product_view": 6 / 4, "add_to_cart": 1 / 4, "purchase": 1 / 4, "favorite": 1 / 4, "search": 1 / 4}
    )


def test_a_kind_the_replayed_sessions_rarely_take_borrows_the_whole_logs_rate():
    replayed = {"add_to_cart": 1 / 2000, "favorite": 0.2, "search": 0.0}
    log = {"add_to_cart": 0.002, "favorite": 0.1, "search": 0.0}
    target = with_log_prior(replayed, 2000, log)
    # One cart in 2,000 sessions is mostly the log's rate; 400 favourites keep their own.
    assert target["add_to_cart"] == pytest.approx((1 + LOG_PRIOR_EVENTS) / (2000 + LOG_PRIOR_EVENTS / 0.002))
    assert 0.0015 < target["add_to_cart"] < 0.002
    assert target["favorite"] == pytest.approx(0.2, rel=0.03) and target["favorite"] < 0.2
    assert target["search"] == 0.0  # the source does not log it
    assert with_log_prior(replayed, 2000, {}) == replayed


def test_rare_kinds_move_the_pooled_bias_toward_the_logs_rate_and_no_codes_own(tmp_path):
    data = write_prepared(tmp_path / "data", merchants=("m1", "m2"))
    agent = write_tiny_agent(tmp_path / "agent", data, num_codes=4)
    # The replayed sessions: code 1 favourites in each visit, code 2 in none; two visits of code 1 cart.
    carted = ["open product p0", "add to cart", "exit"]
    sessions = {("m1", f"u{i}", "s"): ["open product p0", "favorite", "exit"] for i in range(1, 40, 2)}
    sessions |= {("m1", f"u{i}", "s"): ["open product p0", "exit"] for i in range(0, 40, 2)}
    sessions |= {("m1", "u1", "t"): carted, ("m1", "u3", "t"): carted}
    codes = pa.Table.from_pylist(
        [{"merchant_id": "m1", "buyer_id": f"u{i}", "code": 2 - i % 2} for i in range(40)]
    )
    # The whole log: carts in a tenth of its sessions.
    _write_events(
        data, {("m9", f"b{i}", "s"): ["product_view", *(["add_to_cart"] * (i % 10 == 0))] for i in range(500)}
    )
    policy = LLMPolicy.from_pretrained(agent, temperature=1.0)
    record = calibrate_rollouts(
        policy, data, _traces(sessions), codes, visits=42, rounds=3, max_steps=10, unseen_ids=False
    )
    assert record.replayed["add_to_cart"] == pytest.approx(2 / 42) and record.log["add_to_cart"] == 0.1
    assert record.real["add_to_cart"] == pytest.approx(
        with_log_prior(record.replayed, 42, record.log)["add_to_cart"]
    )
    # The pooled cart bias moved toward that target: up where the first round carted less, else down.
    moved = record.bias["add_to_cart"] - record.start.get("add_to_cart", 0.0)
    assert moved != 0 and np.sign(moved) == np.sign(
        record.real["add_to_cart"] - record.rounds[0]["simulated"]["add_to_cart"]
    )
    assert all("add_to_cart" not in own for own in record.code_bias.values())
    # 20 favourites are enough for each code's own bias.
    assert record.code_bias["1"]["favorite"] > record.code_bias["2"]["favorite"] + 1.0

"""The text Gymnasium env: contract checks, vector envs, invalid actions, goal reward, limits, seeds."""

from __future__ import annotations

import random

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.catalog import Catalog
from envs.storefront import SEARCH_TEMPLATE
from envs.text_env import StorefrontEnv
from tests.envs.test_storefront import product_records, write_prepared


def catalogs() -> list[Catalog]:
    return [
        Catalog.from_records("m1", product_records(30, seed=1)),
        Catalog.from_records("m2", product_records(12, seed=2)),
    ]


def make_env(**kwargs) -> gym.Env:
    return gym.make(envs.STOREFRONT_ID, catalog=catalogs(), **kwargs)


def random_valid(info: dict, rng: random.Random) -> str:
    action = rng.choice(info["valid_actions"])
    return 'search "50"' if action == SEARCH_TEMPLATE else action


def test_check_env_passes():
    check_env(make_env(render_mode="ansi").unwrapped, skip_render_check=False)


def test_make_from_prepared_directory(tmp_path):
    rows = [
        {"merchant_id": m, **r, "n_views": 1, "n_carts": 0, "n_purchases": 0}
        for m in ("a", "b")
        for r in product_records(8)
    ]
    root = write_prepared(tmp_path / "prep", rows, [])
    env = gym.make(envs.STOREFRONT_ID, data=root)
    obs, info = env.reset(seed=0, options={"merchant": "b", "persona": 3})
    assert obs.startswith("== Home ==") and info["merchant"] == "b" and info["persona"] == 3
    other = gym.make(envs.STOREFRONT_ID, data=root)
    other.reset(options={"merchant": "b"})
    assert other.unwrapped.storefront is env.unwrapped.storefront  # one catalog per process and merchant
    with pytest.raises(ValueError, match="merchant 'zz'"):
        env.reset(options={"merchant": "zz"})


def test_info_reports_page_actions_cart_and_context():
    env = make_env()
    obs, info = env.reset(seed=0, options={"merchant": "m1", "persona": 7, "goal": None})
    assert (
        info["page"] == "home" and info["merchant"] == "m1" and info["persona"] == 7 and info["goal"] is None
    )
    assert all(a in obs for a in info["valid_actions"])
    pid = next(a for a in info["valid_actions"] if a.startswith("open product ")).removeprefix(
        "open product "
    )
    env.step(f"open product {pid}")
    _, _, _, _, info = env.step("add to cart")
    assert info["cart"] == ((pid, 1),) and info["event"] == "add_to_cart" and info["valid"]


@pytest.mark.parametrize("bad", ["place order", "open product 999999", "rm -rf /", "__import__('os')", 12345])
def test_invalid_action_is_counted_and_changes_nothing(bad):
    env = make_env()
    obs, info = env.reset(seed=0, options={"merchant": "m1"})
    obs2, reward, terminated, truncated, info2 = env.step(bad)
    assert obs2 == obs and info2["valid_actions"] == info["valid_actions"]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info2["invalid_actions"] == 1 and not info2["valid"]


def test_invalid_action_can_terminate_instead():
    env = make_env(invalid_action="terminate")
    env.reset(seed=0, options={"merchant": "m1"})
    assert env.step("fly away")[2] is True


def test_buying_the_goal_pays_one_and_terminates():
    env = make_env()
    goal = catalogs()[0].products[-1].product_id
    env.reset(seed=0, options={"merchant": "m1", "goal": goal})
    rewards = [
        env.step(a)[1]
        for a in (f'search "{goal}"', f"open product {goal}", "add to cart", "go to cart", "checkout")
    ]
    _, reward, terminated, truncated, info = env.step("place order")
    assert rewards == [0.0] * 5 and reward == 1.0 and terminated and not truncated and info["converted"]


def test_buying_something_else_pays_nothing():
    env = make_env()
    products = catalogs()[0].products
    env.reset(seed=0, options={"merchant": "m1", "goal": products[-1].product_id})
    for a in (f'search "{products[0].product_id}"', f"open product {products[0].product_id}", "buy now"):
        env.step(a)
    _, reward, terminated, _, info = env.step("place order")
    assert reward == 0.0 and terminated and info["converted"]


def test_step_limits_truncate():
    env = make_env(max_steps=5)
    env.reset(seed=0, options={"merchant": "m1"})
    ends = [env.step("home")[3] for _ in range(5)]
    assert ends == [False] * 4 + [True]
    goal = catalogs()[0].products[0].product_id
    env.reset(seed=0, options={"merchant": "m1", "goal": goal})
    ends = [env.step("home")[3] for _ in range(20)]
    assert ends == [False] * 19 + [True]


def rollout(seed: int, n: int = 60) -> list[str]:
    env = make_env()
    rng = random.Random(seed)
    obs, info = env.reset(seed=seed)
    texts = [info["merchant"], obs]
    for _ in range(n):
        obs, _, terminated, truncated, info = env.step(random_valid(info, rng))
        texts.append(obs)
        if terminated or truncated:
            obs, info = env.reset()
            texts.append(obs)
    return texts


def test_same_seed_same_episode():
    assert rollout(5) == rollout(5)
    merchants = {rollout(s, 0)[0] for s in range(8)}
    assert merchants == {"m1", "m2"}  # the seeded draw reaches both merchants


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_vector_envs_carry_real_page_text(vector):
    fns = [lambda: StorefrontEnv(catalog=catalogs()) for _ in range(3)]
    if vector == "sync":
        venv = gym.vector.SyncVectorEnv(fns)
    else:
        venv = gym.vector.AsyncVectorEnv(fns, shared_memory=False)
    try:
        obs, infos = venv.reset(seed=[1, 2, 3], options={"merchant": "m1"})
        assert all(o.startswith("== Home ==") for o in obs)
        actions = [infos["valid_actions"][i][0] for i in range(3)]
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        assert all(o.startswith("== Category") for o in obs)
        assert list(infos["invalid_actions"]) == [0, 0, 0]
    finally:
        venv.close()


def test_async_with_shared_memory_refuses_text_instead_of_corrupting_it():
    with pytest.raises(Exception, match="shared_memory=False"):
        gym.vector.AsyncVectorEnv([lambda: StorefrontEnv(catalog=catalogs())] * 2, shared_memory=True)

"""The browser env in real Chromium: Gymnasium contract, parity with the text env, crashes, origin guard."""

from __future__ import annotations

import random

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from playwright.async_api import Error as PlaywrightError

from envs import BROWSER_STOREFRONT_ID
from envs import storefront as sf
from envs.browser_env import BrowserStorefrontEnv
from envs.browser_pool import BrowserPool, BrowserPoolConfig
from envs.render import GOAL_MARK
from envs.text_env import StorefrontEnv
from envs.web.server import StorefrontServer
from tests.envs.test_web_server import MERCHANT, make_catalog

pytestmark = pytest.mark.browser

OUTSIDE = "http://127.0.0.2:9/elsewhere"


@pytest.fixture(scope="module")
def pool():
    with BrowserPool(BrowserPoolConfig(max_contexts=6, recycle_every=3)) as p:
        yield p


@pytest.fixture(scope="module")
def servers():
    with (
        StorefrontServer.from_catalogs(make_catalog()) as default,
        StorefrontServer.from_catalogs(make_catalog(), template="alt") as alt,
    ):
        yield {"default": default, "alt": alt}


@pytest.fixture
def env(pool, servers):
    e = BrowserStorefrontEnv(server=servers["default"], pool=pool)
    yield e
    e.close()


def play_both(text_env, browser_env, seed: int, n_steps: int, goal: str | None) -> int:
    """Drive both envs with one seeded random policy; assert every step's outputs agree."""
    rng = random.Random(seed)
    options = {"goal": goal} if goal else {}
    obs_t, info_t = text_env.reset(seed=seed, options=options)
    obs_b, info_b = browser_env.reset(seed=seed, options=options)
    assert obs_b == obs_t and info_b == info_t
    steps = 0
    for _ in range(n_steps):
        actions = info_t["valid_actions"]
        roll = rng.random()
        if roll < 0.1:
            action = rng.choice(["fly away", "open product nope", sf.SEARCH_TEMPLATE, 'search ""'])
        else:
            action = rng.choice([a for a in actions if a != sf.EXIT] or actions)
            if action == sf.SEARCH_TEMPLATE:
                action = f'search "{rng.choice(["tea", "p1", "c3", "  tea   &  ", "zzz"])}"'
        out_t = text_env.step(action)
        out_b = browser_env.step(action)
        assert out_b == out_t, action
        steps += 1
        info_t = out_t[4]
        if out_t[2] or out_t[3]:
            break
    return steps


def buy_goal(env, goal: str) -> tuple[float, bool, dict]:
    env.reset(seed=0, options={"goal": goal, "persona": 3})
    for action in (f'search "{goal}"', f"open product {goal}", "add to cart", "go to cart", "checkout"):
        _, reward, terminated, truncated, info = env.step(action)
        assert info["valid"] and reward == 0.0 and not (terminated or truncated), action
    return env.step("place order")[1:]


def test_registered_and_passes_check_env(pool, servers):
    env = gym.make(BROWSER_STOREFRONT_ID, server=servers["default"], pool=pool)
    try:
        check_env(env.unwrapped, skip_render_check=True)
        obs, info = env.reset(seed=1)
        assert env.observation_space.contains(obs) and info["merchant"] == MERCHANT
    finally:
        env.close()


@pytest.mark.parametrize("template", ["default", "alt"])
def test_same_observations_rewards_and_ends_as_the_text_env(pool, servers, template):
    text_env = StorefrontEnv(catalog=make_catalog(), goal_max_steps=8)
    browser_env = BrowserStorefrontEnv(server=servers[template], pool=pool, goal_max_steps=8)
    try:
        for seed, goal in ((11, None), (12, "p4")):
            assert play_both(text_env, browser_env, seed, 14, goal) > 0
        outcomes = [buy_goal(e, "p9") for e in (text_env, browser_env)]
        assert outcomes[0] == outcomes[1]
        reward, terminated, truncated, info = outcomes[1]
        assert reward == 1.0 and terminated and not truncated and info["converted"] and info["persona"] == 3
    finally:
        browser_env.close()


@pytest.mark.parametrize("template", ["default", "alt"])
def test_a_bestseller_badge_is_read_back_from_the_page(pool, servers, template):
    text_env = StorefrontEnv(catalog=make_catalog())
    browser_env = BrowserStorefrontEnv(server=servers[template], pool=pool)
    try:
        observations = [e.reset(seed=0)[0] for e in (text_env, browser_env)]
        for action, shown in (('search "p9"', "| bestseller\n"), ("open product p9", "\nBestseller\n")):
            observations = [e.step(action)[0] for e in (text_env, browser_env)]
            assert observations[0] == observations[1] and shown in observations[0], action
    finally:
        browser_env.close()


@pytest.mark.parametrize("template", ["default", "alt"])
def test_the_goal_products_marks_are_read_back_from_the_page(pool, servers, template):
    text_env = StorefrontEnv(catalog=make_catalog())
    browser_env = BrowserStorefrontEnv(server=servers[template], pool=pool)
    try:
        for goal, path in (("p2", ["open product p2"]), ("p30", ['search "p30"', "open product p30"])):
            observations = [e.reset(seed=0, options={"goal": goal})[0] for e in (text_env, browser_env)]
            for action in path:
                assert observations[0] == observations[1]
                marks = [line for line in observations[0].split("\n") if line.endswith(GOAL_MARK)]
                assert len(marks) == (goal == "p2" or action != path[0])
                observations = [e.step(action)[0] for e in (text_env, browser_env)]
            assert observations[0] == observations[1] and f"Product id: {goal}{GOAL_MARK}" in observations[0]
    finally:
        browser_env.close()


def test_closed_page_is_a_reported_failure_and_the_next_episode_works(env):
    env.reset(seed=0)
    env.step("open product p1")
    env.pool.run(env._lease.page.close())
    obs, reward, terminated, truncated, info = env.step("add to cart")
    assert truncated and not terminated and reward == 0.0
    assert "browser_error" in info and obs == env.observation
    with pytest.raises(gym.error.ResetNeeded):
        env.step("home")
    obs, info = env.reset(seed=0)
    assert obs.startswith("== Home")
    assert env.step("open product p1")[4]["valid"]


def test_dead_browser_is_relaunched_on_reset(pool, servers):
    env = BrowserStorefrontEnv(server=servers["default"], pool=pool)
    try:
        env.reset(seed=0)
        launched = pool.browsers_launched
        browser = pool.run(pool.ensure_browser())
        pool.run(browser.close(), timeout=60)  # the browser dies under the env, as in a crash
        assert env.step("go to cart")[3]
        env.reset(seed=0)
        assert pool.browsers_launched == launched + 1
        assert env.step("go to cart")[4]["page"] == "cart"
    finally:
        env.close()


def test_navigation_outside_the_origin_is_refused(env):
    env.reset(seed=0)
    lease = env._lease
    with pytest.raises(PlaywrightError):
        env.pool.run(lease.page.goto(OUTSIDE))
    assert OUTSIDE in lease.blocked_urls
    env.reset(seed=0)
    env.pool.run(lease.page.evaluate("(u) => { setTimeout(() => { location.href = u; }, 0); }", OUTSIDE))
    env.pool.run(lease.page.wait_for_timeout(300))
    assert not lease.page.url.startswith(OUTSIDE) and lease.blocked_urls.count(OUTSIDE) == 2


def test_controls_that_lead_off_site_are_not_clicked(env):
    env.reset(seed=0)
    env.pool.run(
        env._lease.page.evaluate("(u) => { document.querySelector('a.open-product').href = u; }", OUTSIDE)
    )
    env.page_read = env.pool.run(env._read(env._lease.page))
    first = env.page_read.view.rows[0].action
    obs, reward, terminated, truncated, info = env.step(first)
    assert info["blocked"] == OUTSIDE and not info["valid"] and info["invalid_actions"] == 1
    assert info["page"] == "home" and env._lease.page.url.startswith(env.origin)


def test_contexts_are_recycled_every_k_episodes(pool, servers):
    env = BrowserStorefrontEnv(server=servers["default"], pool=pool)
    try:
        for episode in range(7):
            env.reset(seed=episode)
            assert env.step("go to cart")[4]["page"] == "cart"  # each episode starts a new session
            assert env.step("home")[4]["cart"] == ()
        assert env._lease.contexts_opened == -(-7 // pool.config.recycle_every)
    finally:
        env.close()

"""Goal tasks' pages: the goal product's lines are marked wherever the page shows it; goal-free pages
are unchanged; ``mark_goal`` turns a goal-free observation into the goal task's, exactly."""

from __future__ import annotations

import random

import pytest

from envs.catalog import Catalog
from envs.render import GOAL_MARK, GOAL_PREFIX, mark_goal
from envs.storefront import SEARCH_TEMPLATE, SessionState, Storefront
from envs.text_env import StorefrontEnv
from tests.envs.test_storefront import product_records


@pytest.fixture
def shop() -> Storefront:
    return Storefront(Catalog.from_records("m1", product_records()))


def _with_goal(state: SessionState, goal: str | None) -> SessionState:
    return SessionState(
        state.page, state.cart, state.favourites, state.history, state.purchased, goal, state.exited
    )


def marked(observation: str) -> list[str]:
    return [line for line in observation.split("\n") if line.endswith(GOAL_MARK)]


def test_a_listed_goal_is_marked_on_its_row_only(shop):
    featured = [p.product_id for p in shop.catalog.products[:5]]
    goal = featured[2]
    obs = shop.observe(shop.initial_state(goal=goal))
    lines = obs.split("\n")
    assert lines[2] == GOAL_PREFIX + goal  # the goal line, after the status line
    assert marked(obs) == [next(line for line in lines if line.startswith(f"- product {goal} |"))]
    assert f"open product {goal}" in lines  # the action itself is unchanged
    # Goal-free: the same page without the goal line and without any mark.
    plain = shop.observe(shop.initial_state())
    assert marked(plain) == [] and GOAL_PREFIX not in plain
    assert plain.split("\n") == [line.removesuffix(GOAL_MARK) for line in lines if line != lines[2]]


def test_the_goal_is_marked_on_its_page_in_the_cart_and_at_checkout(shop):
    goal = shop.catalog.products[-1].product_id  # not featured: reached by search
    s = shop.initial_state(goal=goal)
    assert marked(shop.observe(s)) == []
    s, _ = shop.step(s, f'search "{goal}"')
    assert marked(shop.observe(s))[0].startswith(f"- product {goal} |")  # the exact id is listed first
    s, _ = shop.step(s, f"open product {goal}")
    assert marked(shop.observe(s)) == [f"Product id: {goal}{GOAL_MARK}"]
    s, _ = shop.step(s, "add to cart")
    other = shop.catalog.products[0].product_id
    for action in ("home", f"open product {other}", "add to cart", "go to cart"):
        s, _ = shop.step(s, action)
    cart = shop.observe(s)
    assert len(marked(cart)) == 1 and marked(cart)[0].startswith(f"- product {goal} |")
    assert any(line.startswith(f"- product {other} |") for line in cart.split("\n"))
    s, _ = shop.step(s, "checkout")
    assert len(marked(shop.observe(s))) == 1


def test_goal_free_observations_are_unchanged_by_the_goal_machinery(shop):
    state = shop.initial_state()
    expected = "\n".join(
        [
            "== Home ==",
            "Shop m1 | Cart: 0 items | Favourites: 0",
            "Categories:",
            *(
                f"- Category {c} ({len(shop.catalog.by_category[c])} products)"
                for c in shop.home_categories(0)
            ),
            "Products:",
            *(
                f"- product {p.product_id} | category {p.category_id} | price {p.price:.2f}"
                for p in shop.catalog.products[:5]
            ),
            "Actions:",
            *shop.valid_actions(state),
        ]
    )
    assert shop.observe(state) == expected


def test_mark_goal_gives_the_goal_tasks_observation_on_every_page(shop):
    rng = random.Random(3)
    ids = [p.product_id for p in shop.catalog.products]
    checked = marks = 0
    for episode in range(30):
        goal = rng.choice(ids[:8] if episode % 2 else ids)
        state = shop.initial_state()
        for _ in range(25):
            obs = shop.observe(state)
            want = shop.observe(_with_goal(state, goal))
            assert mark_goal(obs, goal) == want
            checked += 1
            marks += bool(marked(want))
            actions = [a for a in shop.valid_actions(state) if a not in (SEARCH_TEMPLATE, "exit")]
            if rng.random() < 0.2 and SEARCH_TEMPLATE in shop.valid_actions(state):
                action = f'search "{rng.choice([goal, ids[0], "5", "zz"])}"'
            elif rng.random() < 0.3 and f"open product {goal}" in actions:
                action = f"open product {goal}"
            else:
                action = rng.choice(actions)
            state, _ = shop.step(state, action)
            if state.page.kind == "confirmation":
                break
    assert checked > 300 and marks > 30
    with pytest.raises(ValueError):
        mark_goal(mark_goal(shop.observe(shop.initial_state()), ids[0]), ids[0])


def test_the_text_env_shows_marks_only_in_goal_tasks(shop):
    env = StorefrontEnv(catalog=shop.catalog)
    goal = shop.catalog.products[1].product_id
    obs, info = env.reset(seed=0, options={"goal": goal})
    assert info["goal"] == goal and len(marked(obs)) == 1
    obs, _ = env.reset(seed=0, options={"goal": None})
    assert marked(obs) == [] and GOAL_PREFIX not in obs

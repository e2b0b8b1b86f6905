"""Storefront variants: registration, their own actions and content, and the runnable example."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from envs.catalog import Catalog
from envs.render import PageView
from envs.storefront import Event, SessionState, Storefront
from envs.variant import register_variant
from tests.envs.test_storefront import product_records

ROOT = Path(__file__).resolve().parents[2]


class OnePageCheckout(Storefront):
    """The cart places the order directly: ``checkout`` is replaced by ``order now``."""

    def valid_actions(self, state: SessionState) -> list[str]:
        actions = super().valid_actions(state)
        return ["order now" if a == "checkout" else a for a in actions]

    def apply(self, state: SessionState, action: str) -> tuple[SessionState, Event | None]:
        if action == "order now":
            state, _ = super().apply(state, "checkout")
            return super().apply(state, "place order")
        return super().apply(state, action)

    def view(self, state: SessionState, actions: list[str] | None = None) -> PageView:
        view = super().view(state, actions)
        return dataclasses.replace(view, lines=("Free shipping today", *view.lines))


def test_registered_variant_runs_its_own_actions():
    register_variant("test/OnePageCheckout-v0", OnePageCheckout)
    register_variant("test/OnePageCheckout-v0", OnePageCheckout)  # idempotent
    catalog = Catalog.from_records("m", product_records(20))
    env = gym.make("test/OnePageCheckout-v0", catalog=catalog)
    goal = catalog.products[0].product_id
    obs, _ = env.reset(seed=0, options={"goal": goal})
    assert "Free shipping today" in obs
    for action in (f"open product {goal}", "add to cart", "go to cart"):
        obs, *_, info = env.step(action)
    assert "order now" in info["valid_actions"] and "checkout" not in info["valid_actions"]
    _, reward, terminated, _, info = env.step("order now")
    assert reward == 1.0 and terminated and info["event"] == "purchase"
    check_env(env.unwrapped)


def test_register_variant_refuses_conflicts_and_non_storefronts():
    register_variant("test/Conflict-v0", OnePageCheckout)
    with pytest.raises(ValueError, match="already registered"):
        register_variant("test/Conflict-v0", OnePageCheckout, max_steps=3)
    with pytest.raises(TypeError, match="Storefront subclass"):
        register_variant("test/Bad-v0", dict)  # type: ignore[arg-type]


def test_custom_storefront_example_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_storefront.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Today's deal" in result.stdout and "reward=1.0" in result.stdout

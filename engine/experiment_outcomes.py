"""Per-visit outcomes of an experiment arm, by replaying its rollouts through the arm's storefront.

Rollouts store each step's action, not what it bought. The storefront is pure and deterministic
(``Storefront.step(state, action) -> (state, event)``), so replaying a visit's actions from the
home page through the arm's own storefront gives back every canonical event and state, exactly as
the env saw them; a replay that disagrees with the rollouts on which steps were valid is refused.

Outcomes of one visit (the definitions the synthetic truth uses too):

- ``conversion``: 1 if the visit placed an order, else 0;
- ``add_to_cart``: 1 if it put a product in the cart, else 0;
- ``product_views``: its product_view events (``open product P`` actions);
- ``revenue``: the sum over the products it bought of the arm's shown price times the quantity
  (a product without a price counts 0);
- ``visit_length``: its events other than page navigation (page_view: home, category, next or
  previous page, back, go to cart) and exit; an invalid action emits no event and is not counted.

Beside them, ``path``: a hash of the visit's action texts in order. Under common random numbers a
buyer whose path is the same in two arms did exactly the same in both: the policy did not respond
to what the treatment changed (experiment_effects.py counts those visits).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import polars as pl

from engine.evaluate import NAVIGATION
from envs.storefront import Event, InvalidAction, SessionState, Storefront

METRICS = ("conversion", "add_to_cart", "product_views", "revenue", "visit_length")
"""The outcomes of a visit, in report order."""
METRIC_LABELS = {
    "conversion": "conversion (share of visits that buy)",
    "add_to_cart": "add-to-cart rate (share of visits)",
    "product_views": "product views per visit",
    "revenue": "revenue per visit",
    "visit_length": "visit length (events, navigation excluded)",
}
OUTCOMES_FILE = "outcomes.parquet"


def arm_storefronts(
    data: str, env_id: str, env_kwargs: dict[str, Any], modules: Sequence[str]
) -> Callable[[str], Storefront]:
    """The storefront of each merchant as the arm's env builds it (same class, same treatment)."""
    for module in modules:
        importlib.import_module(module)
    env = gym.make(env_id, data=data, **env_kwargs).unwrapped
    if not hasattr(env, "storefront_for"):
        raise ValueError(
            f"{env_id}: not a text storefront env (StorefrontEnv); its visits cannot be replayed"
        )
    return env.storefront_for


def _order_value(sf: Storefront, before: SessionState, event: Event) -> float:
    """What an order event bought, at the storefront's shown prices."""
    bought = event.products or ((event.product_id,) if event.product_id else ())
    # From a checkout page the order is its items; an order placed on another page is a one-page
    # checkout, which buys one of the product (envs/treatments.py).
    quantities = dict(sf.checkout_items(before)) if before.page.kind == "checkout" else {}
    return float(sum((sf.catalog.by_id[p].price or 0.0) * quantities.get(p, 1) for p in bought))


def replay_visit(
    sf: Storefront, actions: Sequence[str], valid: Sequence[bool], goal: str | None = None
) -> tuple[float, float, float, float, float]:
    """One visit's outcomes (``METRICS`` order) from its actions; ``valid`` is what the rollout
    recorded, checked step by step against the replay."""
    state = sf.initial_state(goal=goal)
    converted = carted = 0.0
    views = revenue = length = 0.0
    for step, (action, ok) in enumerate(zip(actions, valid, strict=True)):
        try:
            after, event = sf.step(state, action)
        except InvalidAction:
            if ok:
                raise RuntimeError(
                    f"replay of {sf.merchant_id}: step {step} {action!r} is invalid on replay but valid in the"
                    " rollouts; the arm's storefront is not the one that was simulated"
                ) from None
            continue
        if not ok:
            raise RuntimeError(
                f"replay of {sf.merchant_id}: step {step} {action!r} is valid on replay but invalid in the rollouts"
            )
        if event is not None:
            kind = event.event_type
            if kind == "purchase":
                converted = 1.0
                revenue += _order_value(sf, state, event)
            elif kind == "add_to_cart":
                carted = 1.0
            elif kind == "product_view":
                views += 1
            if kind not in NAVIGATION:
                length += 1
        state = after
    return converted, carted, views, revenue, length


def path_hash(actions: Sequence[str]) -> int:
    """A visit's ``path``: a signed 64-bit hash of its actions in order, the same in every process."""
    digest = hashlib.blake2b("\x1f".join(actions).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def arm_outcomes(rollouts_dir: str | Path, storefront_of: Callable[[str], Storefront]) -> pl.DataFrame:
    """One row per simulated visit: sim_buyer_id, merchant_id, code, ``METRICS``, then ``path``."""
    parts = sorted((Path(rollouts_dir) / "rollouts").glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no rollout parts under {rollouts_dir}/rollouts")
    columns = ["sim_buyer_id", "merchant_id", "code", "step", "action", "valid", "goal"]
    steps = pl.concat([pl.read_parquet(p, columns=columns) for p in parts]).sort("sim_buyer_id", "step")
    ids = steps["sim_buyer_id"].to_numpy()
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(ids)]
    merchants, codes = steps["merchant_id"].to_list(), steps["code"].to_list()
    actions, valid, goals = steps["action"].to_list(), steps["valid"].to_list(), steps["goal"].to_list()
    rows = [
        replay_visit(storefront_of(merchants[s]), actions[s:e], valid[s:e], goals[s])
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(METRICS))
    return pl.DataFrame(
        {
            "sim_buyer_id": ids[starts],
            "merchant_id": [merchants[s] for s in starts],
            "code": np.asarray([codes[s] for s in starts], dtype=np.int64),
            **{m: values[:, i] for i, m in enumerate(METRICS)},
            "path": np.array(
                [path_hash(actions[s:e]) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)],
                dtype=np.int64,
            ),
        }
    )

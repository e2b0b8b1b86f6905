"""Small traces and codes tables built by walking real storefronts (envs/storefront.py), so the
observations and actions are exactly what the trace builder and the simulation produce."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from envs.catalog import Catalog, Product
from envs.storefront import SEARCH_TEMPLATE, Storefront

# Persona 0 browses and leaves; persona 1 buys the first product it opens.
PREFERENCES = {
    0: ("open product", "next page", "open category", "back", "exit"),
    1: ("open product", "add to cart", "go to cart", "checkout", "place order"),
}


def storefront(merchant: str, n_products: int = 14) -> Storefront:
    products = tuple(
        Product(f"{merchant}p{i}", f"c{i % 3}", 10.0 + i, f"Product {merchant}p{i}", 1.0 / (i + 1))
        for i in range(n_products)
    )
    return Storefront(Catalog(merchant, products))


def walk(
    shop: Storefront, code: int, rng: np.random.Generator, max_steps: int = 7, markdown: float = 0.0
) -> list[tuple[str, str, bool]]:
    """(observation, action, valid) steps of one session: the persona's preferred kinds first, with
    some randomness, and an occasional invalid action (a real log's action the page cannot do). With
    ``markdown``, that share of opened products shows a 30% markdown, which persona 0 adds to cart."""
    state = shop.initial_state()
    steps = []
    for _ in range(max_steps):
        marked = False
        # Drawn only with markdowns, so every other test's walks stay as they were.
        if markdown and state.page.kind == "product" and rng.random() < markdown:
            product = shop.catalog.by_id[state.page.arg]
            state, marked = state.priced(product.product_id, round(product.price * 0.7, 2)), True
        actions = [a for a in shop.valid_actions(state) if a != SEARCH_TEMPLATE]
        observation = shop.observe(state)
        if rng.random() < 0.05:
            steps.append((observation, "place order", "place order" in actions))
            continue
        wants = ("add to cart", *PREFERENCES[code]) if marked and code == 0 else PREFERENCES[code]
        preferred = [a for p in wants for a in actions if a.startswith(p)]
        pool = preferred if preferred and rng.random() < 0.85 else actions
        weights = np.array([1.0 / (1 + i) for i in range(len(pool))])
        action = pool[rng.choice(len(pool), p=weights / weights.sum())]
        steps.append((observation, action, True))
        state, _ = shop.step(state, action)
        if state.exited or state.page.kind == "confirmation":
            break
    return steps


def make_traces(
    merchants=("m1", "m2"), buyers: int = 6, sessions: int = 2, seed: int = 0, markdown: float = 0.0
) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {
        k: [] for k in ("merchant_id", "buyer_id", "session_id", "step", "observation", "action", "valid")
    }
    codes: dict[str, list] = {"merchant_id": [], "buyer_id": [], "code": []}
    for merchant in merchants:
        shop = storefront(merchant)
        for b in range(buyers):
            code = b % 2
            codes["merchant_id"].append(merchant)
            codes["buyer_id"].append(f"u{b}")
            codes["code"].append(code)
            for s in range(sessions):
                for step, (obs, action, valid) in enumerate(walk(shop, code, rng, markdown=markdown)):
                    for key, value in zip(
                        rows, (merchant, f"u{b}", f"u{b}-s{s}", step, obs, action, valid), strict=True
                    ):
                        rows[key].append(value)
    traces = pa.table(rows).cast(
        pa.schema(
            [(k, pa.int32() if k == "step" else pa.bool_() if k == "valid" else pa.string()) for k in rows]
        )
    )
    return traces, pa.table({**codes, "code": pa.array(codes["code"], pa.int32())})


@pytest.fixture(scope="session")
def traces_and_codes() -> tuple[pa.Table, pa.Table]:
    return make_traces()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny models' ops are too small to split: on a shared 2-core box a second intra-op thread
    mostly waits for the first (measured: test_policies.py 75 s with 2 threads, 7 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""A custom storefront variant: a promotion banner on the home page with an ``open deal`` action.

  python examples/custom_storefront.py                 # a small in-memory catalogue
  python examples/custom_storefront.py --data data/    # a prepared directory (its first merchant)

The variant subclasses ``Storefront`` (see envs/variant.py), registers itself as
``example/PromoStorefront-v0``, and a scripted buyer follows the deal to a purchase.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import gymnasium as gym

from envs.catalog import Catalog
from envs.render import PageView
from envs.storefront import Event, Page, SessionState, Storefront
from envs.variant import register_variant

ENV_ID = "example/PromoStorefront-v0"
OPEN_DEAL = "open deal"


class PromoStorefront(Storefront):
    """Promotes the least popular product (last in catalog order) from the home page."""

    @property
    def deal(self) -> str:
        return self.catalog.products[-1].product_id

    def valid_actions(self, state: SessionState) -> list[str]:
        actions = super().valid_actions(state)
        return [OPEN_DEAL, *actions] if state.page.kind == "home" and not state.exited else actions

    def apply(self, state: SessionState, action: str) -> tuple[SessionState, Event | None]:
        if action == OPEN_DEAL:
            p = self.catalog.by_id[self.deal]
            return self.navigate(state, Page("product", p.product_id)), Event(
                "product_view", p.product_id, p.category_id
            )
        return super().apply(state, action)

    def view(self, state: SessionState, actions: list[str] | None = None) -> PageView:
        view = super().view(state, actions)
        if state.page.kind != "home":
            return view
        return dataclasses.replace(
            view, lines=(f"Today's deal: product {self.deal} (use: {OPEN_DEAL})", *view.lines)
        )


register_variant(ENV_ID, PromoStorefront)


def demo_catalog() -> Catalog:
    return Catalog.from_records(
        "demo",
        [
            {"product_id": str(100 + i), "category_id": f"c{i % 3}", "price": 5.0 + i, "popularity": 30 - i}
            for i in range(30)
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, help="a prepared directory (default: a small in-memory catalogue)"
    )
    args = parser.parse_args(argv)
    env = gym.make(ENV_ID, data=args.data) if args.data else gym.make(ENV_ID, catalog=demo_catalog())
    merchant = env.unwrapped.merchants[0]
    deal = env.unwrapped.storefront_for(merchant).deal
    obs, info = env.reset(seed=0, options={"merchant": merchant, "goal": deal})
    print(obs, "\n")
    for action in (OPEN_DEAL, "add to cart", "go to cart", "checkout", "place order"):
        obs, reward, terminated, truncated, info = env.step(action)
        print(f"> {action:<12} page={info['page']:<12} event={info['event']} reward={reward}")
    print("\n" + obs)
    env.close()
    return 0 if reward == 1.0 and terminated else 1


if __name__ == "__main__":
    raise SystemExit(main())
